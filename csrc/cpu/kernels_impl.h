// CPU kernels of the lpla_fast ops, written once and compiled per instruction set.
//
// The including file defines LPLA_ISA (the namespace, e.g. cpu_avx2) and includes
// kernels_prelude.h before this file, so that a `#pragma GCC target` placed in between
// applies to these kernels only, never to torch's inline functions.
//
// Rows are reduced with the vector primitives of simd.h. Float, half and bfloat16 rows
// sum their terms in float blocks moved to double every 256 elements; a sum that may have
// over- or underflowed in float is recomputed in double, where |x|^4 of any float is a
// normal number. Double rows are rescaled by max|x| (as BLAS nrm2 does) when needed, and
// non-integer p always works on |x| / max|x| in [0, 1].

#ifndef LPLA_ISA
#error "define LPLA_ISA before including kernels_impl.h"
#endif

namespace lpla_fast {
namespace LPLA_ISA {
namespace {

// Elements per parallel task: big enough to amortize scheduling, small enough to balance.
constexpr int64_t kGrainElements = int64_t(1) << 15;

int64_t grain_rows(int64_t row_elements) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, row_elements));
}

#include "cpu/simd.h"

// ---------------------------------------------------------------------------------------
// The Lp-norm of one contiguous row.

enum class PKind { One, Two, Three, Four, Inf, HalfInteger, General };

inline bool is_small_integer(PKind kind) {
  return kind == PKind::One || kind == PKind::Two || kind == PKind::Three || kind == PKind::Four;
}

struct NormSpec {
  PKind kind;
  double p;
  double inv_p;
  float p_float;
  int whole = 0;  // floor(p) for the half-integer p = whole + 1/2 < 4

  explicit NormSpec(double p_) : p(p_), inv_p(1.0 / p_), p_float(static_cast<float>(p_)) {
    if (std::isinf(p_)) kind = PKind::Inf;
    else if (p_ == 1.0) kind = PKind::One;
    else if (p_ == 2.0) kind = PKind::Two;
    else if (p_ == 3.0) kind = PKind::Three;
    else if (p_ == 4.0) kind = PKind::Four;
    else if (p_ < 4.0 && p_ * 2.0 == std::floor(p_ * 2.0)) {
      kind = PKind::HalfInteger;
      whole = static_cast<int>(p_);
    } else kind = PKind::General;
  }
};

inline double power_sum_int(PKind kind, double s) {
  switch (kind) {
    case PKind::One: return s;
    case PKind::Two: return std::sqrt(s);
    case PKind::Three: return std::cbrt(s);
    default: return std::sqrt(std::sqrt(s));
  }
}

// sum |a_i|^k for k in {1, 2, 3, 4}, where a = prep(x) in double.
template <class T, class Prep>
inline double int_power_sum(const T* x, int64_t n, PKind kind, Prep prep) {
  switch (kind) {
    case PKind::One:
      return sum_terms(x, n, [prep](f64x4 v) { return vabs(prep(v)); });
    case PKind::Two:
      return sum_terms(x, n, [prep](f64x4 v) {
        const f64x4 a = prep(v);
        return a * a;
      });
    case PKind::Three:
      return sum_terms(x, n, [prep](f64x4 v) {
        const f64x4 a = vabs(prep(v));
        return a * a * a;
      });
    default:
      return sum_terms(x, n, [prep](f64x4 v) {
        const f64x4 a = prep(v);
        const f64x4 a2 = a * a;
        return a2 * a2;
      });
  }
}

struct Identity {
  f64x4 operator()(f64x4 v) const { return v; }
};

// sum |x_i|^k for k in {1, 2, 3, 4} with the terms in float.
template <class T>
inline double float_power_sum(const T* x, int64_t n, PKind kind) {
  switch (kind) {
    case PKind::One:
      return sum_float_terms(x, n, [](f32x8 v) { return vabs(v); });
    case PKind::Two:
      return sum_float_terms(x, n, [](f32x8 v) { return v * v; });
    case PKind::Three:
      return sum_float_terms(x, n, [](f32x8 v) {
        const f32x8 a = vabs(v);
        return a * a * a;
      });
    default:
      return sum_float_terms(x, n, [](f32x8 v) {
        const f32x8 a2 = v * v;
        return a2 * a2;
      });
  }
}

