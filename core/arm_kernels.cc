#include "core/arm_kernels.h"

#include <algorithm>
#include <functional>
#include <limits>
#include <utility>

#include "core/softmax_kernels.h"
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

ADASOFTMAX_KERNEL
size_t SelectJumps(const uint8_t* __restrict mask, const float* __restrict variance, float ratio,
                   float target, size_t width, uint8_t* __restrict jump) {
  uint32_t count = 0;
  for (size_t r = 0; r < width; ++r) {
    const uint8_t selected = mask[r] & (variance[r] * ratio > target);
    jump[r] = selected;
    count += selected;
  }
  return count;
}

ADASOFTMAX_KERNEL
void NormalizerTargets(const float* g, size_t count, double a, double b, float* target) {
  const float a_f = static_cast<float>(a), b_f = static_cast<float>(b);
  for (size_t i = 0; i < count; ++i) {
    const float inverse = 1.0f / g[i];  // IEEE division: +infinity for g = 0
    const float by_gamma = a_f * inverse, by_alpha = b_f * inverse * inverse;
    target[i] = by_gamma < by_alpha ? by_gamma : by_alpha;
  }
}

// EstimateArm for every arm in one pass, kept for the masked arms (unmasked arms' sums may hold
// anything, and their results are selected away). The bins are a template argument so that the
// loop over them unrolls and the loop over arms vectorises.
template <size_t kUsedBins, typename BiasOf>
[[gnu::always_inline]] inline void AdvanceOf(const uint8_t* __restrict mask,
                                             const float* __restrict sums,
                                             const LevelWeights& weights, BiasOf bias_of,
                                             size_t width, uint8_t* __restrict level,
                                             float* __restrict estimate,
                                             float* __restrict variance) {
  const float* sum[kUsedBins];
  const float* sum_sq[kUsedBins];
  float inverse_inclusion[kUsedBins], variance_factor[kUsedBins];
  for (size_t b = 0; b < kUsedBins; ++b) {
    sum[b] = sums + b * kChunk;
    sum_sq[b] = sums + (kBins + b) * kChunk;
    inverse_inclusion[b] = weights.inverse_inclusion[b];
    variance_factor[b] = weights.variance_factor[b];
  }
  const float beta = weights.beta;
  const uint8_t to = weights.level;
  for (size_t r = 0; r < width; ++r) {
    float e = 0, v = 0;
    for (size_t b = 0; b < kUsedBins; ++b) {
      e += sum[b][r] * inverse_inclusion[b];
      v += sum_sq[b][r] * variance_factor[b];
    }
    const uint32_t m = AllOnes(mask[r]);
    estimate[r] = Select(m, beta * (e + bias_of(r)), estimate[r]);
    variance[r] = Select(m, beta * beta * v, variance[r]);
    level[r] = mask[r] ? to : level[r];
  }
}

template <size_t kUsedBins>
[[gnu::always_inline]] inline void AdvanceWithBins(const uint8_t* mask, const float* sums,
                                                   const LevelWeights& weights, const float* bias,
                                                   size_t width, uint8_t* level, float* estimate,
                                                   float* variance) {
  if (bias != nullptr) {
    AdvanceOf<kUsedBins>(mask, sums, weights, [&](size_t r) { return bias[r]; }, width, level,
                         estimate, variance);
  } else {
    AdvanceOf<kUsedBins>(mask, sums, weights, [](size_t) { return 0.0f; }, width, level,
                         estimate, variance);
  }
}

// AdvanceWithBins<weights.bins>, chosen among 0..kBins.
template <size_t... kUsedBins>
[[gnu::always_inline]] inline void AdvanceForBins(std::index_sequence<kUsedBins...>,
                                                  const uint8_t* mask, const float* sums,
                                                  const LevelWeights& weights, const float* bias,
                                                  size_t width, uint8_t* level, float* estimate,
                                                  float* variance) {
  ((weights.bins == static_cast<int>(kUsedBins) &&
    (AdvanceWithBins<kUsedBins>(mask, sums, weights, bias, width, level, estimate, variance),
     true)) ||
   ...);
}

