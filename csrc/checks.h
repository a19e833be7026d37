// Argument validation shared by the CPU and CUDA kernels, so that both backends reject
// bad input with the same message.
#pragma once

#include <ATen/ATen.h>
#include <cmath>

namespace lpla_fast {

inline void check_p(double p) {
  TORCH_CHECK(!std::isnan(p) && p > 0.0, "p must be in (0, inf], got p=", p);
}

inline void check_floating(const at::Tensor& t, const char* name) {
  const auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16,
              name, " must be float32, float64, float16 or bfloat16, got ", st);
}

inline void check_dim(const at::Tensor& t, const char* name, int64_t dim, const char* layout) {
  TORCH_CHECK(t.dim() == dim, name, " must be ", dim, "-D ", layout, ", got ", t.dim(),
              "-D with shape ", t.sizes());
}

inline void check_min_dim(const at::Tensor& t, const char* name, int64_t min_dim, const char* layout) {
  TORCH_CHECK(t.dim() >= min_dim, name, " must have at least ", min_dim, " dim ", layout, ", got ", t.dim(),
              "-D with shape ", t.sizes());
}

inline void check_std(double std, const char* name) {
  TORCH_CHECK(std::isfinite(std) && std > 0.0, name, " must be finite and > 0, got ", name, "=", std);
}

inline void check_finite_param(double value, const char* name) {
  TORCH_CHECK(std::isfinite(value), name, " must be finite, got ", name, "=", value);
}

inline void check_gaussians(double mean_in, double std_in, double mean_out, double std_out) {
  check_finite_param(mean_in, "mean_in");
  check_finite_param(mean_out, "mean_out");
  check_std(std_in, "std_in");
  check_std(std_out, "std_out");
}

// One check per op, called by every backend, so CPU and CUDA reject the same input with the
// same message.
inline void check_lp_norm_args(const at::Tensor& x, double p) {
  check_floating(x, "x");
  check_min_dim(x, "x", 1, "(..., D)");
  check_p(p);
}

inline void check_pooled_lp_norm_args(const at::Tensor& fmap, double p) {
  check_floating(fmap, "fmap");
  check_dim(fmap, "fmap", 4, "(N, C, H, W)");
  check_p(p);
}

inline void check_lpla_score_args(const at::Tensor& views, double p, double mean_in, double std_in,
                                  double mean_out, double std_out) {
  check_floating(views, "views");
  check_dim(views, "views", 3, "(N, K, D)");
  check_p(p);
  check_gaussians(mean_in, std_in, mean_out, std_out);
}

inline void check_pooled_lpla_score_args(const at::Tensor& fmap, int64_t num_views, double p, double mean_in,
                                         double std_in, double mean_out, double std_out) {
  check_floating(fmap, "fmap");
  check_dim(fmap, "fmap", 4, "(N*K, C, H, W)");
  TORCH_CHECK(num_views >= 1, "num_views must be >= 1, got num_views=", num_views);
  TORCH_CHECK(fmap.size(0) % num_views == 0, "fmap's first dim (N*K rows, K views per sample) must be a multiple of ",
              "num_views, got ", fmap.size(0), " rows and num_views=", num_views);
  check_p(p);
  check_gaussians(mean_in, std_in, mean_out, std_out);
}

inline void check_view_norm_stats_args(const at::Tensor& views, double p) {
  check_floating(views, "views");
  check_dim(views, "views", 3, "(N, K, D)");
  check_p(p);
}

inline void check_view_cosine_args(const at::Tensor& views) {
  check_floating(views, "views");
  check_dim(views, "views", 3, "(N, K, D)");
}

}  // namespace lpla_fast
