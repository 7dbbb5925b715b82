#include "core/panel_kernels.h"

#include "core/target_clones.h"

namespace adasoftmax {

ADASOFTMAX_KERNEL
void SweepColumns(const float* const* columns, const float* x, size_t count, size_t arms,
                  float* partial, float* partial_sq) {
  static_assert(kLanes == 1, "a panel is one column");
  size_t c = 0;
  // Four columns per pass: four read streams, and a quarter of the partial-sum traffic.
  for (; c + 4 <= count; c += 4) {
    const float *a0 = columns[c], *a1 = columns[c + 1], *a2 = columns[c + 2], *a3 = columns[c + 3];
    const float x0 = x[c], x1 = x[c + 1], x2 = x[c + 2], x3 = x[c + 3];
    for (size_t r = 0; r < arms; ++r) {
      const float v0 = a0[r] * x0, v1 = a1[r] * x1, v2 = a2[r] * x2, v3 = a3[r] * x3;
      partial[r] += (v0 + v1) + (v2 + v3);
      partial_sq[r] += (v0 * v0 + v1 * v1) + (v2 * v2 + v3 * v3);
    }
  }
  for (; c < count; ++c) {
    const float* a = columns[c];
    for (size_t r = 0; r < arms; ++r) {
      const float v = a[r] * x[c];
      partial[r] += v;
      partial_sq[r] += v * v;
    }
  }
}

ADASOFTMAX_KERNEL
double RowDot(const float* a, const float* b, size_t count) {
  constexpr size_t kSums = 16;
  double sums[kSums] = {};
  size_t j = 0;
  for (; j + kSums <= count; j += kSums) {
    for (size_t l = 0; l < kSums; ++l) sums[l] += static_cast<double>(a[j + l]) * b[j + l];
  }
  double dot = 0;
  for (; j < count; ++j) dot += static_cast<double>(a[j]) * b[j];
  for (size_t l = 0; l < kSums; ++l) dot += sums[l];
  return dot;
}

}  // namespace adasoftmax