// Smallest sum of float terms trusted: below it, terms may have lost bits to float
// underflow (the tolerated loss is < 1e-25 * D relative).
constexpr double kFloatSafeSum = 1e-20;

// float, half and bfloat16 rows. Integer p: terms in float, and if they over- or
// underflowed (or the row is zero, NaN or Inf) once more in double, where |x|^4 of any
// float is a normal number. Other p: exp2/log2 in float on |x| / max|x|.
template <class T>
double row_norm(const T* x, int64_t n, const NormSpec& spec) {
  if (spec.kind == PKind::Inf) return abs_max(x, n);
  if (is_small_integer(spec.kind)) {
    const double s = float_power_sum(x, n, spec.kind);
    if (s >= kFloatSafeSum && s <= DBL_MAX) return power_sum_int(spec.kind, s);
    return power_sum_int(spec.kind, int_power_sum(x, n, spec.kind, Identity{}));
  }
  const float m = abs_max(x, n);
  if (!(m > 0.0f) || std::isinf(m)) return m;  // NaN, all zeros, or Inf
  // A subnormal max would overflow 1/max: lift the row by 2^126 first (exact).
  const float lift = m < FLT_MIN ? 0x1p126f : 1.0f;
  const float inv = 1.0f / (m * lift);
  const float p = spec.p_float;
  double s;
  if (spec.kind == PKind::HalfInteger) {
    // r^(k + 1/2) = r^k sqrt(r): one sqrt instead of exp2 and log2.
    const int k = spec.whole;
    s = sum_float_terms(x, n, [=](f32x8 v) {
      const f32x8 r = vabs(v) * lift * inv;
      const f32x8 rk = k == 0 ? splat8(1.0f) : k == 1 ? r : k == 2 ? r * r : r * r * r;
      return rk * vsqrt(r);
    });
  } else if (lift == 1.0f) {
    // The common case gets one multiply per element (lift * inv may overflow otherwise).
    s = p < 1.0f ? sum_float_terms(x, n, [=](f32x8 v) { return pow_unit<true>(vabs(v) * inv, p); })
                 : sum_float_terms(x, n, [=](f32x8 v) { return pow_unit<false>(vabs(v) * inv, p); });
  } else {
    s = sum_float_terms(x, n, [=](f32x8 v) { return pow_unit<true>(vabs(v) * lift * inv, p); });
  }
  return static_cast<double>(m) * std::pow(s, spec.inv_p);
}

// Smallest sum of |x|^k trusted without rescaling: below it, terms may have lost bits to
// double underflow.
constexpr double kSafeSum = 1e-250;

// double rows: try the unscaled sum and rescale only when it over- or underflowed (or
// the row is zero, NaN or Inf); generic p always rescales and calls pow per element.
template <>
double row_norm<double>(const double* x, int64_t n, const NormSpec& spec) {
  if (spec.kind == PKind::Inf) return abs_max(x, n);
  if (is_small_integer(spec.kind)) {
    const double s = int_power_sum(x, n, spec.kind, Identity{});
    if (s >= kSafeSum && s <= DBL_MAX) return power_sum_int(spec.kind, s);
  }
  const double m = abs_max(x, n);
  if (!(m > 0.0) || std::isinf(m)) return m;
  if (is_small_integer(spec.kind)) {
    // Divide rather than multiply by 1/max, which overflows for a subnormal max.
    return m * power_sum_int(spec.kind, int_power_sum(x, n, spec.kind, [m](f64x4 v) { return v / m; }));
  }
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += std::pow(std::fabs(x[i]) / m, spec.p);
  return m * std::pow(s, spec.inv_p);
}

// ---------------------------------------------------------------------------------------
// Row iteration over (..., D) tensors with any strides.

