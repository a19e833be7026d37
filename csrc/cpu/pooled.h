// CPU kernels of pooled_lp_norm and pooled_lpla_score (the CPU side of csrc/cuda/pooled.cu):
// global average pooling of NCHW or channels_last feature maps, one pass per sample.
// Part of kernels_impl.h, included inside its per-instruction-set namespace (no includes here).
#pragma once

namespace {

// sum of a contiguous plane: in float blocks, once more in double if that overflowed.
template <class T>
inline double plane_sum(const T* x, int64_t n) {
  if constexpr (!std::is_same_v<T, double>) {
    double s;
    if (n < 256) {
      prefetch_ahead(x, n * static_cast<int64_t>(sizeof(T)));
      s = short_row_sum(x, n);
    } else {
      s = sum_float_terms(x, n, [](f32x8 v) { return v; });
    }
    if (std::isfinite(s)) return s;
  }
  return sum_terms(x, n, Identity{});
}

// Per-channel sums over H and W of one channels_last sample (channel stride 1). Positions
// are read in memory order, eight C-vectors per pass added into a float row (`partial`, C
// long, in L1) that drains into the double sums every kDrainPositions positions.
constexpr int kPositionsPerPass = 8;
constexpr int kDrainPositions = 64;

template <class T>
void channels_last_sums(const T* sample, int64_t C, int64_t H, int64_t W, int64_t sH, int64_t sW, double* sums,
                        std::vector<float>& partial) {
  std::fill(sums, sums + C, 0.0);
  auto exact = [&] {  // in double, element by element
    for (int64_t h = 0; h < H; ++h)
      for (int64_t w = 0; w < W; ++w) accumulate_row(sample + h * sH + w * sW, C, sums);
  };
  if constexpr (std::is_same_v<T, double>) {
    exact();
  } else {
    partial.assign(C, 0.0f);
    const T* rows[kPositionsPerPass];
    int gathered = 0, pending = 0;
    bool finite = true;
    auto add_gathered = [&] {
      if (gathered == kPositionsPerPass) {
        accumulate_rows<kPositionsPerPass>(rows, C, partial.data());
      } else {  // the sample's last few positions: one pass each over `partial` (in L1)
        for (int j = 0; j < gathered; ++j) accumulate_rows<1>(rows + j, C, partial.data());
      }
      pending += gathered;
      gathered = 0;
      if (pending == kDrainPositions) {
        finite &= drain_partial(partial.data(), C, sums);
        pending = 0;
      }
    };
    for (int64_t h = 0; h < H; ++h)
      for (int64_t w = 0; w < W; ++w) {
        rows[gathered++] = sample + h * sH + w * sW;
        if (gathered == kPositionsPerPass) add_gathered();
      }
    if (gathered > 0) add_gathered();
    if (pending > 0) finite &= drain_partial(partial.data(), C, sums);
    if (!finite) {
      // Float partial sums overflowed (or the sample holds NaN / Inf): redo in double.
      std::fill(sums, sums + C, 0.0);
      exact();
    }
  }
}

// One pass per sample: its channel means (plane sums for NCHW, position rows for
// channels_last) in a C-long double buffer, then their norm and the pooled row. Samples are
// the unit of parallel work (no N x C buffer to allocate and read again); a batch of one
// feature map runs on one thread. The norms go to norm_dst (result type, or double for the
// callers that score them).
template <class T, class NormT>
void pooled_norms(const at::Tensor& fmap, double p, bool return_pooled, at::Tensor& pooled, NormT* norm_dst) {
  const int64_t N = fmap.size(0), C = fmap.size(1), H = fmap.size(2), W = fmap.size(3);
  const int64_t sN = fmap.stride(0), sC = fmap.stride(1), sH = fmap.stride(2), sW = fmap.stride(3);
  const int64_t HW = H * W;
  // An empty map is read by neither path (and .contiguous() would return it unchanged), so
  // any strides will do: C = 0 gives norms 0, H * W = 0 gives NaN means, as the reference.
  const bool planes_contiguous = ((W == 1 || sW == 1) && (H == 1 || sH == W)) || fmap.numel() == 0;
  const bool channels_contiguous = C == 1 || sC == 1;
  if (!planes_contiguous && !channels_contiguous) {
    // Any other layout: one contiguous copy, then the NCHW path.
    pooled_norms<T>(fmap.contiguous(), p, return_pooled, pooled, norm_dst);
    return;
  }
  const double inv_area = 1.0 / static_cast<double>(HW);
  const NormSpec spec(p);
  const T* base = fmap.const_data_ptr<T>();
  auto* pooled_dst = return_pooled ? pooled.mutable_data_ptr<result_t<T>>() : nullptr;
  at::parallel_for(0, N, grain_rows(C * HW), [&](int64_t begin, int64_t end) {
    std::vector<double> mean(C);
    std::vector<float> partial;
    for (int64_t n = begin; n < end; ++n) {
      const T* sample = base + n * sN;
      if (planes_contiguous) {
        for (int64_t c = 0; c < C; ++c) mean[c] = plane_sum(sample + c * sC, HW);
      } else {
        channels_last_sums(sample, C, H, W, sH, sW, mean.data(), partial);
      }
      if (pooled_dst) {  // the means and the pooled row in one pass
        auto* row = pooled_dst + n * C;
        for (int64_t c = 0; c < C; ++c) row[c] = static_cast<result_t<T>>(mean[c] *= inv_area);
      } else {
        for (int64_t c = 0; c < C; ++c) mean[c] *= inv_area;
      }
      norm_dst[n] = static_cast<NormT>(C == 0 ? 0.0 : row_norm(mean.data(), C, spec));
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> pooled_lp_norm(const at::Tensor& fmap, double p, bool return_pooled) {
  const auto out_dtype = result_dtype(fmap);
  const auto opts = fmap.options().dtype(out_dtype);
  const int64_t N = fmap.size(0), C = fmap.size(1);
  auto pooled = return_pooled ? at::empty({N, C}, opts) : at::empty({0}, opts);
  auto norms = at::empty({N}, opts);
  if (N == 0) return {pooled, norms};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, fmap.scalar_type(), "pooled_lp_norm_cpu",
                                  [&] {
                                    auto* norm_dst = norms.mutable_data_ptr<result_t<scalar_t>>();
                                    pooled_norms<scalar_t>(fmap, p, return_pooled, pooled, norm_dst);
                                  });
  return {pooled, norms};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pooled_lpla_score(const at::Tensor& fmap, int64_t num_views, double p,
                                                                 double mean_in, double std_in, double mean_out,
                                                                 double std_out, bool log_space, bool return_pooled) {
  const auto opts = fmap.options().dtype(result_dtype(fmap));
  const int64_t rows = fmap.size(0), C = fmap.size(1), N = rows / num_views;
  auto pooled = return_pooled ? at::empty({rows, C}, opts) : at::empty({0}, opts);
  auto norms = at::empty({N, num_views}, opts);
  auto scores = at::empty({N}, opts);
  if (rows == 0) return {pooled, norms, scores};
  // The views' norms in double (rows x 8 bytes, next to the map's rows x C x H x W), so the
  // scores see them unrounded, as lpla_score's do.
  std::vector<double> norms64(rows);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, fmap.scalar_type(), "pooled_lpla_score_cpu", [&] {
    pooled_norms<scalar_t>(fmap, p, return_pooled, pooled, norms64.data());
    using R = result_t<scalar_t>;
    score_norms(norms64.data(), N, num_views, GaussianLogRatio::make(mean_in, std_in, mean_out, std_out), log_space,
                norms.mutable_data_ptr<R>(), scores.mutable_data_ptr<R>());
  });
  return {pooled, norms, scores};
}
