#ifndef ADASOFTMAX_CORE_HWY_KERNELS_H_
#define ADASOFTMAX_CORE_HWY_KERNELS_H_

// Kernels written with Highway, where GCC's vectoriser falls short on half precision: GCC 12
// widens float16 one entry at a time (scalar vcvtph2ps, or integer operations without F16C),
// Highway 8 entries at once. Compiled for every x86-64 level Highway targets and dispatched at
// run time for the CPU they run on.

#include <cstddef>
#include <cstdint>

namespace adasoftmax {

// out[r] = row_r . x for the `rows` consecutive rows of d entries at `a`, accumulated in float:
// RowsDotVector for float16 and bfloat16. REQUIRES: finite entries.
void Float16RowsDotVector(const void* a, size_t rows, size_t d, const float* x, float* out);
void BFloat16RowsDotVector(const void* a, size_t rows, size_t d, const float* x, float* out);

// out[k] = a[k] widened, for `count` float16 entries. REQUIRES: finite entries.
void Float16WidenTo(const void* a, size_t count, float* out);

// SweepColumns (see panel_kernels.h) for float16 columns. REQUIRES: finite entries.
void Float16SweepColumns(const void* const* columns, const float* x, size_t count, size_t arms,
                         const uint8_t* mask, bool first, float* sum, float* sum_sq,
                         float* scratch);

}  // namespace adasoftmax

#endif  // ADASOFTMAX_CORE_HWY_KERNELS_H_
