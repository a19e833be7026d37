// CUDA kernels of lp_norm and lpla_score: Lp-norms of rows, and the fused LpLA score.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>

#include "checks.h"
#include "cuda/reduce.cuh"

namespace lpla_fast {
namespace cuda {

// out[r] = ||row r||_p for r in [0, N); one group of G threads per row.
template <int P, typename scalar_t, typename out_t>
__global__ void __launch_bounds__(kBlockThreads)
    lp_norm_kernel(RowTable<scalar_t> rows, int64_t N, int64_t D, double p, int G, out_t* out) {
  const int t = threadIdx.x % G;
  const int64_t groups = static_cast<int64_t>(gridDim.x) * (kBlockThreads / G);
  for (int64_t r = (static_cast<int64_t>(blockIdx.x) * kBlockThreads + threadIdx.x) / G; r < N; r += groups) {
    const double norm = row_norm<P>(rows.row(r), D, p, t, G);
    if (t == 0) out[r] = to_out<out_t>(norm);
  }
}

// For each sample n: norms[n, k] = ||views[n, k]||_p and scores[n] = sum_k llr(t_k), with t_k
// the view statistic (common.h). One group per sample walks its K views in order, so the
// whole score is one pass.
template <int P, typename scalar_t>
__global__ void __launch_bounds__(kBlockThreads)
    lpla_score_kernel(RowTable<scalar_t> views, int64_t N, int64_t K, int64_t D, double p, GaussianLogRatio llr,
                      bool log_space, int G,
                      result_t<scalar_t>* norms, result_t<scalar_t>* scores) {
  const int t = threadIdx.x % G;
  const int64_t groups = static_cast<int64_t>(gridDim.x) * (kBlockThreads / G);
  for (int64_t n = (static_cast<int64_t>(blockIdx.x) * kBlockThreads + threadIdx.x) / G; n < N; n += groups) {
    double score = 0.0;
    for (int64_t k = 0; k < K; ++k) {
      const double s = row_norm<P>(views.row(n * K + k), D, p, t, G);
      score += llr(view_statistic(s, log_space));
      if (t == 0) norms[n * K + k] = to_out<result_t<scalar_t>>(s);
    }
    if (t == 0) scores[n] = to_out<result_t<scalar_t>>(score);
  }
}

void lp_norm_rows(const at::Tensor& src, int64_t N, int64_t inner, int64_t outer_stride, int64_t inner_stride,
                  int64_t D, double p, at::Tensor& out) {
  TORCH_INTERNAL_ASSERT(out.is_contiguous() && out.numel() == N &&
                        (out.scalar_type() == result_dtype(src) || out.scalar_type() == at::kDouble));
  if (N == 0) return;
  const int G = group_size_for(D, src.element_size());
  const int blocks = blocks_for(N, G);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "lp_norm_cuda", [&] {
    const RowTable<scalar_t> rows{src.data_ptr<scalar_t>(), inner, outer_stride, inner_stride};
    const auto launch = [&](auto* out_ptr) {
      dispatch_p(p, [&](auto path) {
        lp_norm_kernel<decltype(path)::value, scalar_t><<<blocks, kBlockThreads, 0, stream>>>(rows, N, D, p, G, out_ptr);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    };
    if (out.scalar_type() == at::kDouble) launch(out.data_ptr<double>());
    else launch(out.data_ptr<result_t<scalar_t>>());
  });
}

namespace {

at::Tensor lp_norm_cuda(const at::Tensor& x, double p) {
  check_lp_norm_args(x, p);
  const c10::cuda::CUDAGuard guard(x.device());
  auto out = at::empty(x.sizes().slice(0, x.dim() - 1), x.options().dtype(result_dtype(x)));
  if (out.numel() == 0) return out;
  // (N, D) rows ld apart; flatten copies only when the leading dims cannot be merged.
  const at::Tensor rows = with_contiguous_rows(x.dim() == 1 ? x.unsqueeze(0) : x.flatten(0, -2));
  auto flat = out.view({-1});
  lp_norm_rows(rows, rows.size(0), 1, rows.stride(0), 0, rows.size(1), p, flat);
  return out;
}

std::tuple<at::Tensor, at::Tensor> lpla_score_cuda(const at::Tensor& views, double p, double mean_in, double std_in,
                                                   double mean_out, double std_out, bool log_space) {
  check_lpla_score_args(views, p, mean_in, std_in, mean_out, std_out);
  const c10::cuda::CUDAGuard guard(views.device());
  const int64_t N = views.size(0), K = views.size(1), D = views.size(2);
  const auto opts = views.options().dtype(result_dtype(views));
  auto norms = at::empty({N, K}, opts);
  auto scores = at::empty({N}, opts);
  if (N == 0) return {norms, scores};
  const at::Tensor v = with_contiguous_rows(views);
  const auto llr = GaussianLogRatio::make(mean_in, std_in, mean_out, std_out);
  const int G = group_size_for(D, v.element_size());
  const int blocks = blocks_for(N, G);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "lpla_score_cuda", [&] {
    const RowTable<scalar_t> rows{v.data_ptr<scalar_t>(), std::max<int64_t>(K, 1), v.stride(0), v.stride(1)};
    auto* norms_ptr = norms.data_ptr<result_t<scalar_t>>();
    auto* scores_ptr = scores.data_ptr<result_t<scalar_t>>();
    dispatch_p(p, [&](auto path) {
      lpla_score_kernel<decltype(path)::value, scalar_t>
          <<<blocks, kBlockThreads, 0, stream>>>(rows, N, K, D, p, llr, log_space, G, norms_ptr, scores_ptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {norms, scores};
}

}  // namespace
}  // namespace cuda
}  // namespace lpla_fast

TORCH_LIBRARY_IMPL(lpla_fast, CUDA, m) {
  m.impl("lp_norm", &lpla_fast::cuda::lp_norm_cuda);
  m.impl("lpla_score", &lpla_fast::cuda::lpla_score_cuda);
}
