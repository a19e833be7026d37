// Vectorized row primitives of the CPU kernels, on GCC/Clang vector extensions.
//
// Included by kernels_impl.h inside its per-instruction-set namespace (so no includes
// here). A row is processed in blocks of 16 elements: read as float (half and bfloat16
// converted on load; double stays double), mapped to the terms of the reduction and
// summed in four independent double vectors. The last partial block is zero-padded, and
// every term used here maps 0 to 0. With AVX2 each 8-float vector is one register; the
// baseline build splits it into two SSE registers.

typedef float f32x8 __attribute__((vector_size(32)));
typedef float f32x4 __attribute__((vector_size(16)));
typedef double f64x4 __attribute__((vector_size(32)));
typedef int32_t i32x8 __attribute__((vector_size(32)));
typedef uint32_t u32x8 __attribute__((vector_size(32)));
typedef int64_t i64x4 __attribute__((vector_size(32)));
typedef uint16_t u16x8 __attribute__((vector_size(16)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));

constexpr int64_t kBlock = 16;

inline f32x8 splat8(float v) { return f32x8{} + v; }
inline f64x4 splat4(double v) { return f64x4{} + v; }

// --- loads -------------------------------------------------------------------------------

inline f32x8 load8(const float* x) {
  f32x8 v;
  std::memcpy(&v, x, sizeof v);
  return v;
}
inline f32x8 load8(const c10::Half* x) {
#if defined(LPLA_X86_AVX2)
  return (f32x8)_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x)));
#else
  // Bit conversion that vectorizes without F16C: shifting exponent and mantissa into
  // place and multiplying by 2^112 re-biases normal and subnormal halves exactly.
  u16x8 h;
  std::memcpy(&h, x, sizeof h);
  const u32x8 bits = __builtin_convertvector(h, u32x8);
  const u32x8 body = (bits & 0x7fffu) << 13;
  const f32x8 finite = reinterpret_cast<f32x8>(body) * 0x1p112f;
  const f32x8 special = reinterpret_cast<f32x8>(body | 0x7f800000u);  // Inf and NaN
  const f32x8 magnitude = body >= (0x7c00u << 13) ? special : finite;
  return reinterpret_cast<f32x8>(reinterpret_cast<u32x8>(magnitude) | ((bits & 0x8000u) << 16));
#endif
}
inline f32x8 load8(const c10::BFloat16* x) {
  u16x8 h;
  std::memcpy(&h, x, sizeof h);
  return reinterpret_cast<f32x8>(__builtin_convertvector(h, u32x8) << 16);
}
// 16 consecutive elements as two float vectors, in an order that only reductions may use:
// bfloat16 is widened by interleaving zeros within each 128-bit lane (no lane crossing).
inline void load16(const float* x, f32x8& a, f32x8& b) {
  a = load8(x);
  b = load8(x + 8);
}
inline void load16(const c10::Half* x, f32x8& a, f32x8& b) {
  a = load8(x);
  b = load8(x + 8);
}
inline void load16(const c10::BFloat16* x, f32x8& a, f32x8& b) {
  u16x16 v;
  std::memcpy(&v, x, sizeof v);
  const u16x16 z{};
  a = reinterpret_cast<f32x8>(__builtin_shufflevector(z, v, 0, 16, 1, 17, 2, 18, 3, 19, 8, 24, 9, 25, 10, 26, 11, 27));
  b = reinterpret_cast<f32x8>(__builtin_shufflevector(z, v, 4, 20, 5, 21, 6, 22, 7, 23, 12, 28, 13, 29, 14, 30, 15, 31));
}

inline f64x4 load4(const double* x) {
  f64x4 v;
  std::memcpy(&v, x, sizeof v);
  return v;
}

inline f64x4 load4_widened(const float* x) {
  f32x4 v;
  std::memcpy(&v, x, sizeof v);
  return __builtin_convertvector(v, f64x4);
}

inline f64x4 widen_low(f32x8 v) { return __builtin_convertvector(__builtin_shufflevector(v, v, 0, 1, 2, 3), f64x4); }
inline f64x4 widen_high(f32x8 v) { return __builtin_convertvector(__builtin_shufflevector(v, v, 4, 5, 6, 7), f64x4); }

// Scalar loads, for the cold paths.
inline float load1(const float* x, int64_t i) { return x[i]; }
inline double load1(const double* x, int64_t i) { return x[i]; }
inline float load1(const c10::Half* x, int64_t i) { return static_cast<float>(x[i]); }
inline float load1(const c10::BFloat16* x, int64_t i) { return static_cast<float>(x[i]); }

