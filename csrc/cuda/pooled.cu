// CUDA kernels of pooled_lp_norm and pooled_lpla_score: global average pooling of a feature
// map, the Lp-norm of the pooled vector and (pooled_lpla_score) the LpLA score of each
// sample's K pooled views. fmap is read once, into an (N, C) float64 workspace of means; the
// norm then reads only that workspace (H*W times smaller) through the lp_norm rows kernel.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "checks.h"
#include "cuda/reduce.cuh"

namespace lpla_fast {
namespace cuda {

// NCHW: means[r] = mean of the L contiguous elements of row r = (n, c); a group per row.
template <typename scalar_t>
__global__ void __launch_bounds__(kBlockThreads)
    row_mean_kernel(const scalar_t* x, int64_t rows, int64_t L, int G, double* means) {
  const int t = threadIdx.x % G;
  const int64_t groups = static_cast<int64_t>(gridDim.x) * (kBlockThreads / G);
  for (int64_t r = (static_cast<int64_t>(blockIdx.x) * kBlockThreads + threadIdx.x) / G; r < rows; r += groups) {
    double s = 0.0;
    for_each_in_row(x + r * L, L, t, G, [&](scalar_t v) { s += to_double(v); });
    s = group_allreduce(s, G, Plus{});
    // L = 0 gives 0/0 = NaN, the mean of nothing, as torch's mean does.
    if (t == 0) means[r] = s / static_cast<double>(L);
  }
}

// Any strides, meant for channels_last (stride_c = 1): a thread per (n, c), so neighbouring
// threads read neighbouring channels and every load of the H*W walk is coalesced.
template <typename scalar_t>
__global__ void __launch_bounds__(kBlockThreads)
    strided_mean_kernel(const scalar_t* x, int64_t N, int64_t C, int64_t H, int64_t W, int64_t stride_n,
                        int64_t stride_c, int64_t stride_h, int64_t stride_w, double* means) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * kBlockThreads;
  const double count = static_cast<double>(H * W);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kBlockThreads + threadIdx.x; i < N * C; i += step) {
    const scalar_t* plane = x + (i / C) * stride_n + (i % C) * stride_c;
    double s = 0.0;
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t w = 0; w < W; ++w) s += to_double(plane[h * stride_h + w * stride_w]);
    }
    means[i] = s / count;
  }
}

// For each sample n: norms[n, k] = the float64 view norm s[n*K + k] in the result type and
// scores[n] = sum_k llr(t_nk); a thread per sample (K numbers each).
template <typename R>
__global__ void __launch_bounds__(kBlockThreads)
    score_norms_kernel(const double* s, int64_t N, int64_t K, GaussianLogRatio llr, bool log_space, R* norms,
                       R* scores) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * kBlockThreads;
  for (int64_t n = static_cast<int64_t>(blockIdx.x) * kBlockThreads + threadIdx.x; n < N; n += step) {
    double total = 0.0;
    for (int64_t k = 0; k < K; ++k) {
      norms[n * K + k] = to_out<R>(s[n * K + k]);
      total += llr(view_statistic(s[n * K + k], log_space));
    }
    scores[n] = to_out<R>(total);
  }
}

namespace {

// means (N, C) float64 of fmap (N, C, H, W) over H and W.
void spatial_means(const at::Tensor& fmap, at::Tensor& means) {
  const int64_t N = fmap.size(0), C = fmap.size(1), H = fmap.size(2), W = fmap.size(3);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const bool nchw = fmap.is_contiguous();
  const bool nhwc = !nchw && fmap.is_contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor x = nchw || nhwc ? fmap : fmap.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pooled_lp_norm_cuda", [&] {
    if (nhwc) {
      strided_mean_kernel<scalar_t><<<blocks_for(N * C, 1), kBlockThreads, 0, stream>>>(
          x.data_ptr<scalar_t>(), N, C, H, W, x.stride(0), x.stride(1), x.stride(2), x.stride(3),
          means.data_ptr<double>());
    } else {
      const int G = group_size_for(H * W, x.element_size());
      row_mean_kernel<scalar_t><<<blocks_for(N * C, G), kBlockThreads, 0, stream>>>(
          x.data_ptr<scalar_t>(), N * C, H * W, G, means.data_ptr<double>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

std::tuple<at::Tensor, at::Tensor> pooled_lp_norm_cuda(const at::Tensor& fmap, double p, bool return_pooled) {
  check_pooled_lp_norm_args(fmap, p);
  const c10::cuda::CUDAGuard guard(fmap.device());
  const int64_t N = fmap.size(0), C = fmap.size(1);
  const auto opts = fmap.options().dtype(result_dtype(fmap));
  const auto opts64 = fmap.options().dtype(at::kDouble);
  auto means = at::empty({N, C}, opts64);
  auto norms = at::empty({N}, opts64);
  if (N > 0 && C > 0) spatial_means(fmap, means);
  // C = 0 leaves an empty workspace: norms of empty rows are 0.
  lp_norm_rows(means, N, 1, C, 0, C, p, norms);
  auto pooled = return_pooled ? means.to(result_dtype(fmap)) : at::empty({0}, opts);
  return {pooled, norms.to(result_dtype(fmap))};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pooled_lpla_score_cuda(const at::Tensor& fmap, int64_t num_views,
                                                                      double p, double mean_in, double std_in,
                                                                      double mean_out, double std_out, bool log_space,
                                                                      bool return_pooled) {
  check_pooled_lpla_score_args(fmap, num_views, p, mean_in, std_in, mean_out, std_out);
  const c10::cuda::CUDAGuard guard(fmap.device());
  const int64_t rows = fmap.size(0), C = fmap.size(1), N = rows / num_views;
  const auto opts = fmap.options().dtype(result_dtype(fmap));
  const auto opts64 = fmap.options().dtype(at::kDouble);
  auto means = at::empty({rows, C}, opts64);
  auto norms64 = at::empty({rows}, opts64);
  if (rows > 0 && C > 0) spatial_means(fmap, means);
  lp_norm_rows(means, rows, 1, C, 0, C, p, norms64);
  auto norms = at::empty({N, num_views}, opts);
  auto scores = at::empty({N}, opts);
  if (N > 0) {
    const auto llr = GaussianLogRatio::make(mean_in, std_in, mean_out, std_out);
    const auto stream = c10::cuda::getCurrentCUDAStream();
    const int blocks = blocks_for(N, 1);
    if (result_dtype(fmap) == at::kDouble) {
      score_norms_kernel<double><<<blocks, kBlockThreads, 0, stream>>>(
          norms64.data_ptr<double>(), N, num_views, llr, log_space, norms.data_ptr<double>(), scores.data_ptr<double>());
    } else {
      score_norms_kernel<float><<<blocks, kBlockThreads, 0, stream>>>(
          norms64.data_ptr<double>(), N, num_views, llr, log_space, norms.data_ptr<float>(), scores.data_ptr<float>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  auto pooled = return_pooled ? means.to(result_dtype(fmap)) : at::empty({0}, opts);
  return {pooled, norms, scores};
}

}  // namespace
}  // namespace cuda
}  // namespace lpla_fast

TORCH_LIBRARY_IMPL(lpla_fast, CUDA, m) {
  m.impl("pooled_lp_norm", &lpla_fast::cuda::pooled_lp_norm_cuda);
  m.impl("pooled_lpla_score", &lpla_fast::cuda::pooled_lpla_score_cuda);
}
