// Entry points of the CPU kernels, compiled once per instruction set.
//
// kernels_impl.h holds the kernels; kernels_baseline.cpp compiles it for any x86-64 CPU,
// kernels_avx2.cpp for AVX2 + FMA + F16C and kernels_avx512.cpp for AVX-512 (F, BW, DQ, VL)
// on top of those. ops_cpu.cpp checks the arguments and picks the build that the running CPU
// supports (or the one LPLA_CPU_CAPABILITY names).
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace lpla_fast {

#define LPLA_DECLARE_CPU_KERNELS(isa)                                                                   \
  namespace isa {                                                                                       \
  at::Tensor lp_norm(const at::Tensor& x, double p);                                                    \
  std::tuple<at::Tensor, at::Tensor> pooled_lp_norm(const at::Tensor& fmap, double p, bool return_pooled); \
  std::tuple<at::Tensor, at::Tensor> lpla_score(const at::Tensor& views, double p, double mean_in,       \
                                                double std_in, double mean_out, double std_out,          \
                                                bool log_space);                                         \
  at::Tensor view_cosine(const at::Tensor& views);                                                      \
  std::tuple<at::Tensor, at::Tensor, at::Tensor> pooled_lpla_score(                                      \
      const at::Tensor& fmap, int64_t num_views, double p, double mean_in, double std_in, double mean_out, \
      double std_out, bool log_space, bool return_pooled);                                               \
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> view_norm_stats(const at::Tensor& views,    \
                                                                             double p, bool log_space);  \
  }

LPLA_DECLARE_CPU_KERNELS(cpu_baseline)
LPLA_DECLARE_CPU_KERNELS(cpu_avx2)
LPLA_DECLARE_CPU_KERNELS(cpu_avx512)

#undef LPLA_DECLARE_CPU_KERNELS

}  // namespace lpla_fast
