// The CPU kernels for any x86-64 (or other) CPU: the build's default instruction set.
#include "cpu/kernels_prelude.h"

#define LPLA_ISA cpu_baseline
#include "cpu/kernels_impl.h"
