// CPU kernels of the lpla_fast ops (provisional: ATen composites in float64; the fused,
// vectorized kernels replace them).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "checks.h"

namespace lpla_fast {
namespace {

at::Tensor lp_norm_cpu(const at::Tensor& x, double p) {
  check_floating(x, "x");
  check_p(p);
  TORCH_CHECK(x.dim() >= 1, "x must have at least 1 dim (..., D), got a 0-D tensor");
  return at::linalg_vector_norm(x.to(at::kDouble), p, at::IntArrayRef{-1}, false).to(result_dtype(x));
}

std::tuple<at::Tensor, at::Tensor> pooled_lp_norm_cpu(const at::Tensor& fmap, double p, bool return_pooled) {
  check_floating(fmap, "fmap");
  check_dim(fmap, "fmap", 4, "(N, C, H, W)");
  check_p(p);
  auto pooled = fmap.to(at::kDouble).mean({2, 3});
  auto norms = at::linalg_vector_norm(pooled, p, at::IntArrayRef{-1}, false).to(result_dtype(fmap));
  auto pooled_out = return_pooled ? pooled.to(result_dtype(fmap)) : at::empty({0}, fmap.options().dtype(result_dtype(fmap)));
  return {pooled_out, norms};
}

std::tuple<at::Tensor, at::Tensor> lpla_score_cpu(const at::Tensor& views, double p, double mean_in, double std_in,
                                                  double mean_out, double std_out, bool log_space) {
  check_floating(views, "views");
  check_dim(views, "views", 3, "(N, K, D)");
  check_p(p);
  check_finite_param(mean_in, "mean_in");
  check_finite_param(mean_out, "mean_out");
  check_std(std_in, "std_in");
  check_std(std_out, "std_out");
  auto s = at::linalg_vector_norm(views.to(at::kDouble), p, at::IntArrayRef{-1}, false);
  auto stat = log_space ? s.log() : s;
  auto zin = (stat - mean_in) / std_in;
  auto zout = (stat - mean_out) / std_out;
  auto llr = -0.5 * zin * zin + 0.5 * zout * zout - (std::log(std_in) - std::log(std_out));
  llr = at::where(stat.isfinite(), llr, at::full({}, NAN, llr.options()));
  return {s.to(result_dtype(views)), llr.sum(-1).to(result_dtype(views))};
}

at::Tensor view_cosine_cpu(const at::Tensor& views) {
  check_floating(views, "views");
  check_dim(views, "views", 3, "(N, K, D)");
  auto v = views.to(at::kDouble);
  auto unit = v / at::linalg_vector_norm(v, 2, at::IntArrayRef{-1}, true).clamp_min(1e-12);
  auto gram = at::matmul(unit, unit.transpose(1, 2));
  const int64_t K = views.size(1);
  auto idx = at::triu_indices(K, K, 1, v.options().dtype(at::kLong));
  return gram.index({at::indexing::Slice(), idx[0], idx[1]}).to(result_dtype(views));
}

}  // namespace

TORCH_LIBRARY_IMPL(lpla_fast, CPU, m) {
  m.impl("lp_norm", &lp_norm_cpu);
  m.impl("pooled_lp_norm", &pooled_lp_norm_cpu);
  m.impl("lpla_score", &lpla_score_cpu);
  m.impl("view_cosine", &view_cosine_cpu);
}

}  // namespace lpla_fast