ADASOFTMAX_KERNEL
void Advance(const uint8_t* mask, const float* sums, const LevelWeights& weights, const float* bias,
             size_t width, uint8_t* level, float* estimate, float* variance) {
  AdvanceForBins(std::make_index_sequence<kBins + 1>(), mask, sums, weights, bias, width, level,
                 estimate, variance);
}

ADASOFTMAX_KERNEL
double PredictedEntries(const Demand& demand, const uint8_t* __restrict level,
                        const float* __restrict estimate, const float* __restrict variance,
                        const uint64_t* entries, size_t count) {
  const int max_level = demand.max_level;
  const float cap = static_cast<float>(entries[max_level]);
  const uint8_t below = static_cast<uint8_t>(max_level);
  // Per block of kBlock arms: the entries each arm has read, set level by level over the levels
  // below max_level that the block holds (a table lookup does not vectorise; after the warm-up,
  // most arms share its last level), then the needs, in a loop over floats without branches: an
  // unknown need (infinite variance, target 0) makes the quotient infinite or NaN, which the
  // comparison with cap turns into cap. Arms at or past max_level (exact ones included) have
  // read cap and need nothing more. Summed in float per block (each arm needs at most cap), then
  // in double.
  constexpr size_t kBlock = 1024;
  float read[kBlock];
  auto predict = [&](auto target_of) {
    double sum = 0;
    for (size_t begin = 0; begin < count; begin += kBlock) {
      const size_t width = std::min(kBlock, count - begin);
      std::fill_n(read, width, cap);
      uint8_t lowest = kExactLevel, highest = 0;  // of all levels, of those below max_level
#pragma omp simd reduction(min : lowest) reduction(max : highest)
      for (size_t r = 0; r < width; ++r) {
        const uint8_t l = level[begin + r];
        lowest = std::min(lowest, l);
        highest = std::max<uint8_t>(highest, l < below ? l : 0);
      }
      const int end = std::min<int>(highest + 1, max_level);
      for (int l = lowest; l < end; ++l) {
        const float entries_l = static_cast<float>(entries[l]);
        for (size_t r = 0; r < width; ++r) read[r] = level[begin + r] == l ? entries_l : read[r];
      }
      float block = 0;
#pragma omp simd reduction(+ : block)
      for (size_t r = 0; r < width; ++r) {
        const float target = target_of(begin + r);
        const float quotient = read[r] * variance[begin + r] / target;
        float needed = (target > 0) & (quotient < cap) ? quotient : cap;
        needed = needed < read[r] ? read[r] : needed;
        block += needed - read[r];
      }
      sum += block;
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

// At least `count` values reach the count-th largest maximum of a block of kBlock, so only the
// values that reach it, in the blocks that reach it, are ranked.
std::vector<uint32_t> BestArms(const float* values, uint32_t begin, uint32_t end, size_t count) {
  constexpr uint32_t kBlock = 64;
  std::vector<float> maxima;
  for (uint32_t b = begin; b < end; b += kBlock) {
    maxima.push_back(MaxOf(values + b, std::min(kBlock, end - b)));
  }
  float floor = std::numeric_limits<float>::lowest();
  if (count > 0 && maxima.size() > count) {
    std::vector<float> sorted = maxima;
    std::nth_element(sorted.begin(), sorted.begin() + (count - 1), sorted.end(),
                     std::greater<float>());
    floor = sorted[count - 1];
  }
  std::vector<uint32_t> arms;
  for (size_t block = 0; block < maxima.size(); ++block) {
    if (maxima[block] < floor) continue;
    const uint32_t b = begin + static_cast<uint32_t>(block) * kBlock;
    for (uint32_t i = b; i < std::min(end, b + kBlock); ++i) {
      if (values[i] >= floor) arms.push_back(i);
    }
  }
  return RankBest(std::move(arms), values, count);
}

}  // namespace adasoftmax
