// Headers the per-instruction-set kernel files include before kernels_impl.h (and before
// any `#pragma GCC target`), so that torch's and the standard library's inline functions
// keep the baseline instruction set.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "common.h"
#include "cpu/kernels.h"

// The 32-byte vector types of simd.h are passed by value only between inline functions of
// one file, so GCC's note that their ABI differs without AVX does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"