// Element offsets of the rows of a (..., D) tensor, in row-major order of the leading
// dims (coalesced where the strides allow, so the common case is one multiply).
struct RowLayout {
  int64_t count = 1;
  int64_t length = 0;
  int64_t step = 1;  // stride between the elements of a row
  std::vector<int64_t> sizes, strides;

  explicit RowLayout(const at::Tensor& x) {
    const int64_t d = x.dim();
    length = x.size(d - 1);
    step = x.stride(d - 1);
    for (int64_t i = 0; i < d - 1; ++i) {
      count *= x.size(i);
      if (x.size(i) == 1) continue;
      if (!sizes.empty() && strides.back() == x.stride(i) * x.size(i)) {
        sizes.back() *= x.size(i);
        strides.back() = x.stride(i);
      } else {
        sizes.push_back(x.size(i));
        strides.push_back(x.stride(i));
      }
    }
    if (sizes.empty()) {
      sizes.push_back(1);
      strides.push_back(0);
    }
  }

  int64_t offset(int64_t row) const {
    if (sizes.size() == 1) return row * strides[0];
    int64_t off = 0;
    for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= 0; --d) {
      off += (row % sizes[d]) * strides[d];
      row /= sizes[d];
    }
    return off;
  }
};

// A contiguous copy of a strided row in `buffer`, or the row itself when contiguous.
template <class T>
inline const T* contiguous_row(const T* row, int64_t n, int64_t step, std::vector<T>& buffer) {
  if (step == 1 || n <= 1) return row;
  buffer.resize(n);
  for (int64_t i = 0; i < n; ++i) buffer[i] = row[i * step];
  return buffer.data();
}

// ---------------------------------------------------------------------------------------
// Ops.

template <class T>
void lp_norm_rows(const at::Tensor& x, double p, at::Tensor& out) {
  const RowLayout rows(x);
  const NormSpec spec(p);
  const T* base = x.const_data_ptr<T>();
  auto* dst = out.mutable_data_ptr<result_t<T>>();
  at::parallel_for(0, rows.count, grain_rows(rows.length), [&](int64_t begin, int64_t end) {
    std::vector<T> buffer;
    for (int64_t r = begin; r < end; ++r) {
      const T* row = contiguous_row(base + rows.offset(r), rows.length, rows.step, buffer);
      dst[r] = static_cast<result_t<T>>(row_norm(row, rows.length, spec));
    }
  });
}

}  // namespace

at::Tensor lp_norm(const at::Tensor& x, double p) {
  const auto out_dtype = result_dtype(x);
  auto out = at::empty(x.sizes().slice(0, x.dim() - 1), x.options().dtype(out_dtype));
  if (out.numel() == 0) return out;
  if (x.size(-1) == 0) return out.zero_();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lp_norm_cpu",
                                  [&] { lp_norm_rows<scalar_t>(x, p, out); });
  return out;
}

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

