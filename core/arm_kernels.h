#ifndef ADASOFTMAX_CORE_ARM_KERNELS_H_
#define ADASOFTMAX_CORE_ARM_KERNELS_H_

// The sampler's bookkeeping over one chunk of up to kChunk consecutive arms, vectorised across
// arms. The kernels are compiled for AVX-512, AVX2 and baseline x86-64 and picked at load time.
//
// A chunk's running sums are a structure of arrays of 2 * kBins rows, kChunk floats apart: row
// b holds, for every arm of the chunk, the sum of a_ip over the panels p of bin b read so far
// (a_ip = the panel's part of A_i . x), and row kBins + b the sum of a_ip^2. Arrays named
// level, estimate, variance, want and mask hold one entry per arm of the chunk.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace adasoftmax {

inline constexpr int kBins = 8;
inline constexpr uint32_t kChunk = 8192;
// Level of an arm whose logit was computed exactly from its full row.
inline constexpr uint8_t kExactLevel = 255;

// The estimate of an arm's logit beta * (A_i . x + bias) and its variance, from its sums at a
// level whose prefix has panels in bins [0, bins) only (the other bins' sums are not read), with
// inclusion probabilities q_b: inverse_inclusion[b] = 1 / q_b and variance_factor[b] =
// (1 - q_b) / q_b^2.
struct LevelWeights {
  const float* inverse_inclusion;
  const float* variance_factor;
  float beta;
  int bins;
  uint8_t level = 0;  // the level they are of: Advance moves arms there
};
inline void EstimateArm(const float* sums, size_t arm, const LevelWeights& weights, float bias,
                        float& estimate, float& variance) {
  float e = 0, v = 0;
  for (int b = 0; b < weights.bins; ++b) {
    e += sums[b * kChunk + arm] * weights.inverse_inclusion[b];
    v += sums[(kBins + b) * kChunk + arm] * weights.variance_factor[b];
  }
  estimate = weights.beta * (e + bias);
  variance = weights.beta * weights.beta * v;
}

// What a pull asks of every arm. A search pulls an arm while its upper confidence bound,
// estimate + sqrt(radius_scale * variance), reaches the threshold. Otherwise an arm is pulled
// while its variance exceeds its target (target[arm], or uniform_target when target is null)
// and its level is below max_level.
struct Demand {
  bool search = false;
  float threshold = 0;
  float radius_scale = 0;
  const float* target = nullptr;
  float uniform_target = 0;
  int max_level = 0;  // for a search, the last level (only predictions use it)

  // The same demand of the arms from `first` on, with target indexed from there.
  Demand From(uint32_t first) const {
    Demand d = *this;
    if (d.target != nullptr) d.target += first;
    return d;
  }
};
inline bool Wants(const Demand& demand, size_t arm, uint8_t level, float estimate,
                  float variance) {
  if (demand.search) {
    const float gap = demand.threshold - estimate;
    return level != kExactLevel && (gap <= 0 || demand.radius_scale * variance >= gap * gap);
  }
  const float target = demand.target != nullptr ? demand.target[arm] : demand.uniform_target;
  return level < demand.max_level && variance > target;
}

// want[r] = Wants(demand, r, ...) for r < width, with demand.target (when set) relative to the
// chunk. Returns the lowest level of a wanted arm, kExactLevel when none is wanted.
uint8_t UpdateWants(const Demand& demand, const uint8_t* level, const float* estimate,
                    const float* variance, size_t width, uint8_t* want);

// mask[r] = want[r] && level[r] == at; returns the number of arms set.
size_t SelectLevel(const uint8_t* want, const uint8_t* level, uint8_t at, size_t width,
                   uint8_t* mask);

// jump[r] = mask[r] && variance[r] * ratio > target: the masked arms that would still miss
// `target` after reading 1 / ratio times the entries they have read, if their variance fell in
// proportion. Returns the number of arms set.
size_t SelectJumps(const uint8_t* mask, const float* variance, float ratio, float target,
                   size_t width, uint8_t* jump);

// For each masked arm: level[r] = weights.level and the arm's estimate and variance are
// recomputed from its sums. bias (relative to the chunk) may be null.
void Advance(const uint8_t* mask, const float* sums, const LevelWeights& weights,
             const float* bias, size_t width, uint8_t* level, float* estimate, float* variance);

// The normaliser's per-arm variance targets (paper Algorithm 2): target[i] = min(a / g[i],
// b / g[i]^2) in float, +infinity where that overflows (g[i] = 0 included: an arm too far below
// the top to ever be pulled). target may be g (in place), else must not overlap it.
// REQUIRES: a > 0, b > 0, g[i] >= 0.
void NormalizerTargets(const float* g, size_t count, double a, double b, float* target);

// The entries `count` arms are predicted to read before `demand` is done with them, assuming an
// arm's variance falls in proportion to the entries it reads. entries[L] is what an arm at
// level L has read, for L <= demand.max_level. An arm needs entries[level] * variance /
// target, with target = gap^2 / radius_scale for a search (gap = threshold - estimate, at least
// 0): at least what it has read, at most entries[max_level], and all of that when the variance
// is infinite or the target 0. Exact arms and arms at max_level need nothing more.
// demand.target is indexed like the arms.
double PredictedEntries(const Demand& demand, const uint8_t* level, const float* estimate,
                        const float* variance, const uint64_t* entries, size_t count);

// The `count` arms i in [begin, end) with the largest values[i], best first, ties to the lower
// index; all of them if fewer. REQUIRES: finite values.
std::vector<uint32_t> BestArms(const float* values, uint32_t begin, uint32_t end, size_t count);

// The `count` of `arms` with the largest values[i], ranked as BestArms ranks them.
template <typename T>
std::vector<uint32_t> RankBest(std::vector<uint32_t> arms, const T* values, size_t count) {
  count = std::min(count, arms.size());
  std::partial_sort(arms.begin(), arms.begin() + count, arms.end(), [&](uint32_t a, uint32_t b) {
    return values[a] > values[b] || (values[a] == values[b] && a < b);
  });
  arms.resize(count);
  return arms;
}

}  // namespace adasoftmax

#endif  // ADASOFTMAX_CORE_ARM_KERNELS_H_
