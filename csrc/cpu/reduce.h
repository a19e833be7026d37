// Row reductions of the CPU kernels (the CPU side of csrc/cuda/reduce.cuh). A row is
// processed in blocks of 16 elements: read as float (double stays double), mapped to the
// terms of the reduction and summed in four independent double vectors. The last partial
// block is zero-padded, and every term used here maps 0 to 0.
// Part of kernels_impl.h, included inside its per-instruction-set namespace (no includes here).
#pragma once

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
// float terms did not overflow or underflow. Two blocks per step into four accumulators: each
// accumulator's chain of 4-cycle adds bounds the loop, and with two (one block per step) a
// 1 KiB fp32 row took 64 cycles of adds alone (measured in L2, one thread: 35 GB/s for p = 2
// against 43 for torch's vector_norm; too slow to hide under two threads' memory reads).
template <class T, class Term>
inline double sum_float_terms(const T* x, int64_t n, Term term) {
  f64x4 d0{}, d1{}, d2{}, d3{};
  f32x8 f0{}, f1{}, f2{}, f3{};
  auto flush = [&] {
    f0 += f2;
    f1 += f3;
    d0 += widen_low(f0);
    d1 += widen_high(f0);
    d2 += widen_low(f1);
    d3 += widen_high(f1);
    f0 = f1 = f2 = f3 = f32x8{};
  };
  int64_t i = 0;
  int pending = 0;
  for (; i + 2 * kBlock <= n; i += 2 * kBlock) {
    prefetch_line_ahead(x + i);
    prefetch_line_ahead(x + i + kBlock);
    f32x8 lo, hi;
    load16(x + i, lo, hi);
    f0 += term(lo);
    f1 += term(hi);
    load16(x + i + kBlock, lo, hi);
    f2 += term(lo);
    f3 += term(hi);
    if (++pending == kFloatBlocksPerFlush / 2) {
      flush();
      pending = 0;
    }
  }
  for_each_block(x + i, n - i, [&](const T* b) {  // the last block or two (zero-padded)
    f32x8 lo, hi;
    load16(b, lo, hi);
    f0 += term(lo);
    f1 += term(hi);
  });
  flush();
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
