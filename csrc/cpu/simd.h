// Vector primitives of the CPU kernels, on GCC/Clang vector extensions: the vector types,
// loads (half and bfloat16 converted to float on load), prefetching and the block loop.
// With AVX2 each 8-float vector is one register; the baseline build splits it into two SSE
// registers.
// Part of kernels_impl.h, included inside its per-instruction-set namespace (no includes here).
#pragma once

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

// a * b + c, fused where the build has FMA (the compiler's ISO mode does not contract
// a * b + c by itself).
inline f32x8 fmadd(f32x8 a, f32x8 b, f32x8 c) {
#if defined(LPLA_X86_AVX2)
  return (f32x8)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
  return a * b + c;
#endif
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
