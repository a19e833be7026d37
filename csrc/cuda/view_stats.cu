// CUDA kernel of view_norm_stats: per sample, the K view norms, the mean and spread of their
// statistics and the norm of the view-mean embedding, in one pass over the views.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "checks.h"
#include "common.h"
#include "cuda/reduce.cuh"

namespace lpla_fast {
namespace cuda {

// ||sum / K||_p of a float64 row whose element d is owned by thread d % G of the group:
// max |sum / K| first, then the sum of (|sum / K| / max)^p (the row is in cache and K times
// shorter than the sample's views, so the second read costs little).
template <int P>
__device__ double owned_mean_norm(const double* sum, int64_t D, double K, double p, int t, int G) {
  double m = 0.0;
  for (int64_t d = t; d < D; d += G) m = nan_max(m, fabs(sum[d] / K));
  m = group_allreduce(m, G, NanMax{});
  if constexpr (P == kInfP) {
    return m;
  } else {
    if (m != m || isinf(m) || m == 0.0) return m;
    double s = 0.0;
    for (int64_t d = t; d < D; d += G) s += pow_p<P>(fabs(sum[d] / K) / m, p);
    s = group_allreduce(s, G, Plus{});
    return m * root_p<P>(s, p);
  }
}

struct ViewStatsOut {
  void* norms;  // (N, K)
  void* mean;  // (N,)
  void* stddev;  // (N,)
  void* mean_view_norm;  // (N,)
};

// One group of G threads per sample. For each view: its norm (row_norm reads the view from
// memory once) and, from cache, its addition to the sample's float64 view sum, in the group's
// own row of `sums` (one D-long row per group, reused for each of its samples). Thread t owns
// elements t, t+G, ... of that row for every view, so it only reads its own writes and the
// group needs no synchronisation beyond its reductions.
template <int P, typename scalar_t>
__global__ void __launch_bounds__(kBlockThreads)
    view_norm_stats_kernel(RowTable<scalar_t> views, int64_t N, int64_t K, int64_t D, double p, bool log_space, int G,
                           double* sums, ViewStatsOut out) {
  using R = result_t<scalar_t>;
  const int t = threadIdx.x % G;
  const int64_t groups = static_cast<int64_t>(gridDim.x) * (kBlockThreads / G);
  const int64_t group = (static_cast<int64_t>(blockIdx.x) * kBlockThreads + threadIdx.x) / G;
  double* sum = sums + group * D;
  for (int64_t n = group; n < N; n += groups) {
    ViewStats stats;
    for (int64_t k = 0; k < K; ++k) {
      const scalar_t* row = views.row(n * K + k);
      const double s = row_norm<P>(row, D, p, t, G);
      stats.add(view_statistic(s, log_space));
      if (t == 0) static_cast<R*>(out.norms)[n * K + k] = to_out<R>(s);
      for (int64_t d = t; d < D; d += G) sum[d] = (k == 0 ? 0.0 : sum[d]) + to_double(row[d]);
    }
    // K = 0: the mean of no views is NaN (the norm of an empty row is still 0).
    const double centre =
        K == 0 ? (D == 0 ? 0.0 : quiet_nan()) : owned_mean_norm<P>(sum, D, static_cast<double>(K), p, t, G);
    if (t == 0) {
      static_cast<R*>(out.mean)[n] = to_out<R>(stats.mean());
      static_cast<R*>(out.stddev)[n] = to_out<R>(stats.stddev());
      static_cast<R*>(out.mean_view_norm)[n] = to_out<R>(centre);
    }
  }
}

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> view_norm_stats_cuda(const at::Tensor& views, double p,
                                                                                bool log_space) {
  check_view_norm_stats_args(views, p);
  const c10::cuda::CUDAGuard guard(views.device());
  const int64_t N = views.size(0), K = views.size(1), D = views.size(2);
  const auto opts = views.options().dtype(result_dtype(views));
  auto norms = at::empty({N, K}, opts);
  auto mean = at::empty({N}, opts), stddev = at::empty({N}, opts), mean_view_norm = at::empty({N}, opts);
  if (N == 0) return {norms, mean, stddev, mean_view_norm};
  const at::Tensor v = with_contiguous_rows(views);
  const ViewStatsOut out{norms.data_ptr(), mean.data_ptr(), stddev.data_ptr(), mean_view_norm.data_ptr()};
  const int G = group_size_for(D, v.element_size());
  const int blocks = blocks_for(N, G);
  // The view sums: a float64 row per group of threads (at most N), whatever the batch size.
  const int64_t groups = std::min<int64_t>(N, static_cast<int64_t>(blocks) * (kBlockThreads / G));
  auto sums = at::empty({groups, D}, opts.dtype(at::kDouble));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "view_norm_stats_cuda", [&] {
    const RowTable<scalar_t> rows{v.data_ptr<scalar_t>(), std::max<int64_t>(K, 1), v.stride(0), v.stride(1)};
    dispatch_p(p, [&](auto path) {
      view_norm_stats_kernel<decltype(path)::value, scalar_t>
          <<<blocks, kBlockThreads, 0, stream>>>(rows, N, K, D, p, log_space, G, sums.data_ptr<double>(), out);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {norms, mean, stddev, mean_view_norm};
}

}  // namespace
}  // namespace cuda
}  // namespace lpla_fast

TORCH_LIBRARY_IMPL(lpla_fast, CUDA, m) {
  m.impl("view_norm_stats", &lpla_fast::cuda::view_norm_stats_cuda);
}