inline f32x8 vabs(f32x8 v) { return reinterpret_cast<f32x8>(reinterpret_cast<i32x8>(v) & 0x7fffffff); }
inline f64x4 vabs(f64x4 v) { return reinterpret_cast<f64x4>(reinterpret_cast<i64x4>(v) & INT64_MAX); }

inline double hsum(f64x4 v) { return (v[0] + v[1]) + (v[2] + v[3]); }

// How far ahead of the block being read to prefetch. The hardware streamer stops at each
// 4 KiB page boundary and restarts slowly; asking for the line 2 KiB ahead keeps the next
// page's reads in flight (measured: lp_norm 75 % -> 90-100 % of x.sum() bandwidth on the
// 2-core CPU machine; 1 KiB gained less, 4 KiB the same). A prefetch never faults, so
// reading past the end of x is harmless.
constexpr int64_t kPrefetchBytes = 2048;

// The cache line kPrefetchBytes ahead of x: called once per 64 bytes (or less) a loop reads.
inline void prefetch_line_ahead(const void* x) { __builtin_prefetch(static_cast<const char*>(x) + kPrefetchBytes); }

// The cache lines of [x, x + bytes), kPrefetchBytes ahead, for loops over short rows that
// do not go through for_each_block (consecutive rows continue each other's prefetches).
inline void prefetch_ahead(const void* x, int64_t bytes) {
  for (int64_t offset = 0; offset < bytes; offset += 64) prefetch_line_ahead(static_cast<const char*>(x) + offset);
}

// body(block) for each 16-element block of x; the last partial block is a zero-padded copy.
template <class T, class Body>
inline void for_each_block(const T* x, int64_t n, Body&& body) {
  int64_t i = 0;
  for (; i + kBlock <= n; i += kBlock) {
    prefetch_line_ahead(x + i);
    body(x + i);
  }
  if (i < n) {
    alignas(32) T pad[kBlock];
    std::memset(static_cast<void*>(pad), 0, sizeof pad);
    std::memcpy(static_cast<void*>(pad), x + i, (n - i) * sizeof(T));
    body(pad);
  }
}

// --- sums ----------------------------------------------------------------------------------

// sum_i term(x_i), term applied in double (f64x4 -> f64x4).
template <class T, class Term>
inline double sum_terms(const T* x, int64_t n, Term term) {
  f64x4 a0{}, a1{}, a2{}, a3{};
  for_each_block(x, n, [&](const T* b) {
    if constexpr (std::is_same_v<T, double>) {
      a0 += term(load4(b));
      a1 += term(load4(b + 4));
      a2 += term(load4(b + 8));
      a3 += term(load4(b + 12));
    } else if constexpr (std::is_same_v<T, float>) {
      a0 += term(load4_widened(b));
      a1 += term(load4_widened(b + 4));
      a2 += term(load4_widened(b + 8));
      a3 += term(load4_widened(b + 12));
    } else {
      const f32x8 lo = load8(b), hi = load8(b + 8);
      a0 += term(widen_low(lo));
      a1 += term(widen_high(lo));
      a2 += term(widen_low(hi));
      a3 += term(widen_high(hi));
    }
  });
  return hsum((a0 + a1) + (a2 + a3));
}

// Blocks summed in float before their partial sums move to double: few conversions in the
// hot loop, and each float lane adds only 16 terms (relative error ~1e-6 at worst).
constexpr int kFloatBlocksPerFlush = 16;

// sum_i term(x_i), term applied in float (f32x8 -> f32x8); the caller checks that the
// float terms did not overflow or underflow.
template <class T, class Term>
inline double sum_float_terms(const T* x, int64_t n, Term term) {
  f64x4 d0{}, d1{}, d2{}, d3{};
  f32x8 f0{}, f1{};
  int pending = 0;
  for_each_block(x, n, [&](const T* b) {
    f32x8 lo, hi;
    load16(b, lo, hi);
    f0 += term(lo);
    f1 += term(hi);
    if (++pending == kFloatBlocksPerFlush) {
      d0 += widen_low(f0);
      d1 += widen_high(f0);
      d2 += widen_low(f1);
      d3 += widen_high(f1);
      f0 = f32x8{};
      f1 = f32x8{};
      pending = 0;
    }
  });
  d0 += widen_low(f0);
  d1 += widen_high(f0);
  d2 += widen_low(f1);
  d3 += widen_high(f1);
  return hsum((d0 + d1) + (d2 + d3));
}

