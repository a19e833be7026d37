// CPU kernel of view_cosine (the CPU side of csrc/cuda/view_cosine.cu).
// Part of kernels_impl.h, included inside its per-instruction-set namespace (no includes here).
#pragma once

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
// (8 float accumulators, six loads per eight FMAs) and drain into double every
// kDrainElements elements, which bounds the float rounding error of a cosine by about 1e-6.
// Every build sums in this order, so a cosine does not depend on the instruction set (16-lane
// tiles in the AVX-512 build were no faster here, and their other rounding moved the scores of
// attacks trained on the cosines).
constexpr int64_t kDrainElements = 128;
constexpr int kUnscaledExponent = 40;
constexpr int64_t kGramPad = 8;

inline int64_t gram_padded(int64_t D) { return (D + kGramPad - 1) / kGramPad * kGramPad; }

struct GramBuffer {
  std::vector<float> views;  // Kp x Dp, zero-padded to Kp = K rounded up to 4, Dp to kGramPad
  std::vector<int> exponent;  // view k was scaled by 2^-exponent[k]
  std::vector<double> gram;  // Kp x Kp, upper triangle used
  std::vector<double> inv_norm;  // K
};

// Copies view `row` into dst (Dp floats, scaled as above); false if it holds Inf (or a NaN
// that the max caught: the Gram diagonal catches the others).
template <class T>
bool scaled_view(const T* row, int64_t D, int64_t sD, float* dst, int& exponent) {
  const int64_t Dp = gram_padded(D);
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

// gram[a][b] = sum_{d < Dp} views[a][d] * views[b][d] for a in {i, i+1}, b in {j, .., j+3}; row
// r of views starts at views + r * stride.
inline void gram_tile(const float* views, int64_t stride, int64_t Dp, int64_t i, int64_t j, int64_t Kp,
                      double* gram, PrefetchCursor& next) {
  const float* a0 = views + i * stride;
  const float* a1 = a0 + stride;
  const float* b[4] = {views + j * stride, views + (j + 1) * stride, views + (j + 2) * stride,
                       views + (j + 3) * stride};
  f64x4 total[2][4][2] = {};
  for (int64_t start = 0; start < Dp; start += kDrainElements) {
    const int64_t stop = std::min(Dp, start + kDrainElements);
    f32x8 acc[2][4] = {};
    for (int64_t d = start; d < stop; d += 8) {
      next.step();
      const f32x8 x0 = load8(a0 + d), x1 = load8(a1 + d);
      for (int c = 0; c < 4; ++c) {
        const f32x8 y = load8(b[c] + d);
        acc[0][c] = fmadd(x0, y, acc[0][c]);
        acc[1][c] = fmadd(x1, y, acc[1][c]);
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

// Tiles that cover every (i, j >= i) of a Kp x Kp Gram matrix: rows in pairs, columns in fours
// from the pair's own four.
inline void gram_tiles(const float* views, int64_t stride, int64_t Dp, int64_t Kp, double* gram,
                       PrefetchCursor& next) {
  for (int64_t i = 0; i < Kp; i += 2)
    for (int64_t j = i / 4 * 4; j < Kp; j += 4) gram_tile(views, stride, Dp, i, j, Kp, gram, next);
}

// The Gram matrix straight from a float sample's own rows, without the copy into the buffer,
// where they fill whole tiles (K % 4 == 0, D % kGramPad == 0, contiguous elements). Kept only
// if every squared norm lies in [2^-80, 2^80] (NaN fails too): then every |x| <= 2^40, no
// product overflowed, and what underflow can lose is below 2^-38 of a cosine. Else false, and
// the caller scales copies (scaled_view).
template <class T>
bool direct_gram(const T* sample, int64_t K, int64_t D, int64_t sK, int64_t sD, GramBuffer& buf,
                 PrefetchCursor& next) {
  if constexpr (!std::is_same_v<T, float>) {
    return false;
  } else {
    if (sD != 1 || K % 4 || D % kGramPad) return false;
    gram_tiles(sample, sK, D, K, buf.gram.data(), next);
    for (int64_t k = 0; k < K; ++k) {
      const double squared = buf.gram[k * K + k];
      if (!(squared >= 0x1p-80 && squared <= 0x1p80)) return false;
    }
    return true;
  }
}

// Cosines of one float / half / bfloat16 sample; false (nothing written) if it holds NaN or Inf.
template <class T>
bool cosine_sample_fast(const T* sample, int64_t K, int64_t D, int64_t sK, int64_t sD, GramBuffer& buf,
                        PrefetchCursor next, result_t<T>* out_row) {
  const int64_t Kp = (K + 3) / 4 * 4, Dp = gram_padded(D);
  buf.exponent.assign(Kp, 0);
  buf.gram.resize(Kp * Kp);
  buf.inv_norm.resize(K);
  if (!direct_gram(sample, K, D, sK, sD, buf, next)) {
    buf.views.resize(Kp * Dp);
    for (int64_t k = 0; k < K; ++k)
      if (!scaled_view(sample + k * sK, D, sD, buf.views.data() + k * Dp, buf.exponent[k])) return false;
    std::fill(buf.views.begin() + K * Dp, buf.views.end(), 0.0f);
    gram_tiles(buf.views.data(), Dp, Dp, Kp, buf.gram.data(), next);
  }
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
