#ifndef ADASOFTMAX_CORE_HWY_KERNELS_H_
#define ADASOFTMAX_CORE_HWY_KERNELS_H_

// Kernels written with Highway, where GCC's vectoriser falls short: GCC 12 widens float16 one
// entry at a time (scalar vcvtph2ps, or integer operations without F16C), Highway 8 at once.
// Compiled for every x86-64 level Highway targets and dispatched at run time for the CPU they
// run on.

#include <cstddef>

namespace adasoftmax {

// out[r] = row_r . x for the `rows` consecutive float16 rows of d entries at `a`, accumulated
// in float: RowsDotVector for float16. REQUIRES: finite entries.
void Float16RowsDotVector(const void* a, size_t rows, size_t d, const float* x, float* out);

}  // namespace adasoftmax

#endif  // ADASOFTMAX_CORE_HWY_KERNELS_H_