// sum_i x_i of a short row (a pooling plane such as 7x7) in float: no zero-padded block
// copy and no flushes, whose fixed costs would dominate a few dozen elements.
template <class T>
inline double short_row_sum(const T* x, int64_t n) {
  f32x8 a{}, b{};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    a += load8(x + i);
    b += load8(x + i + 8);
  }
  if (i + 8 <= n) {
    a += load8(x + i);
    i += 8;
  }
  a += b;
  float tail = 0.0f;
  for (; i < n; ++i) tail += load1(x, i);
  return hsum(widen_low(a) + widen_high(a)) + tail;
}

// max_i |x_i|, NaN when the row holds a NaN. For non-negative floats the bit patterns order
// like the values, with NaN above Inf, so one integer max per vector finds both (no
// NaN probe and no rescan).
template <class T>
inline float abs_max(const T* x, int64_t n) {
  i32x8 best0{}, best1{};
  for_each_block(x, n, [&](const T* b) {
    f32x8 lo, hi;
    load16(b, lo, hi);
    const i32x8 a = reinterpret_cast<i32x8>(lo) & 0x7fffffff, c = reinterpret_cast<i32x8>(hi) & 0x7fffffff;
    best0 = a > best0 ? a : best0;
    best1 = c > best1 ? c : best1;
  });
  best0 = best1 > best0 ? best1 : best0;
  int32_t m = 0;
  for (int l = 0; l < 8; ++l) m = best0[l] > m ? best0[l] : m;
  if (m > 0x7f800000) return std::numeric_limits<float>::quiet_NaN();
  float v;
  std::memcpy(&v, &m, sizeof v);
  return v;
}

inline double abs_max(const double* x, int64_t n) {
  f64x4 best0{}, best1{}, probe{};
  for_each_block(x, n, [&](const double* b) {
    const f64x4 v0 = vabs(load4(b)), v1 = vabs(load4(b + 4)), v2 = vabs(load4(b + 8)), v3 = vabs(load4(b + 12));
    best0 = v0 > best0 ? v0 : best0;
    best1 = v1 > best1 ? v1 : best1;
    best0 = v2 > best0 ? v2 : best0;
    best1 = v3 > best1 ? v3 : best1;
    probe += (v0 * 0.0 + v1 * 0.0) + (v2 * 0.0 + v3 * 0.0);
  });
  best0 = best1 > best0 ? best1 : best0;
  double m = 0.0;
  for (int l = 0; l < 4; ++l) m = best0[l] > m ? best0[l] : m;
  if (std::isnan(hsum(probe)))
    for (int64_t i = 0; i < n; ++i)
      if (std::isnan(x[i])) return std::numeric_limits<double>::quiet_NaN();
  return m;
}

// --- r^p for r in [0, 1] ---------------------------------------------------------------------
// exp2(p log2 r) in float, branch-free. The polynomials are minimax fits just below float
// precision: log2 to 3e-8 absolute (a final norm error of ln2 * 3e-8 relative, whatever p)
// and exp2 to 8e-8 relative. r below FLT_MIN contributes (about) 0, see pow_unit.

// max(a, b) in one instruction (the vector ternary compiles to compare and blend).
inline f32x8 vmax(f32x8 a, f32x8 b) {
#if defined(LPLA_X86_AVX2)
  return (f32x8)_mm256_max_ps((__m256)a, (__m256)b);
#elif defined(__SSE__)
  const f32x4 lo = (f32x4)_mm_max_ps((__m128)__builtin_shufflevector(a, a, 0, 1, 2, 3),
                                     (__m128)__builtin_shufflevector(b, b, 0, 1, 2, 3));
  const f32x4 hi = (f32x4)_mm_max_ps((__m128)__builtin_shufflevector(a, a, 4, 5, 6, 7),
                                     (__m128)__builtin_shufflevector(b, b, 4, 5, 6, 7));
  return __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7);
#else
  return a > b ? a : b;
#endif
}

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

inline f32x8 vsqrt(f32x8 v) {
#if defined(LPLA_X86_AVX2)
  return (f32x8)_mm256_sqrt_ps((__m256)v);
#elif defined(__SSE__)
  const f32x4 lo = (f32x4)_mm_sqrt_ps((__m128)__builtin_shufflevector(v, v, 0, 1, 2, 3));
  const f32x4 hi = (f32x4)_mm_sqrt_ps((__m128)__builtin_shufflevector(v, v, 4, 5, 6, 7));
  return __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7);
#else
  for (int l = 0; l < 8; ++l) v[l] = std::sqrt(v[l]);
  return v;
#endif
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

// --- other row helpers -------------------------------------------------------------------------

