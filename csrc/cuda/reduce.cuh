// Building blocks of the CUDA kernels: reading rows with 16-byte vector loads, reducing
// across a group of threads, and the Lp-norm of one row.
//
// Work layout: a block of kBlockThreads threads is cut into groups of G threads (G a power
// of two, 1..kBlockThreads); each group owns one row at a time and walks rows grid-stride.
// G is chosen per launch from the row length (group_size_for), so short rows get a thread
// or a few lanes each, typical embeddings get a warp or part of one, and very long rows
// get the whole block. Control flow is uniform within a group, which the reductions need.
#pragma once

#include <ATen/ATen.h>
// c10's CUDA headers, not ATen/cuda/CUDAContext.h: that one pulls in cuBLAS and cuSPARSE
// headers, which a minimal toolkit install lacks.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "common.h"

namespace lpla_fast {
namespace cuda {

constexpr int kBlockThreads = 256;
constexpr int kVecBytes = 16;
// Vectors each thread has in flight per step: enough independent loads to cover memory latency.
constexpr int kUnroll = 4;

// Rows of a tensor: row r starts at base + (r / inner) * outer_stride + (r % inner) * inner_stride
// and its D elements are contiguous. (inner = 1 for a plain matrix; inner = K for (N, K, D) views.)
template <typename scalar_t>
struct RowTable {
  const scalar_t* base;
  int64_t inner;
  int64_t outer_stride;
  int64_t inner_stride;

