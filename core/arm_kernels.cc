#include "core/arm_kernels.h"

#include "core/target_clones.h"

namespace adasoftmax {

ADASOFTMAX_KERNEL
uint8_t UpdateWants(const Demand& demand, const uint8_t* level, const float* estimate,
                    const float* variance, size_t width, uint8_t* want) {
  uint8_t lowest = kExactLevel;
#pragma omp simd reduction(min : lowest)
  for (size_t r = 0; r < width; ++r) {
    want[r] = Wants(demand, r, level[r], estimate[r], variance[r]);
    const uint8_t wanted_level = want[r] ? level[r] : kExactLevel;
    lowest = wanted_level < lowest ? wanted_level : lowest;
  }
  return lowest;
}

ADASOFTMAX_KERNEL
size_t SelectLevel(const uint8_t* want, const uint8_t* level, uint8_t at, size_t width,
                   uint8_t* mask) {
  size_t count = 0;
#pragma omp simd reduction(+ : count)
  for (size_t r = 0; r < width; ++r) {
    mask[r] = want[r] && level[r] == at;
    count += mask[r];
  }
  return count;
}

ADASOFTMAX_KERNEL
void ClearSums(const uint8_t* mask, size_t width, float* sums) {
  for (int row = 0; row < 2 * kBins; ++row) {
    float* sum = sums + row * kChunk;
#pragma omp simd
    for (size_t r = 0; r < width; ++r) sum[r] = mask[r] ? 0.0f : sum[r];
  }
}

ADASOFTMAX_KERNEL
void AddToSums(const uint8_t* mask, const float* partial, const float* partial_sq, int bin,
               size_t width, float* sums) {
  float* sum = sums + bin * kChunk;
  float* sum_sq = sums + (kBins + bin) * kChunk;
#pragma omp simd
  for (size_t r = 0; r < width; ++r) {
    sum[r] += mask[r] ? partial[r] : 0.0f;
    sum_sq[r] += mask[r] ? partial_sq[r] : 0.0f;
  }
}

ADASOFTMAX_KERNEL
void Advance(const uint8_t* mask, const float* sums, const LevelWeights& weights,
             const float* bias, size_t width, uint8_t* level, float* estimate, float* variance) {
#pragma omp simd
  for (size_t r = 0; r < width; ++r) {
    float e, v;
    EstimateArm(sums, r, weights, bias != nullptr ? bias[r] : 0.0f, e, v);
    level[r] += mask[r];
    estimate[r] = mask[r] ? e : estimate[r];
    variance[r] = mask[r] ? v : variance[r];
  }
}

}  // namespace adasoftmax
