#include "core/panel_kernels.h"

#include "core/target_clones.h"

namespace adasoftmax {
namespace {

inline float Dot(const float* a, const float* x) {
  float s = 0;
#pragma omp simd reduction(+ : s)
  for (size_t c = 0; c < kLanes; ++c) s += a[c] * x[c];
  return s;
}

}  // namespace

ADASOFTMAX_KERNEL
void SweepPanel(const float* slices, const float* x, size_t arms, float* partial,
                float* partial_sq) {
  // Vectorised across arms: the short dot product is unrolled, not reduced per arm.
  for (size_t r = 0; r < arms; ++r) {
    float v = 0;
    for (size_t c = 0; c < kLanes; ++c) v += slices[r * kLanes + c] * x[c];
    partial[r] += v;
    partial_sq[r] += v * v;
  }
}

ADASOFTMAX_KERNEL
SumAndSquares GatherArm(const float* panels, size_t panel_stride, const uint32_t* ids,
                        const float* xs, size_t count, size_t arm_offset) {
  SumAndSquares out;
  for (size_t u = 0; u < count; ++u) {
    const float v = Dot(panels + ids[u] * panel_stride + arm_offset, xs + u * kLanes);
    out.sum += v;
    out.sum_sq += v * v;
  }
  return out;
}

}  // namespace adasoftmax