  __device__ __forceinline__ const scalar_t* row(int64_t r) const {
    // 64-bit division costs dozens of instructions per row; plain matrices skip it.
    if (inner == 1) return base + r * outer_stride;
    return base + (r / inner) * outer_stride + (r % inner) * inner_stride;
  }
};

// ---- conversions ------------------------------------------------------------------------

// All sums are taken in double. The build uses --use_fast_math, which turns a plain
// float -> double cast into cvt.ftz and flushes fp32 subnormals to zero; this conversion
// keeps them, so tiny rows still get their true (tiny) norm.
__device__ __forceinline__ double to_double(float v) {
  double r;
  asm("cvt.f64.f32 %0, %1;" : "=d"(r) : "f"(v));
  return r;
}
__device__ __forceinline__ double to_double(double v) { return v; }
// fp16 subnormals are normal fp32 numbers, and bf16 -> fp32 is exact, so these are exact.
__device__ __forceinline__ double to_double(c10::Half v) { return to_double(static_cast<float>(v)); }
__device__ __forceinline__ double to_double(c10::BFloat16 v) { return to_double(static_cast<float>(v)); }

// Results are stored through this for the same reason: a plain double -> float cast becomes
// cvt.rn.ftz and would flush a subnormal fp32 norm to zero.
template <typename out_t>
__device__ __forceinline__ out_t to_out(double v) {
  if constexpr (std::is_same_v<out_t, double>) {
    return v;
  } else {
    float r;
    asm("cvt.rn.f32.f64 %0, %1;" : "=f"(r) : "d"(v));
    return r;
  }
}

// |v| as an unsigned bit pattern. For non-negative IEEE numbers the bit patterns sort like
// the values and every NaN sorts above +Inf, so an integer max of these is a NaN-propagating
// max of |v| that no flush-to-zero mode can disturb (the p = inf path uses it).
__device__ __forceinline__ uint32_t abs_bits(float v) { return __float_as_uint(v) & 0x7fffffffu; }
__device__ __forceinline__ uint64_t abs_bits(double v) {
  return static_cast<uint64_t>(__double_as_longlong(v)) & 0x7fffffffffffffffull;
}
__device__ __forceinline__ uint32_t abs_bits(c10::Half v) { return v.x & 0x7fffu; }
__device__ __forceinline__ uint32_t abs_bits(c10::BFloat16 v) { return v.x & 0x7fffu; }

template <typename scalar_t>
using bits_type = std::conditional_t<std::is_same_v<scalar_t, double>, uint64_t, uint32_t>;

template <typename scalar_t>
__device__ __forceinline__ double from_abs_bits(bits_type<scalar_t> b) {
  if constexpr (std::is_same_v<scalar_t, double>) {
    return __longlong_as_double(static_cast<long long>(b));
  } else if constexpr (std::is_same_v<scalar_t, float>) {
    return to_double(__uint_as_float(b));
  } else {
    return to_double(scalar_t(static_cast<uint16_t>(b), scalar_t::from_bits()));
  }
}

// max that returns NaN when either side is NaN (fmax would drop it).
__device__ __forceinline__ double nan_max(double a, double b) { return (a > b || a != a) ? a : b; }

struct Plus {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};
struct Max {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const { return a > b ? a : b; }
};
struct NanMax {
  __device__ __forceinline__ double operator()(double a, double b) const { return nan_max(a, b); }
};

// ---- reductions across a group -----------------------------------------------------------

// Reduces v over the G threads of the calling thread's group and returns the result to all
// of them. G <= 32: butterfly shuffles limited to the group's lanes, so groups sharing a
// warp may diverge. G > 32: the group is the whole block (every thread must call).
template <typename T, typename Op>
__device__ __forceinline__ T group_allreduce(T v, int G, Op op) {
  const int lane = threadIdx.x & 31;
  const int width = G < 32 ? G : 32;
  const unsigned mask = width == 32 ? 0xffffffffu : (((1u << width) - 1u) << (lane & ~(width - 1)));
  for (int offset = width / 2; offset > 0; offset >>= 1) {
    v = op(v, __shfl_xor_sync(mask, v, offset, width));
  }
  if (G > 32) {
    __shared__ T warp_partials[kBlockThreads / 32];
    __syncthreads();  // the previous call's readers are done with warp_partials
    if (lane == 0) warp_partials[threadIdx.x >> 5] = v;
    __syncthreads();
    v = warp_partials[0];
    for (int w = 1; w < G / 32; ++w) v = op(v, warp_partials[w]);
  }
  return v;
}

// Threads per row for rows of D elements of elem_size bytes: about kUnroll vectors per
// thread, at most a warp; rows of 2048+ vectors get the whole block.
inline int group_size_for(int64_t D, int64_t elem_size) {
  const int64_t vecs = (D * elem_size + kVecBytes - 1) / kVecBytes;
  if (vecs >= 2048) return kBlockThreads;
  int G = 1;
  while (G < 32 && G * kUnroll < vecs) G *= 2;
  return G;
}

// Blocks for `items` work items taken G threads at a time: enough to fill the device a few
// times over; the kernels walk the rest grid-stride.
inline int blocks_for(int64_t items, int G) {
  const int64_t groups_per_block = kBlockThreads / G;
  const int64_t needed = (items + groups_per_block - 1) / groups_per_block;
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, c10::cuda::current_device()));
  const int64_t cap = static_cast<int64_t>(sms) * 32;
  return static_cast<int>(std::max<int64_t>(1, std::min(needed, cap)));
}

// ---- reading rows ------------------------------------------------------------------------

template <typename scalar_t>
struct alignas(kVecBytes) Vec {
  static constexpr int kSize = kVecBytes / sizeof(scalar_t);
  scalar_t v[kSize];
};

template <typename scalar_t>
__device__ __forceinline__ Vec<scalar_t> load_vec(const scalar_t* p) {
  // One 128-bit load; the caller guarantees 16-byte alignment.
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  Vec<scalar_t> out;
  static_assert(sizeof(out) == sizeof(raw), "Vec must be 16 bytes");
  memcpy(&out, &raw, sizeof(raw));
  return out;
}

// Elements before the first 16-byte boundary of a row (at most D).
template <typename scalar_t>
__device__ __forceinline__ int64_t unaligned_head(const scalar_t* row, int64_t D) {
  const auto misalign = reinterpret_cast<uintptr_t>(row) % kVecBytes;
  const int64_t head = misalign == 0 ? 0 : static_cast<int64_t>((kVecBytes - misalign) / sizeof(scalar_t));
  return head < D ? head : D;
}

