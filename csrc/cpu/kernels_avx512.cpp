// The CPU kernels for CPUs with AVX-512 F, BW, DQ and VL (plus AVX2, FMA and F16C), chosen
// at run time in ops_cpu.cpp. As in kernels_avx2.cpp, the instruction set comes from a target
// pragma placed after every header rather than from -mavx512* flags on this file: with the
// flags, torch's and the standard library's inline functions compiled here would use AVX-512
// too, and the linker may keep that copy for callers on any CPU.
#include "cpu/kernels_prelude.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")
#define LPLA_ISA cpu_avx512
#define LPLA_X86_AVX2 1
#define LPLA_X86_AVX512 1
#include "cpu/kernels_impl.h"
#pragma GCC pop_options
#else
// Not x86-64: the AVX-512 entry points are never chosen; alias them to the baseline build.
#define LPLA_ISA cpu_avx512
#include "cpu/kernels_impl.h"
#endif
