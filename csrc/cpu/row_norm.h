// The Lp-norm of one contiguous row, for every p and dtype, and r^p in float vectors.
//
// Float, half and bfloat16 rows sum their terms in float blocks moved to double every 256
// elements; a sum that may have over- or underflowed in float is recomputed in double, where
// |x|^4 of any float is a normal number. Double rows are rescaled by max|x| (as BLAS nrm2
// does) when needed, and non-integer p always works on |x| / max|x| in [0, 1].
// Part of kernels_impl.h, included inside its per-instruction-set namespace (no includes here).
#pragma once

// --- r^p for r in [0, 1] ---------------------------------------------------------------------
// exp2(p log2 r) in float, branch-free. The polynomials are minimax fits just below float
// precision: log2 to 3e-8 absolute (a final norm error of ln2 * 3e-8 relative, whatever p)
// and exp2 to 8e-8 relative. r below FLT_MIN contributes (about) 0, see pow_unit.

// log2(r) for r in [FLT_MIN, 1]; 0 gives exactly -127 and subnormals about -127.
inline f32x8 log2_unit(f32x8 r) {
  // r = 2^k m with m in [sqrt(1/2), sqrt(2)): subtracting the bits of sqrt(1/2) makes the
  // exponent field k directly, with no compare and select.
  const i32x8 bits = reinterpret_cast<i32x8>(r);
  const i32x8 k = (bits - 0x3f3504f3) >> 23;
  const f32x8 m = reinterpret_cast<f32x8>(bits - (k << 23));
  // log2 m = t S(t^2), t = (m - 1) / (m + 1) in [-0.172, 0.172].
  const f32x8 t = (m - 1.0f) / (m + 1.0f);
  const f32x8 t2 = t * t;
  const f32x8 s = 2.8853912893689335f + t2 * (0.961470808952959f + t2 * 0.5989738857107983f);
  return t * s + __builtin_convertvector(k, f32x8);
}

// 2^y for y <= 0 (y <= -127 gives 0).
inline f32x8 exp2_nonpositive(f32x8 y) {
  y = vmax(y, splat8(-127.0f));
  // Adding 1.5 * 2^23 + 127 rounds y to the integer n and leaves n + 127 in the low
  // mantissa bits, which shifted into the exponent field are 2^n (0 for n = -127).
  const f32x8 magic = splat8(12583039.0f);
  const f32x8 shifted = y + magic;
  const f32x8 f = y - (shifted - magic);  // [-0.5, 0.5]
  const f32x8 q =
      1.0000000716546849f +
      f * (0.6931469670647605f +
           f * (0.24022119723840046f +
                f * (0.055507132734977614f + f * (0.009675541334451691f + f * 0.0013276471992602875f))));
  return q * reinterpret_cast<f32x8>(reinterpret_cast<i32x8>(shifted) << 23);
}

// r^p for r in [0, 1]. log2_unit puts r below FLT_MIN in [-127, -126), so its term is at
// most about 2^(-126 p): for p >= 1 that is 0 or negligible next to the row's largest term
// (1), and only p < 1 needs the explicit zero.
template <bool kSmallP>
inline f32x8 pow_unit(f32x8 r, float p) {
  const f32x8 v = exp2_nonpositive(p * log2_unit(r));
  if constexpr (kSmallP) return r >= splat8(FLT_MIN) ? v : f32x8{};
  return v;
}

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
