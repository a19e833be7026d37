// The CPU kernels for CPUs with AVX2, FMA and F16C (chosen at run time in ops_cpu.cpp).
// The target pragma comes after every header, so it applies to these kernels only.
#include "cpu/kernels_prelude.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define LPLA_ISA cpu_avx2
#define LPLA_X86_AVX2 1
#include "cpu/kernels_impl.h"
#pragma GCC pop_options
#else
// Not x86-64: the AVX2 entry points are never chosen; alias them to the baseline build.
#define LPLA_ISA cpu_avx2
#include "cpu/kernels_impl.h"
#endif
