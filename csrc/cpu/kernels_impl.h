// CPU kernels of the lpla_fast ops, written once and compiled per instruction set.
//
// The including file (kernels_<isa>.cpp) defines LPLA_ISA (the namespace, e.g. cpu_avx2)
// and includes kernels_prelude.h before this file, so that a `#pragma GCC target` placed in
// between applies to these kernels only, never to torch's inline functions. The headers
// below are parts of this one file: each goes inside the per-instruction-set namespace and
// uses the ones before it.

#ifndef LPLA_ISA
#error "define LPLA_ISA before including kernels_impl.h"
#endif

namespace lpla_fast {
namespace LPLA_ISA {
namespace {

#include "cpu/simd.h"      // vector types, loads, prefetching
#include "cpu/reduce.h"    // row sums, max, dot products
#include "cpu/row_norm.h"  // the Lp-norm of one row
#include "cpu/rows.h"      // rows of (..., D) tensors, parallel grain

}  // namespace

// The ops, one header each (as csrc/cuda/*.cu), with their entry points of kernels.h.
#include "cpu/lp_norm.h"      // lp_norm, lpla_score
#include "cpu/pooled.h"       // pooled_lp_norm, pooled_lpla_score
#include "cpu/view_stats.h"   // view_norm_stats
#include "cpu/view_cosine.h"  // view_cosine

}  // namespace LPLA_ISA
}  // namespace lpla_fast