namespace {

// The scores of samples n in [0, count) from their K view norms s (count x K, double):
// norm_dst gets the norms in the result type R, score_dst[n] = sum_k llr(t_nk).
template <class R>
void score_norms(const double* s, int64_t count, int64_t K, const GaussianLogRatio& llr, bool log_space,
                 R* norm_dst, R* score_dst) {
  for (int64_t n = 0; n < count; ++n) {
    double total = 0.0;
    for (int64_t k = 0; k < K; ++k, ++s) {
      norm_dst[n * K + k] = static_cast<R>(*s);
      total += llr(view_statistic(*s, log_space));
    }
    score_dst[n] = static_cast<R>(total);
  }
}

template <class T>
void score_rows(const at::Tensor& views, const NormSpec& spec, const GaussianLogRatio& llr, bool log_space,
                at::Tensor& norms, at::Tensor& scores) {
  const int64_t N = views.size(0), K = views.size(1), D = views.size(2);
  const int64_t sN = views.stride(0), sK = views.stride(1), sD = views.stride(2);
  const T* base = views.const_data_ptr<T>();
  auto* norm_dst = norms.mutable_data_ptr<result_t<T>>();
  auto* score_dst = scores.mutable_data_ptr<result_t<T>>();
  // Norms of a block of samples first, then their scores: the log and the Gaussian terms
  // stay out of the streaming loop, which then keeps as many reads in flight as lp_norm's.
  constexpr int64_t kSamplesPerBlock = 64;
  at::parallel_for(0, N, grain_rows(K * D), [&](int64_t begin, int64_t end) {
    std::vector<T> buffer;
    std::vector<double> block_norms(kSamplesPerBlock * K);
    for (int64_t first = begin; first < end; first += kSamplesPerBlock) {
      const int64_t last = std::min(end, first + kSamplesPerBlock);
      double* s = block_norms.data();
      for (int64_t n = first; n < last; ++n)
        for (int64_t k = 0; k < K; ++k) {
          const T* row = contiguous_row(base + n * sN + k * sK, D, sD, buffer);
          *s++ = D == 0 ? 0.0 : row_norm(row, D, spec);
        }
      score_norms(block_norms.data(), last - first, K, llr, log_space, norm_dst + first * K, score_dst + first);
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> lpla_score(const at::Tensor& views, double p, double mean_in, double std_in,
                                              double mean_out, double std_out, bool log_space) {
  const auto out_dtype = result_dtype(views);
  const auto opts = views.options().dtype(out_dtype);
  auto norms = at::empty({views.size(0), views.size(1)}, opts);
  auto scores = at::empty({views.size(0)}, opts);
  if (views.size(0) == 0) return {norms, scores};
  const auto llr = GaussianLogRatio::make(mean_in, std_in, mean_out, std_out);
  const NormSpec spec(p);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, views.scalar_type(), "lpla_score_cpu",
                                  [&] { score_rows<scalar_t>(views, spec, llr, log_space, norms, scores); });
  return {norms, scores};
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

namespace {

// Cosines of one sample's K views in double, element by element: the path for float64 input
// and for samples holding NaN or Inf (whose cosines come out NaN as the reference's do).
template <class T>
void cosine_sample_exact(const T* sample, int64_t K, int64_t D, int64_t sK, int64_t sD, std::vector<double>& v,
                         std::vector<double>& inv_norm, result_t<T>* out_row) {
  v.resize(K * D);
  inv_norm.resize(K);
  for (int64_t k = 0; k < K; ++k) {
    const T* row = sample + k * sK;
    double* dst_row = v.data() + k * D;
    if (sD == 1)
      widen_row(row, D, dst_row);
    else
      for (int64_t i = 0; i < D; ++i) dst_row[i] = static_cast<double>(load1(row, i * sD));
    inv_norm[k] = 1.0 / std::max(std::sqrt(dot(dst_row, dst_row, D)), kCosineEps);
  }
  for (int64_t i = 0, idx = 0; i < K; ++i)
    for (int64_t j = i + 1; j < K; ++j, ++idx)
      out_row[idx] = static_cast<result_t<T>>(dot(v.data() + i * D, v.data() + j * D, D) * inv_norm[i] * inv_norm[j]);
}

// Float Gram matrix of a sample's views, for float, half and bfloat16 input. Each view is
// copied into an L1 buffer; a view whose max|x| lies outside [2^-40, 2^40] is scaled by a
// power of two (exact, and its cosines do not change) so that products can neither overflow
// nor lose the large terms to underflow. Dot products then run in 2 x 4 tiles of views
// (8 float accumulators, six loads per eight FMAs) and drain into double every kDrainBlocks
// blocks of 8 elements, which bounds the float rounding error of a cosine by about 1e-6.
constexpr int64_t kDrainBlocks = 16;
constexpr int kUnscaledExponent = 40;

struct GramBuffer {
  std::vector<float> views;  // Kp x Dp, zero-padded to Kp = K rounded up to 4, Dp to 8
  std::vector<int> exponent;  // view k was scaled by 2^-exponent[k]
  std::vector<double> gram;  // Kp x Kp, upper triangle used
  std::vector<double> inv_norm;  // K
};

// Copies view `row` into dst (Dp floats, scaled as above); false if it holds Inf (or a NaN
// that the max caught: the Gram diagonal catches the others).
template <class T>
bool scaled_view(const T* row, int64_t D, int64_t sD, float* dst, int& exponent) {
  const int64_t Dp = (D + 7) / 8 * 8;
  f32x8 top[4] = {};  // four independent max chains over [0, vectorized)
  int64_t i = 0;
  if (sD == 1) {
    for (; i + 32 <= D; i += 32) {
      prefetch_line_ahead(row + i);
      if constexpr (sizeof(T) == 4) prefetch_line_ahead(row + i + 16);
      for (int u = 0; u < 4; ++u) {
        const f32x8 v = load8(row + i + 8 * u);
        std::memcpy(dst + i + 8 * u, &v, sizeof v);
        top[u] = vmax(top[u], vabs(v));
      }
    }
  }
  const int64_t vectorized = i;
  for (; i < D; ++i) dst[i] = load1(row, i * sD);
  std::fill(dst + D, dst + Dp, 0.0f);
  float max_abs = 0.0f;
  for (int64_t j = vectorized; j < D; ++j) max_abs = std::max(max_abs, std::fabs(dst[j]));
  const f32x8 t = vmax(vmax(top[0], top[1]), vmax(top[2], top[3]));
  for (int l = 0; l < 8; ++l) max_abs = std::max(max_abs, t[l]);
  if (!std::isfinite(max_abs)) return false;
  exponent = 0;
  if (max_abs == 0.0f) return true;
  std::frexp(max_abs, &exponent);
  if (std::abs(exponent) <= kUnscaledExponent) {
    exponent = 0;
    return true;
  }
  // Two steps, each a power of two within float range (2^-exponent alone may not be).
  const f32x8 s1 = splat8(std::ldexp(1.0f, -exponent / 2)), s2 = splat8(std::ldexp(1.0f, -exponent + exponent / 2));
  for (int64_t j = 0; j < Dp; j += 8) {
    const f32x8 v = load8(dst + j) * s1 * s2;
    std::memcpy(dst + j, &v, sizeof v);
  }
  return true;
}

// Prefetches [p, end) one cache line per step: spread over the dot products of one sample, it
// brings in the next sample while this one computes (the hardware prefetcher runs only a few
// lines ahead of the loads, so memory would otherwise idle during the arithmetic).
struct PrefetchCursor {
  const char* p = nullptr;
  const char* end = nullptr;
  void step() {
    if (p < end) {
      __builtin_prefetch(p);
      p += 64;
    }
  }
};

// gram[a][b] = sum_d views[a][d] * views[b][d] for a in {i, i+1}, b in {j, .., j+3}.
inline void gram_tile(const float* views, int64_t Dp, int64_t i, int64_t j, int64_t Kp, double* gram,
                      PrefetchCursor& next) {
  const float* a0 = views + i * Dp;
  const float* a1 = a0 + Dp;
  const float* b[4] = {views + j * Dp, views + (j + 1) * Dp, views + (j + 2) * Dp, views + (j + 3) * Dp};
  f64x4 total[2][4][2] = {};
  for (int64_t start = 0; start < Dp; start += 8 * kDrainBlocks) {
    const int64_t stop = std::min(Dp, start + 8 * kDrainBlocks);
    f32x8 acc[2][4] = {};
    for (int64_t d = start; d < stop; d += 8) {
      next.step();
      const f32x8 x0 = load8(a0 + d), x1 = load8(a1 + d);
      for (int c = 0; c < 4; ++c) {
        const f32x8 y = load8(b[c] + d);
        acc[0][c] += x0 * y;
        acc[1][c] += x1 * y;
      }
    }
    for (int r = 0; r < 2; ++r)
      for (int c = 0; c < 4; ++c) {
        total[r][c][0] += widen_low(acc[r][c]);
        total[r][c][1] += widen_high(acc[r][c]);
      }
  }
  for (int r = 0; r < 2; ++r)
    for (int c = 0; c < 4; ++c) gram[(i + r) * Kp + j + c] = hsum(total[r][c][0] + total[r][c][1]);
}

// Cosines of one float / half / bfloat16 sample; false (nothing written) if it holds NaN or Inf.
template <class T>
bool cosine_sample_fast(const T* sample, int64_t K, int64_t D, int64_t sK, int64_t sD, GramBuffer& buf,
                        PrefetchCursor next, result_t<T>* out_row) {
  const int64_t Kp = (K + 3) / 4 * 4, Dp = (D + 7) / 8 * 8;
  buf.views.resize(Kp * Dp);
  buf.exponent.assign(Kp, 0);
  buf.gram.resize(Kp * Kp);
  buf.inv_norm.resize(K);
  for (int64_t k = 0; k < K; ++k)
    if (!scaled_view(sample + k * sK, D, sD, buf.views.data() + k * Dp, buf.exponent[k])) return false;
  std::fill(buf.views.begin() + K * Dp, buf.views.end(), 0.0f);
  // Tiles that cover every (i, j >= i): rows in pairs, columns in fours from the pair's own four.
  for (int64_t i = 0; i < Kp; i += 2)
    for (int64_t j = i / 4 * 4; j < Kp; j += 4) gram_tile(buf.views.data(), Dp, i, j, Kp, buf.gram.data(), next);
  for (int64_t k = 0; k < K; ++k) {
    const double squared = buf.gram[k * Kp + k];
    if (!std::isfinite(squared)) return false;  // a NaN the max did not catch
    const double norm = buf.exponent[k] ? std::ldexp(std::sqrt(squared), buf.exponent[k]) : std::sqrt(squared);
    buf.inv_norm[k] = 1.0 / std::max(norm, kCosineEps);
  }
  for (int64_t i = 0, idx = 0; i < K; ++i)
    for (int64_t j = i + 1; j < K; ++j, ++idx) {
      const int e = buf.exponent[i] + buf.exponent[j];
      const double dot = e ? std::ldexp(buf.gram[i * Kp + j], e) : buf.gram[i * Kp + j];
      out_row[idx] = static_cast<result_t<T>>(dot * buf.inv_norm[i] * buf.inv_norm[j]);
    }
  return true;
}

template <class T>
void cosine_rows(const at::Tensor& views, at::Tensor& out) {
  const int64_t N = views.size(0), K = views.size(1), D = views.size(2);
  const int64_t sN = views.stride(0), sK = views.stride(1), sD = views.stride(2);
  const int64_t pairs = K * (K - 1) / 2;
  const T* base = views.const_data_ptr<T>();
  auto* dst = out.mutable_data_ptr<result_t<T>>();
  at::parallel_for(0, N, grain_rows(K * K * D / 2 + 1), [&](int64_t begin, int64_t end) {
    GramBuffer buf;
    std::vector<double> v, inv_norm;
    for (int64_t n = begin; n < end; ++n) {
      const T* sample = base + n * sN;
      auto* out_row = dst + n * pairs;
      if constexpr (!std::is_same_v<T, double>) {
        PrefetchCursor next;
        if (n + 1 < end && sD == 1 && sK == D) {  // the next sample is one contiguous block
          next.p = reinterpret_cast<const char*>(sample + sN);
          next.end = next.p + K * D * static_cast<int64_t>(sizeof(T));
        }
        if (cosine_sample_fast(sample, K, D, sK, sD, buf, next, out_row)) continue;
      }
      cosine_sample_exact(sample, K, D, sK, sD, v, inv_norm, out_row);
    }
  });
}

}  // namespace

at::Tensor view_cosine(const at::Tensor& views) {
  const auto out_dtype = result_dtype(views);
  const int64_t K = views.size(1);
  auto out = at::empty({views.size(0), K * (K - 1) / 2}, views.options().dtype(out_dtype));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, views.scalar_type(), "view_cosine_cpu",
                                  [&] { cosine_rows<scalar_t>(views, out); });
  return out;
}

}  // namespace LPLA_ISA
}  // namespace lpla_fast
