// CPU kernel of view_norm_stats (the CPU side of csrc/cuda/view_stats.cu).
// Part of kernels_impl.h, included inside its per-instruction-set namespace (no includes here).
#pragma once

namespace {

// The element-wise mean of a sample's views. Float, half and bfloat16 views add into a float
// row, up to eight views per pass (one load and store of the row per eight views), which
// drains into double sums every kDrainViews views, as channels_last pooling does. A float
// partial sum that overflowed shows as a non-finite mean norm, which the caller then
// recomputes in double. Double views add in double.
constexpr int kViewsPerPass = 8;
constexpr int kDrainViews = 64;

template <class T>
class ViewMean {
 public:
  void reset(int64_t D) {
    D_ = D;
    gathered_ = pending_ = 0;
    drained_ = false;
    if constexpr (std::is_same_v<T, double>) sum_.assign(D, 0.0);
    else partial_.assign(D, 0.0f);
  }
  // Adds a view; `row` must stay valid until the next flush() or mean().
  void add(const T* row) {
    if constexpr (std::is_same_v<T, double>) {
      accumulate_row(row, D_, sum_.data());
    } else {
      rows_[gathered_++] = row;
      if (gathered_ == kViewsPerPass) flush();
    }
  }
  // Adds the views gathered so far.
  void flush() {
    if constexpr (!std::is_same_v<T, double>) {
      // The views are in cache (their norms just read them): no prefetches.
      if (gathered_ == kViewsPerPass) {
        accumulate_rows<kViewsPerPass, false>(rows_, D_, partial_.data());
      } else {
        for (int j = 0; j < gathered_; ++j) accumulate_rows<1, false>(rows_ + j, D_, partial_.data());
      }
      pending_ += gathered_;
      gathered_ = 0;
      if (pending_ >= kDrainViews) drain();
    }
  }
  // out[d] = sum[d] / K (K = 0 gives NaN, as the reference's mean of no views).
  template <class R>
  void mean(int64_t K, R* out) {
    flush();
    const double inv = 1.0 / static_cast<double>(K);
    if (std::is_same_v<T, double> || drained_) {
      if (pending_ > 0) drain();
      for (int64_t d = 0; d < D_; ++d) out[d] = static_cast<R>(sum_[d] * inv);
    } else {
      for (int64_t d = 0; d < D_; ++d) out[d] = static_cast<R>(static_cast<double>(partial_[d]) * inv);
    }
  }

 private:
  void drain() {
    if (!drained_) sum_.assign(D_, 0.0);
    drained_ = true;
    drain_partial(partial_.data(), D_, sum_.data());
    pending_ = 0;
  }

  int64_t D_ = 0;
  std::vector<double> sum_;
  std::vector<float> partial_;
  const T* rows_[kViewsPerPass];
  int gathered_ = 0, pending_ = 0;
  bool drained_ = false;
};

// Per sample: the K view norms, the mean and spread of their statistics (ViewStats) and the
// norm of the view-mean embedding. Each view is read from memory once, for its norm; the view
// mean reads it again from cache. The view mean is rounded to the result type before its
// norm, which changes it by less than the result's own rounding.
template <class T>
void view_stats_rows(const at::Tensor& views, const NormSpec& spec, bool log_space, at::Tensor& norms,
                     at::Tensor& mean, at::Tensor& stddev, at::Tensor& mean_view_norm) {
  using R = result_t<T>;
  const int64_t N = views.size(0), K = views.size(1), D = views.size(2);
  const int64_t sN = views.stride(0), sK = views.stride(1), sD = views.stride(2);
  const bool rows_contiguous = sD == 1 || D <= 1;
  const T* base = views.const_data_ptr<T>();
  auto* norm_dst = norms.mutable_data_ptr<R>();
  auto* mean_dst = mean.mutable_data_ptr<R>();
  auto* std_dst = stddev.mutable_data_ptr<R>();
  auto* centre_dst = mean_view_norm.mutable_data_ptr<R>();
  at::parallel_for(0, N, grain_rows((K + 1) * D), [&](int64_t begin, int64_t end) {
    std::vector<T> buffer;
    ViewMean<T> view_mean;
    std::vector<R> centre(D);
    for (int64_t n = begin; n < end; ++n) {
      const T* sample = base + n * sN;
      view_mean.reset(D);
      ViewStats stats;
      for (int64_t k = 0; k < K; ++k) {
        const T* row = contiguous_row(sample + k * sK, D, sD, buffer);
        const double s = D == 0 ? 0.0 : row_norm(row, D, spec);
        norm_dst[n * K + k] = static_cast<R>(s);
        stats.add(view_statistic(s, log_space));
        view_mean.add(row);
        if (!rows_contiguous) view_mean.flush();  // `buffer` is reused by the next view
      }
      mean_dst[n] = static_cast<R>(stats.mean());
      std_dst[n] = static_cast<R>(stats.stddev());
      view_mean.mean(K, centre.data());
      double centre_norm = D == 0 ? 0.0 : row_norm(centre.data(), D, spec);
      if (!std::is_same_v<T, double> && !std::isfinite(centre_norm) && K > 0) {
        // Cold path (float overflow, or NaN / Inf in the views): the mean in double.
        std::vector<double> exact(D, 0.0);
        for (int64_t k = 0; k < K; ++k)
          for (int64_t d = 0; d < D; ++d) exact[d] += static_cast<double>(load1(sample + k * sK, d * sD));
        for (int64_t d = 0; d < D; ++d) centre[d] = static_cast<R>(exact[d] / static_cast<double>(K));
        centre_norm = row_norm(centre.data(), D, spec);
      }
      centre_dst[n] = static_cast<R>(centre_norm);
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> view_norm_stats(const at::Tensor& views, double p,
                                                                           bool log_space) {
  const auto opts = views.options().dtype(result_dtype(views));
  const int64_t N = views.size(0);
  auto norms = at::empty({N, views.size(1)}, opts);
  auto mean = at::empty({N}, opts), stddev = at::empty({N}, opts), mean_view_norm = at::empty({N}, opts);
  if (N == 0) return {norms, mean, stddev, mean_view_norm};
  const NormSpec spec(p);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, views.scalar_type(), "view_norm_stats_cpu", [&] {
    view_stats_rows<scalar_t>(views, spec, log_space, norms, mean, stddev, mean_view_norm);
  });
  return {norms, mean, stddev, mean_view_norm};
}
