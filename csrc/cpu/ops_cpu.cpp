// CPU registrations of the lpla_fast ops: argument checks, then the kernels built for the
// best instruction set the running CPU supports (see kernels.h), or the one named by the
// environment variable LPLA_CPU_CAPABILITY (baseline, avx2 or avx512; read at the first call)
// or by the op _set_cpu_capability (how tests run every build the CPU supports).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <atomic>
#include <cstdlib>
#include <string>
#include <vector>

#include "checks.h"
#include "cpu/kernels.h"

namespace lpla_fast {
namespace {

// The builds of the CPU kernels, in the order of the instruction sets they need.
enum Capability : int { kBaseline, kAvx2, kAvx512, kNumCapabilities };
constexpr const char* kCapabilityNames[kNumCapabilities] = {"baseline", "avx2", "avx512"};

bool cpu_supports(Capability capability) {
#if defined(__x86_64__) && defined(__GNUC__)
  // __builtin_cpu_supports also checks that the OS saves the vector registers (XCR0).
  switch (capability) {
    case kAvx512:
      if (!(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")))
        return false;
      [[fallthrough]];
    case kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    default:
      return true;
  }
#else
  return capability == kBaseline;
#endif
}

std::vector<std::string> supported_cpu_capabilities() {
  std::vector<std::string> names;
  for (int c = 0; c < kNumCapabilities; ++c)
    if (cpu_supports(static_cast<Capability>(c))) names.emplace_back(kCapabilityNames[c]);
  return names;
}

// The capability of that name, checked against the CPU; `source` names where it came from.
Capability parse_capability(const std::string& name, const char* source) {
  for (int c = 0; c < kNumCapabilities; ++c) {
    if (name != kCapabilityNames[c]) continue;
    TORCH_CHECK(cpu_supports(static_cast<Capability>(c)), source, "='", name,
                "': this CPU does not support it (supported: ", c10::Join(", ", supported_cpu_capabilities()), ")");
    return static_cast<Capability>(c);
  }
  TORCH_CHECK(false, source, "='", name, "' is not a CPU capability (expected baseline, avx2 or avx512)");
}

Capability default_capability() {
  if (const char* forced = std::getenv("LPLA_CPU_CAPABILITY"); forced && *forced)
    return parse_capability(forced, "LPLA_CPU_CAPABILITY");
  for (int c = kNumCapabilities - 1; c > kBaseline; --c)
    if (cpu_supports(static_cast<Capability>(c))) return static_cast<Capability>(c);
  return kBaseline;
}

std::atomic<int> chosen_capability{-1};  // -1: not chosen yet

Capability capability() {
  int c = chosen_capability.load(std::memory_order_relaxed);
  if (c < 0) {
    c = default_capability();
    chosen_capability.store(c, std::memory_order_relaxed);
  }
  return static_cast<Capability>(c);
}

std::string cpu_capability() { return kCapabilityNames[capability()]; }

void set_cpu_capability(const std::string& name) {
  chosen_capability.store(parse_capability(name, "cpu capability"), std::memory_order_relaxed);
}

// Calls `fn` of the chosen build with the remaining arguments.
#define LPLA_CPU_DISPATCH(fn, ...)                                \
  switch (capability()) {                                         \
    case kAvx512: return cpu_avx512::fn(__VA_ARGS__);             \
    case kAvx2: return cpu_avx2::fn(__VA_ARGS__);                 \
    default: return cpu_baseline::fn(__VA_ARGS__);                \
  }

at::Tensor lp_norm_cpu(const at::Tensor& x, double p) {
  check_lp_norm_args(x, p);
  LPLA_CPU_DISPATCH(lp_norm, x, p)
}

std::tuple<at::Tensor, at::Tensor> pooled_lp_norm_cpu(const at::Tensor& fmap, double p, bool return_pooled) {
  check_pooled_lp_norm_args(fmap, p);
  LPLA_CPU_DISPATCH(pooled_lp_norm, fmap, p, return_pooled)
}

std::tuple<at::Tensor, at::Tensor> lpla_score_cpu(const at::Tensor& views, double p, double mean_in, double std_in,
                                                  double mean_out, double std_out, bool log_space) {
  check_lpla_score_args(views, p, mean_in, std_in, mean_out, std_out);
  LPLA_CPU_DISPATCH(lpla_score, views, p, mean_in, std_in, mean_out, std_out, log_space)
}

at::Tensor view_cosine_cpu(const at::Tensor& views) {
  check_view_cosine_args(views);
  LPLA_CPU_DISPATCH(view_cosine, views)
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pooled_lpla_score_cpu(const at::Tensor& fmap, int64_t num_views,
                                                                     double p, double mean_in, double std_in,
                                                                     double mean_out, double std_out, bool log_space,
                                                                     bool return_pooled) {
  check_pooled_lpla_score_args(fmap, num_views, p, mean_in, std_in, mean_out, std_out);
  LPLA_CPU_DISPATCH(pooled_lpla_score, fmap, num_views, p, mean_in, std_in, mean_out, std_out, log_space,
                    return_pooled)
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> view_norm_stats_cpu(const at::Tensor& views, double p,
                                                                               bool log_space) {
  check_view_norm_stats_args(views, p);
  LPLA_CPU_DISPATCH(view_norm_stats, views, p, log_space)
}

#undef LPLA_CPU_DISPATCH

}  // namespace

// The choice of build: ops without tensor arguments, so they register for every backend.
TORCH_LIBRARY_FRAGMENT(lpla_fast, m) {
  m.def("cpu_capability() -> str", &cpu_capability);
  m.def("supported_cpu_capabilities() -> str[]", &supported_cpu_capabilities);
  m.def("_set_cpu_capability(str name) -> ()", &set_cpu_capability);
}

TORCH_LIBRARY_IMPL(lpla_fast, CPU, m) {
  m.impl("lp_norm", &lp_norm_cpu);
  m.impl("pooled_lp_norm", &pooled_lp_norm_cpu);
  m.impl("lpla_score", &lpla_score_cpu);
  m.impl("view_cosine", &view_cosine_cpu);
  m.impl("pooled_lpla_score", &pooled_lpla_score_cpu);
  m.impl("view_norm_stats", &view_norm_stats_cpu);
}

}  // namespace lpla_fast