// dst[i] = double(x[i]) for a contiguous row.
template <class T>
inline void widen_row(const T* x, int64_t n, double* dst) {
  int64_t i = 0;
  if constexpr (std::is_same_v<T, double>) {
    std::memcpy(dst, x, n * sizeof(double));
    return;
  } else if constexpr (std::is_same_v<T, float>) {
    for (; i + 4 <= n; i += 4) {
      const f64x4 v = load4_widened(x + i);
      std::memcpy(dst + i, &v, sizeof v);
    }
    for (; i < n; ++i) dst[i] = static_cast<double>(x[i]);
  } else {
    for (; i + 8 <= n; i += 8) {
      const f32x8 v = load8(x + i);
      const f64x4 lo = widen_low(v), hi = widen_high(v);
      std::memcpy(dst + i, &lo, sizeof lo);
      std::memcpy(dst + i + 4, &hi, sizeof hi);
    }
    for (; i < n; ++i) dst[i] = static_cast<double>(load1(x, i));
  }
}

// sums[i] += float(x[0][i]) + ... + float(x[M-1][i]) for M contiguous rows (float, half,
// bfloat16), in float. kPrefetch: rows streamed from memory (not for rows already in cache,
// where the prefetches only take issue slots).
template <int M, bool kPrefetch = true, class T>
inline void accumulate_rows(const T* const* x, int64_t n, float* sums) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    f32x8 a0, a1;
    std::memcpy(&a0, sums + i, sizeof a0);
    std::memcpy(&a1, sums + i + 8, sizeof a1);
    for (int j = 0; j < M; ++j) {
      if constexpr (kPrefetch) prefetch_line_ahead(x[j] + i);
      a0 += load8(x[j] + i);
      a1 += load8(x[j] + i + 8);
    }
    std::memcpy(sums + i, &a0, sizeof a0);
    std::memcpy(sums + i + 8, &a1, sizeof a1);
  }
  for (; i + 8 <= n; i += 8) {
    f32x8 acc;
    std::memcpy(&acc, sums + i, sizeof acc);
    for (int j = 0; j < M; ++j) acc += load8(x[j] + i);
    std::memcpy(sums + i, &acc, sizeof acc);
  }
  for (; i < n; ++i)
    for (int j = 0; j < M; ++j) sums[i] += load1(x[j], i);
}

// sums[i] += double(partial[i]), then partial[i] = 0. Returns false when some partial[i] is
// not finite (float overflow, or NaN / Inf in the data): x * 0 is 0 unless x is Inf or NaN.
inline bool drain_partial(float* partial, int64_t n, double* sums) {
  f32x8 probe{};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const f32x8 v = load8(partial + i);
    probe += v * 0.0f;
    const f64x4 lo = load4(sums + i) + widen_low(v), hi = load4(sums + i + 4) + widen_high(v);
    std::memcpy(sums + i, &lo, sizeof lo);
    std::memcpy(sums + i + 4, &hi, sizeof hi);
  }
  float tail = 0.0f;
  for (; i < n; ++i) {
    tail += partial[i] * 0.0f;
    sums[i] += static_cast<double>(partial[i]);
  }
  std::fill(partial, partial + n, 0.0f);
  return std::isfinite(hsum(widen_low(probe) + widen_high(probe)) + tail);
}

// sums[i] += double(x[i]) for a contiguous row (each element widened exactly, then added).
template <class T>
inline void accumulate_row(const T* x, int64_t n, double* sums) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    f64x4 lo, hi;
    if constexpr (std::is_same_v<T, double>) {
      lo = load4(x + i);
      hi = load4(x + i + 4);
    } else if constexpr (std::is_same_v<T, float>) {
      lo = load4_widened(x + i);
      hi = load4_widened(x + i + 4);
    } else {
      const f32x8 v = load8(x + i);
      lo = widen_low(v);
      hi = widen_high(v);
    }
    lo += load4(sums + i);
    hi += load4(sums + i + 4);
    std::memcpy(sums + i, &lo, sizeof lo);
    std::memcpy(sums + i + 4, &hi, sizeof hi);
  }
  for (; i < n; ++i) sums[i] += static_cast<double>(load1(x, i));
}

// sum_i a_i b_i of two double rows.
inline double dot(const double* a, const double* b, int64_t n) {
  f64x4 s0{}, s1{}, s2{}, s3{};
  int64_t i = 0;
  for (; i + kBlock <= n; i += kBlock) {
    s0 += load4(a + i) * load4(b + i);
    s1 += load4(a + i + 4) * load4(b + i + 4);
    s2 += load4(a + i + 8) * load4(b + i + 8);
    s3 += load4(a + i + 12) * load4(b + i + 12);
  }
  double tail = 0.0;
  for (; i < n; ++i) tail += a[i] * b[i];
  return hsum((s0 + s1) + (s2 + s3)) + tail;
}