// Calls f(element) for the elements of row[0, D) that belong to thread t of a group of G:
// a scalar head up to the first 16-byte boundary, 16-byte vectors (kUnroll in flight per
// thread), then a scalar tail. Rows may start anywhere (element-aligned).
template <typename scalar_t, typename F>
__device__ __forceinline__ void for_each_in_row(const scalar_t* row, int64_t D, int t, int G, F&& f) {
  constexpr int kV = Vec<scalar_t>::kSize;
  const int64_t head = unaligned_head(row, D);
  for (int64_t i = t; i < head; i += G) f(row[i]);
  const scalar_t* body = row + head;
  const int64_t nvec = (D - head) / kV;
  int64_t i = t;
  for (; i + (kUnroll - 1) * G < nvec; i += kUnroll * G) {
    Vec<scalar_t> v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) v[u] = load_vec(body + (i + u * G) * kV);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
      for (int j = 0; j < kV; ++j) f(v[u].v[j]);
    }
  }
  for (; i < nvec; i += G) {
    const Vec<scalar_t> v = load_vec(body + i * kV);
#pragma unroll
    for (int j = 0; j < kV; ++j) f(v.v[j]);
  }
  for (int64_t k = head + nvec * kV + t; k < D; k += G) f(row[k]);
}

// Like for_each_in_row over two rows at once, f(a[i], b[i]); vector loads when the two
// rows share their alignment (always so for contiguous (N, K, D) views with 16-byte rows).
template <typename scalar_t, typename F>
__device__ __forceinline__ void for_each_in_rows(const scalar_t* a, const scalar_t* b, int64_t D, int t, int G,
                                                 F&& f) {
  constexpr int kV = Vec<scalar_t>::kSize;
  const bool same_alignment = reinterpret_cast<uintptr_t>(a) % kVecBytes == reinterpret_cast<uintptr_t>(b) % kVecBytes;
  const int64_t head = same_alignment ? unaligned_head(a, D) : D;
  for (int64_t i = t; i < head; i += G) f(a[i], b[i]);
  const int64_t nvec = (D - head) / kV;
  for (int64_t i = t; i < nvec; i += G) {
    const Vec<scalar_t> va = load_vec(a + head + i * kV);
    const Vec<scalar_t> vb = load_vec(b + head + i * kV);
#pragma unroll
    for (int j = 0; j < kV; ++j) f(va.v[j], vb.v[j]);
  }
  for (int64_t k = head + nvec * kV + t; k < D; k += G) f(a[k], b[k]);
}

// ---- the Lp-norm of one row ----------------------------------------------------------------

// Which path a kernel is compiled for: p = 1, 2, 3, 4 (the exact integer powers),
// kGenericP (any other finite p, given at run time) or kInfP (max |x|).
constexpr int kGenericP = 0;
constexpr int kInfP = -1;

template <int P>
__device__ __forceinline__ double pow_p(double a, double p) {
  if constexpr (P == 1) return a;
  else if constexpr (P == 2) return a * a;
  else if constexpr (P == 3) return a * a * a;
  else if constexpr (P == 4) { const double a2 = a * a; return a2 * a2; }
  else return pow(a, p);
}

template <int P>
__device__ __forceinline__ double root_p(double s, double p) {
  if constexpr (P == 1) return s;
  else if constexpr (P == 2) return sqrt(s);
  else if constexpr (P == 3) return cbrt(s);
  else if constexpr (P == 4) return sqrt(sqrt(s));
  else return pow(s, 1.0 / p);
}

// A sum of |x|^p at least this large lost nothing that matters to underflow: each
// underflowed term is below 2^-1022, and D of them are a relative 2^-122 * D at most.
constexpr double kMinTrustedSum = 0x1p-900;

