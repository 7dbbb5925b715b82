#include "core/arm_kernels.h"

#include "core/target_clones.h"

// Loops are written for GCC's vectoriser: masks are applied with bitwise selects rather than
// conditional stores, reductions are over bytes or marked `omp simd`, and the demand's branches
// are taken outside the loops.

namespace adasoftmax {
namespace {

// The lowest level among arms with want[r] set, kExactLevel when none is.
inline uint8_t LowestWanted(const uint8_t* __restrict want, const uint8_t* __restrict level,
                            size_t width) {
  uint8_t lowest = kExactLevel;
  for (size_t r = 0; r < width; ++r) {
    const uint8_t wanted_level = level[r] | static_cast<uint8_t>(want[r] - 1);
    lowest = wanted_level < lowest ? wanted_level : lowest;
  }
  return lowest;
}

}  // namespace

ADASOFTMAX_KERNEL
uint8_t UpdateWants(const Demand& demand, const uint8_t* __restrict level,
                    const float* __restrict estimate, const float* __restrict variance,
                    size_t width, uint8_t* __restrict want) {
  if (demand.search) {
    const float threshold = demand.threshold, radius_scale = demand.radius_scale;
    for (size_t r = 0; r < width; ++r) {
      const float gap = threshold - estimate[r];
      want[r] =
          (level[r] != kExactLevel) & ((gap <= 0) | (radius_scale * variance[r] >= gap * gap));
    }
  } else if (demand.target == nullptr) {
    const float target = demand.uniform_target;
    const int max_level = demand.max_level;
    for (size_t r = 0; r < width; ++r) want[r] = (level[r] < max_level) & (variance[r] > target);
  } else {
    const float* __restrict target = demand.target;
    const int max_level = demand.max_level;
    for (size_t r = 0; r < width; ++r) want[r] = (level[r] < max_level) & (variance[r] > target[r]);
  }
  return LowestWanted(want, level, width);
}

ADASOFTMAX_KERNEL
size_t SelectLevel(const uint8_t* __restrict want, const uint8_t* __restrict level, uint8_t at,
                   size_t width, uint8_t* __restrict mask) {
  uint32_t count = 0;
  for (size_t r = 0; r < width; ++r) {
    const uint8_t selected = want[r] & (level[r] == at);
    mask[r] = selected;
    count += selected;
  }
  return count;
}

// EstimateArm for the masked arms, bin by bin, accumulated in place (unmasked arms' sums may
// hold anything, so their terms are selected away rather than multiplied by 0).
ADASOFTMAX_KERNEL
void Advance(const uint8_t* __restrict mask, const float* __restrict sums,
             const LevelWeights& weights, const float* __restrict bias, size_t width,
             uint8_t* __restrict level, float* __restrict estimate, float* __restrict variance) {
  for (size_t r = 0; r < width; ++r) {
    const uint32_t m = AllOnes(mask[r]);
    estimate[r] = Select(m, 0.0f, estimate[r]);
    variance[r] = Select(m, 0.0f, variance[r]);
  }
  for (int b = 0; b < weights.bins; ++b) {
    const float* __restrict sum = sums + b * kChunk;
    const float* __restrict sum_sq = sums + (kBins + b) * kChunk;
    const float inverse_inclusion = weights.inverse_inclusion[b];
    const float variance_factor = weights.variance_factor[b];
    for (size_t r = 0; r < width; ++r) {
      const uint32_t m = AllOnes(mask[r]);
      estimate[r] += Select(m, sum[r] * inverse_inclusion, 0.0f);
      variance[r] += Select(m, sum_sq[r] * variance_factor, 0.0f);
    }
  }
  const float beta = weights.beta;
  auto finish = [&](auto bias_of) {
    for (size_t r = 0; r < width; ++r) {
      const uint32_t m = AllOnes(mask[r]);
      estimate[r] = Select(m, beta * (estimate[r] + bias_of(r)), estimate[r]);
      variance[r] = Select(m, beta * beta * variance[r], variance[r]);
    }
  };
  if (bias != nullptr) {
    finish([&](size_t r) { return bias[r]; });
  } else {
    finish([](size_t) { return 0.0f; });
  }
  for (size_t r = 0; r < width; ++r) level[r] += mask[r];
}

ADASOFTMAX_KERNEL
double PredictedEntries(const Demand& demand, const uint8_t* __restrict level,
                        const float* __restrict estimate, const float* __restrict variance,
                        const uint64_t* entries, size_t count) {
  const int max_level = demand.max_level;
  // entries[] indexed by any level byte: arms at or past max_level (exact ones included) have
  // read `cap` and so need nothing more.
  float read_at[256];
  const float cap = static_cast<float>(entries[max_level]);
  for (int l = 0; l < 256; ++l) read_at[l] = l < max_level ? static_cast<float>(entries[l]) : cap;
  auto predict = [&](auto target_of) {
    double sum = 0;
#pragma omp simd reduction(+ : sum)
    for (size_t r = 0; r < count; ++r) {
      const float read = read_at[level[r]];
      const float target = target_of(r);
      const bool unknown = !(target > 0) || variance[r] == __builtin_inff();
      float needed = unknown ? cap : read * variance[r] / target;
      needed = needed < read ? read : needed;
      needed = needed > cap ? cap : needed;
      sum += static_cast<double>(needed - read);
    }
    return sum;
  };
  if (demand.search) {
    const float threshold = demand.threshold, radius_scale = demand.radius_scale;
    return predict([&](size_t r) {
      const float gap = threshold - estimate[r] > 0 ? threshold - estimate[r] : 0.0f;
      return gap * gap / radius_scale;
    });
  }
  if (demand.target == nullptr) {
    const float uniform = demand.uniform_target;
    return predict([&](size_t) { return uniform; });
  }
  return predict([&](size_t r) { return demand.target[r]; });
}

}  // namespace adasoftmax
