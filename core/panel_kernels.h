#ifndef ADASOFTMAX_CORE_PANEL_KERNELS_H_
#define ADASOFTMAX_CORE_PANEL_KERNELS_H_

// The inner loops over the weights of both softmax paths, for every storage dtype: entries are
// read in their own dtype and widened to float in registers. The out-of-line kernels are
// compiled for AVX-512, AVX2 and baseline x86-64 (by GCC's target clones, or for float16 by
// Highway in hwy_kernels.cc) and picked at load time for the CPU they run on.

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

namespace adasoftmax {

inline constexpr size_t kLanes = 1;  // == Model::kPanelWidth

// Adds `count` columns to the running sums of the masked arms: for r in [0, arms), v_c =
// columns[c][r] * x[c] for c in [0, count); where mask[r], sum[r] becomes (first ? 0 : sum[r]) +
// sum_c v_c and sum_sq[r] likewise with sum_c v_c^2; the other arms' sums are left as they are.
// Each column pointer addresses consecutive arms' entries of one single-column panel, in
// `dtype`. scratch holds 2 x arms floats. REQUIRES: count >= 1.
void SweepColumns(DType dtype, const void* const* columns, const float* x, size_t count,
                  size_t arms, const uint8_t* mask, bool first, float* sum, float* sum_sq,
                  float* scratch);

// For one arm: sum and sum of squares of v_u = slice_u . x_u over `count` panels, where
// slice_u = panels + ids[u] * panel_stride + arm_offset and x_u = xs + u * kLanes. Reads the
// column panels (panel_stride = n * kLanes, arm_offset = i * kLanes) or the row-major matrix
// (panel_stride = kLanes, arm_offset = i * d) alike. Inline: latency-bound, one cache line per
// panel, and called per arm and bin.
struct SumAndSquares {
  float sum = 0;
  float sum_sq = 0;
};
template <typename T>
SumAndSquares GatherArm(const T* panels, size_t panel_stride, const uint32_t* ids,
                        const float* xs, size_t count, size_t arm_offset) {
  SumAndSquares out;
  for (size_t u = 0; u < count; ++u) {
    const T* slice = panels + ids[u] * panel_stride + arm_offset;
    float v = 0;
    for (size_t c = 0; c < kLanes; ++c) v += Widen(slice[c]) * xs[u * kLanes + c];
    out.sum += v;
    out.sum_sq += v * v;
  }
  return out;
}

// sum_j a[j] * b[j] for `count` entries a of `dtype`, accumulated in double in 16 interleaved
// partial sums (vectorised, so the order differs from a plain loop's).
double RowDot(DType dtype, const void* a, const float* b, size_t count);

// out[k] = rows[k] . x for the `count` rows of d entries of `dtype` at rows[k], accumulated in
// double. Eight rows are read at a time: scattered rows stream 2-2.5x as fast interleaved as one
// after another. A row's result does not depend on the rows it is read with.
void RowDots(DType dtype, const void* const* rows, size_t count, const float* x, size_t d,
             double* out);

// out[r] = row_r . x for the `rows` consecutive rows of d entries of `dtype` at `a`, accumulated
// in float (float32 rows: in double, four streams of rows at once): the exact path's GEMV for
// weights that stream from memory, and for the dtypes BLAS lacks.
void RowsDotVector(DType dtype, const void* a, size_t rows, size_t d, const float* x, float* out);

// out[k] = a[k] widened, for `count` entries of `dtype`.
void WidenTo(DType dtype, const void* a, size_t count, float* out);

// out[k] = Narrow to `dtype` of a[k] (to nearest even), for `count` entries.
void NarrowTo(DType dtype, const float* a, size_t count, void* out);

}  // namespace adasoftmax

#endif  // ADASOFTMAX_CORE_PANEL_KERNELS_H_
