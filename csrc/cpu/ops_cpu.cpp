// CPU registrations of the lpla_fast ops: argument checks, then the kernels built for the
// best instruction set the running CPU supports (see kernels.h).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>

#include "checks.h"
#include "cpu/kernels.h"

namespace lpla_fast {
namespace {

// AVX2 + FMA + F16C when the CPU has them, unless LPLA_CPU_ISA=baseline asks for the
// portable build (read on each call so that tests can compare both builds).
bool use_avx2() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool supported =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  const char* forced = std::getenv("LPLA_CPU_ISA");
  return supported && !(forced && std::strcmp(forced, "baseline") == 0);
#else
  return false;
#endif
}

at::Tensor lp_norm_cpu(const at::Tensor& x, double p) {
  check_lp_norm_args(x, p);
  return use_avx2() ? cpu_avx2::lp_norm(x, p) : cpu_baseline::lp_norm(x, p);
}

std::tuple<at::Tensor, at::Tensor> pooled_lp_norm_cpu(const at::Tensor& fmap, double p, bool return_pooled) {
  check_pooled_lp_norm_args(fmap, p);
  return use_avx2() ? cpu_avx2::pooled_lp_norm(fmap, p, return_pooled)
                    : cpu_baseline::pooled_lp_norm(fmap, p, return_pooled);
}

std::tuple<at::Tensor, at::Tensor> lpla_score_cpu(const at::Tensor& views, double p, double mean_in, double std_in,
                                                  double mean_out, double std_out, bool log_space) {
  check_lpla_score_args(views, p, mean_in, std_in, mean_out, std_out);
  return use_avx2() ? cpu_avx2::lpla_score(views, p, mean_in, std_in, mean_out, std_out, log_space)
                    : cpu_baseline::lpla_score(views, p, mean_in, std_in, mean_out, std_out, log_space);
}

at::Tensor view_cosine_cpu(const at::Tensor& views) {
  check_view_cosine_args(views);
  return use_avx2() ? cpu_avx2::view_cosine(views) : cpu_baseline::view_cosine(views);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pooled_lpla_score_cpu(const at::Tensor& fmap, int64_t num_views,
                                                                     double p, double mean_in, double std_in,
                                                                     double mean_out, double std_out, bool log_space,
                                                                     bool return_pooled) {
  check_pooled_lpla_score_args(fmap, num_views, p, mean_in, std_in, mean_out, std_out);
  return use_avx2() ? cpu_avx2::pooled_lpla_score(fmap, num_views, p, mean_in, std_in, mean_out, std_out, log_space,
                                                  return_pooled)
                    : cpu_baseline::pooled_lpla_score(fmap, num_views, p, mean_in, std_in, mean_out, std_out,
                                                      log_space, return_pooled);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> view_norm_stats_cpu(const at::Tensor& views, double p,
                                                                               bool log_space) {
  check_view_norm_stats_args(views, p);
  return use_avx2() ? cpu_avx2::view_norm_stats(views, p, log_space) : cpu_baseline::view_norm_stats(views, p, log_space);
}

}  // namespace

TORCH_LIBRARY_IMPL(lpla_fast, CPU, m) {
  m.impl("lp_norm", &lp_norm_cpu);
  m.impl("pooled_lp_norm", &pooled_lp_norm_cpu);
  m.impl("lpla_score", &lpla_score_cpu);
  m.impl("view_cosine", &view_cosine_cpu);
  m.impl("pooled_lpla_score", &pooled_lpla_score_cpu);
  m.impl("view_norm_stats", &view_norm_stats_cpu);
}

}  // namespace lpla_fast
