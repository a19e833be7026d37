// Conventions shared by the CPU (csrc/cpu) and CUDA (csrc/cuda) kernels, defined once:
// the result dtype, the Gaussian log-density ratio of the LpLA score, the per-sample view
// statistics, and the constants both sides use. Host code may call everything here; the
// functions marked LPLA_HOST_DEVICE run in CUDA kernels too.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <limits>
#include <type_traits>

#if defined(__CUDACC__)
#define LPLA_HOST_DEVICE __host__ __device__
#else
#define LPLA_HOST_DEVICE
#endif

namespace lpla_fast {

// ---- result dtype -------------------------------------------------------------------------

// Result dtype of every op: float64 for float64 input, float32 otherwise (half types
// included: their norms and scores need float range and precision).
inline at::ScalarType result_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// The C++ type of result_dtype for a kernel instantiated on scalar_t.
template <typename scalar_t>
using result_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// ---- constants ------------------------------------------------------------------------------

// view_cosine's floor on a view's norm: a zero view has cosine 0 with every other view.
constexpr double kCosineEps = 1e-12;

LPLA_HOST_DEVICE inline bool is_finite(double v) {
#if defined(__CUDA_ARCH__)
  return ::isfinite(v);
#else
  return std::isfinite(v);
#endif
}

LPLA_HOST_DEVICE inline double quiet_nan() {
#if defined(__CUDA_ARCH__)
  return ::nan("");
#else
  return std::numeric_limits<double>::quiet_NaN();
#endif
}

// ---- the LpLA score term ------------------------------------------------------------------

// log N(t; mean_in, std_in^2) - log N(t; mean_out, std_out^2): positive where t is more
// likely under the member Gaussian. NaN for a non-finite t (a NaN or Inf norm, or log 0),
// so that such a view gives its own sample a NaN score. Divides by the stds, as the float64
// reference does, so that kernels and reference agree to rounding even where terms cancel.
struct GaussianLogRatio {
  double mean_in, std_in, mean_out, std_out;
  double log_std_ratio;  // log(std_out) - log(std_in)

  static GaussianLogRatio make(double mean_in, double std_in, double mean_out, double std_out) {
    return {mean_in, std_in, mean_out, std_out, std::log(std_out) - std::log(std_in)};
  }

  LPLA_HOST_DEVICE double operator()(double t) const {
    if (!is_finite(t)) return quiet_nan();
    const double z_in = (t - mean_in) / std_in;
    const double z_out = (t - mean_out) / std_out;
    return 0.5 * (z_out * z_out - z_in * z_in) + log_std_ratio;
  }
};

// The statistic of one view: its norm, or the log of it in log space.
LPLA_HOST_DEVICE inline double view_statistic(double norm, bool log_space) {
  return log_space ? ::log(norm) : norm;
}

// ---- per-sample view statistics --------------------------------------------------------------

// Mean and sample standard deviation (ddof = 1) of a sample's K view statistics, fed one at
// a time (Welford's update: one pass, no K-long buffer, stable when the spread is small next
// to the mean). K = 1 has std 0 and K = 0 has NaN mean and std; a non-finite statistic makes
// both NaN, as it makes the sample's LpLA score NaN.
struct ViewStats {
  double count = 0.0, mean_acc = 0.0, m2 = 0.0;
  bool finite = true;

  LPLA_HOST_DEVICE void add(double t) {
    finite = finite && is_finite(t);
    count += 1.0;
    const double delta = t - mean_acc;
    mean_acc += delta / count;
    m2 += delta * (t - mean_acc);
  }
  LPLA_HOST_DEVICE double mean() const {
    return finite && count > 0.0 ? mean_acc : quiet_nan();
  }
  LPLA_HOST_DEVICE double stddev() const {
    if (!finite || count == 0.0) return quiet_nan();
    return count == 1.0 ? 0.0 : ::sqrt(m2 / (count - 1.0));
  }
};

}  // namespace lpla_fast