// The BLAS-nrm2-style path, safe for any values: max|x| first, then the sum of
// (|x| / max|x|)^p, then max|x| * sum^(1/p). Two reads of the row (the second mostly from
// cache). Dividing by max|x| itself (as the reference and the CPU kernels do) keeps the
// largest term at exactly 1, so the sum cannot underflow however large p is; a power of two
// just above max|x| would leave that term as small as 2^-p, which is 0 for p > 1074.
// Dividing rather than multiplying by 1 / max|x|, which overflows for a subnormal max.
template <int P, typename scalar_t>
__device__ double row_norm_rescaled(const scalar_t* row, int64_t D, double p, int t, int G) {
  double m = 0.0;
  for_each_in_row(row, D, t, G, [&](scalar_t v) { m = nan_max(m, fabs(to_double(v))); });
  m = group_allreduce(m, G, NanMax{});
  // NaN row -> NaN, Inf row -> Inf, zero (or empty) row -> 0.
  if (m != m || isinf(m) || m == 0.0) return m;
  double s = 0.0;
  for_each_in_row(row, D, t, G, [&](scalar_t v) { s += pow_p<P>(fabs(to_double(v)) / m, p); });
  s = group_allreduce(s, G, Plus{});
  return m * root_p<P>(s, p);
}

// ||row||_p in double, returned to every thread of the group.
// p = 1..4: one pass summing |x|^p in double, which is exact in range for fp32/fp16/bf16
// input; a sum that overflowed, may have underflowed, or met Inf/NaN falls back to the
// rescaled path (for fp64 input with huge or tiny values, and for non-finite rows).
template <int P, typename scalar_t>
__device__ __forceinline__ double row_norm(const scalar_t* row, int64_t D, double p, int t, int G) {
  if constexpr (P == kInfP) {
    bits_type<scalar_t> m = 0;
    for_each_in_row(row, D, t, G, [&](scalar_t v) {
      const bits_type<scalar_t> b = abs_bits(v);
      m = b > m ? b : m;
    });
    return from_abs_bits<scalar_t>(group_allreduce(m, G, Max{}));
  } else {
    if constexpr (P != kGenericP) {
      double s = 0.0;
      for_each_in_row(row, D, t, G, [&](scalar_t v) { s += pow_p<P>(fabs(to_double(v)), p); });
      s = group_allreduce(s, G, Plus{});
      if (isfinite(s) && s >= kMinTrustedSum) return root_p<P>(s, p);
    }
    return row_norm_rescaled<P>(row, D, p, t, G);
  }
}

// Calls f(std::integral_constant<int, P>) with the compile-time path for p.
template <typename F>
void dispatch_p(double p, F&& f) {
  if (std::isinf(p)) f(std::integral_constant<int, kInfP>{});
  else if (p == 1.0) f(std::integral_constant<int, 1>{});
  else if (p == 2.0) f(std::integral_constant<int, 2>{});
  else if (p == 3.0) f(std::integral_constant<int, 3>{});
  else if (p == 4.0) f(std::integral_constant<int, 4>{});
  else f(std::integral_constant<int, kGenericP>{});
}

// A tensor whose last dim is contiguous and whose data pointer is element-aligned (torch's
// own allocations always are): `t` itself when it already is, else a contiguous copy.
inline at::Tensor with_contiguous_rows(const at::Tensor& t) {
  const bool unit_stride = t.size(-1) <= 1 || t.stride(-1) == 1;
  const bool aligned = reinterpret_cast<uintptr_t>(t.data_ptr()) % t.element_size() == 0;
  return unit_stride && aligned ? t : t.clone(at::MemoryFormat::Contiguous);
}

// Launches over all rows of `rows` (N rows of D elements, see RowTable) writing their
// Lp-norms to out[0, N) (a contiguous tensor of the result dtype, or float64 for callers
// that need norms beyond the fp32 range). Defined in lp_norm.cu.
void lp_norm_rows(const at::Tensor& src, int64_t N, int64_t inner, int64_t outer_stride, int64_t inner_stride,
                  int64_t D, double p, at::Tensor& out);

}  // namespace cuda
}  // namespace lpla_fast
