// CUDA kernel of view_cosine: pairwise cosine similarities of each sample's K views.
// The K norms per sample come first (the lp_norm rows kernel, p = 2, overflow-safe); each
// pair is then a dot product of the two rows already divided by their clamped norms, so
// every term is at most 1 in magnitude and huge values cannot overflow it.
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

// out[n, q] = cos(views[n, i], views[n, j]) for the q-th pair i < j in row-major order;
// a group of G threads per (n, q).
template <typename scalar_t>
__global__ void __launch_bounds__(kBlockThreads)
    pair_cosine_kernel(RowTable<scalar_t> views, int64_t N, int64_t K, int64_t D,
                       const double* norms, int G, result_t<scalar_t>* out) {
  const int t = threadIdx.x % G;
  const int64_t pairs = K * (K - 1) / 2;
  const int64_t groups = static_cast<int64_t>(gridDim.x) * (kBlockThreads / G);
  for (int64_t item = (static_cast<int64_t>(blockIdx.x) * kBlockThreads + threadIdx.x) / G; item < N * pairs;
       item += groups) {
    const int64_t n = item / pairs;
    // Row i of the upper triangle holds the K - 1 - i pairs (i, i+1) .. (i, K-1).
    int64_t i = 0, q = item % pairs;
    while (q >= K - 1 - i) {
      q -= K - 1 - i;
      ++i;
    }
    const int64_t j = i + 1 + q;
    // nan_max, not fmax: a NaN norm must give a NaN similarity, as in the reference.
    const double inv_a = 1.0 / nan_max(norms[n * K + i], kCosineEps);
    const double inv_b = 1.0 / nan_max(norms[n * K + j], kCosineEps);
    double dot = 0.0;
    for_each_in_rows(views.row(n * K + i), views.row(n * K + j), D, t, G,
                     [&](scalar_t a, scalar_t b) { dot += (to_double(a) * inv_a) * (to_double(b) * inv_b); });
    dot = group_allreduce(dot, G, Plus{});
    if (t == 0) out[item] = to_out<result_t<scalar_t>>(dot);
  }
}

namespace {

at::Tensor view_cosine_cuda(const at::Tensor& views) {
  check_view_cosine_args(views);
  const c10::cuda::CUDAGuard guard(views.device());
  const int64_t N = views.size(0), K = views.size(1), D = views.size(2);
  const auto opts = views.options().dtype(result_dtype(views));
  auto out = at::empty({N, K * (K - 1) / 2}, opts);
  if (out.numel() == 0) return out;
  const at::Tensor v = with_contiguous_rows(views);
  // float64 norms: the norm of an fp32/bf16 row near the top of the fp32 range overflows
  // fp32, and an Inf norm would turn that row's similarities into 0.
  auto norms = at::empty({N * K}, opts.dtype(at::kDouble));
  lp_norm_rows(v, N * K, K, v.stride(0), v.stride(1), D, 2.0, norms);
  const int G = group_size_for(D, v.element_size());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "view_cosine_cuda", [&] {
    const RowTable<scalar_t> rows{v.data_ptr<scalar_t>(), K, v.stride(0), v.stride(1)};
    pair_cosine_kernel<scalar_t><<<blocks_for(out.numel(), G), kBlockThreads, 0, stream>>>(
        rows, N, K, D, norms.data_ptr<double>(), G, out.data_ptr<result_t<scalar_t>>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace
}  // namespace cuda
}  // namespace lpla_fast

TORCH_LIBRARY_IMPL(lpla_fast, CUDA, m) {
  m.impl("view_cosine", &lpla_fast::cuda::view_cosine_cuda);
}
