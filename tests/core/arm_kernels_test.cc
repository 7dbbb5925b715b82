#include "core/arm_kernels.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace adasoftmax {
namespace {

// A chunk of arms in every state the sampler produces: levels 0-9 and exact, infinite
// variances before the first pull, and arbitrary sums. width < kChunk covers a last chunk.
struct Chunk {
  static constexpr size_t kWidth = 1500;
  std::vector<uint8_t> level = std::vector<uint8_t>(kWidth);
  std::vector<float> estimate = std::vector<float>(kWidth);
  std::vector<float> variance = std::vector<float>(kWidth);
  std::vector<float> target = std::vector<float>(kWidth);
  std::vector<float> sums = std::vector<float>(2 * kBins * kChunk);
  std::vector<uint8_t> mask = std::vector<uint8_t>(kWidth);

  explicit Chunk(uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> unit(0, 1);
    for (size_t r = 0; r < kWidth; ++r) {
      level[r] = r % 11 == 10 ? kExactLevel : static_cast<uint8_t>(r % 10);
      estimate[r] = 4 * unit(rng) - 2;
      variance[r] = level[r] == 0 ? std::numeric_limits<float>::infinity() : unit(rng);
      target[r] = unit(rng);
      mask[r] = level[r] != kExactLevel && unit(rng) < 0.5;  // as SelectLevel would
    }
    for (float& s : sums) s = unit(rng) - 0.5f;
  }
};

TEST(ArmKernelsTest, UpdateWantsAppliesEveryDemandToEveryArm) {
  const Chunk c(1);
  const Demand demands[] = {
      {.search = true, .threshold = 0.5f, .radius_scale = 2.0f},
      {.uniform_target = 0.3f, .max_level = 7},
      {.target = c.target.data(), .max_level = 9},
  };
  for (const Demand& demand : demands) {
    std::vector<uint8_t> want(Chunk::kWidth, 7);
    const uint8_t lowest = UpdateWants(demand, c.level.data(), c.estimate.data(),
                                       c.variance.data(), Chunk::kWidth, want.data());
    uint8_t expected_lowest = kExactLevel;
    size_t wanted = 0;
    for (size_t r = 0; r < Chunk::kWidth; ++r) {
      const bool expected = Wants(demand, r, c.level[r], c.estimate[r], c.variance[r]);
      ASSERT_EQ(want[r], expected) << "arm " << r;
      if (expected) expected_lowest = std::min(expected_lowest, c.level[r]);
      wanted += expected;
    }
    EXPECT_EQ(lowest, expected_lowest);
    EXPECT_GT(wanted, 0u);
    EXPECT_LT(wanted, Chunk::kWidth);
  }
}

TEST(ArmKernelsTest, WantsNothingReturnsExactLevel) {
  const Chunk c(2);
  std::vector<uint8_t> want(Chunk::kWidth);
  const Demand none{.uniform_target = 0, .max_level = 0};
  EXPECT_EQ(UpdateWants(none, c.level.data(), c.estimate.data(), c.variance.data(),
                        Chunk::kWidth, want.data()),
            kExactLevel);
  EXPECT_EQ(std::count(want.begin(), want.end(), 1), 0);
}

TEST(ArmKernelsTest, SelectLevelMasksWantedArmsAtTheLevel) {
  const Chunk c(3);
  std::vector<uint8_t> mask(Chunk::kWidth, 9);
  const size_t count = SelectLevel(c.mask.data(), c.level.data(), 4, Chunk::kWidth, mask.data());
  size_t expected_count = 0;
  for (size_t r = 0; r < Chunk::kWidth; ++r) {
    const bool expected = c.mask[r] && c.level[r] == 4;
    ASSERT_EQ(mask[r], expected) << "arm " << r;
    expected_count += expected;
  }
  EXPECT_EQ(count, expected_count);
  EXPECT_GT(count, 0u);
}

TEST(ArmKernelsTest, SelectJumpsMasksArmsThatWouldMissTheTarget) {
  const Chunk c(4);
  std::vector<uint8_t> jump(Chunk::kWidth, 9);
  // An arm that reads 4x its entries still misses 0.1 when its variance is above 0.4.
  const size_t count =
      SelectJumps(c.mask.data(), c.variance.data(), 0.25f, 0.1f, Chunk::kWidth, jump.data());
  size_t expected_count = 0;
  for (size_t r = 0; r < Chunk::kWidth; ++r) {
    const bool expected = c.mask[r] && c.variance[r] > 0.4f;
    ASSERT_EQ(jump[r], expected) << "arm " << r << " variance " << c.variance[r];
    expected_count += expected;
  }
  EXPECT_EQ(count, expected_count);
  EXPECT_GT(count, 0u);
  EXPECT_LT(count, static_cast<size_t>(std::count(c.mask.begin(), c.mask.end(), 1)));
}

TEST(ArmKernelsTest, AdvanceMovesMaskedArmsAndRecomputesTheirEstimates) {
  const Chunk c(5);
  float inverse_inclusion[kBins], variance_factor[kBins];
  for (int b = 0; b < kBins; ++b) {
    inverse_inclusion[b] = 1.0f + b;
    variance_factor[b] = 0.5f * b;
  }
  // Bins past the first three hold garbage that must not be read.
  Chunk garbage(5);
  for (size_t at = 3 * kChunk; at < kBins * kChunk; ++at) garbage.sums[at] = NAN;
  for (size_t at = (kBins + 3) * kChunk; at < 2 * kBins * kChunk; ++at) garbage.sums[at] = NAN;
  const LevelWeights weights{inverse_inclusion, variance_factor, 0.8f, 3, 9};
  std::vector<float> bias(Chunk::kWidth);
  for (size_t r = 0; r < Chunk::kWidth; ++r) bias[r] = 0.01f * static_cast<float>(r % 13);
  const float* const biases[] = {nullptr, bias.data()};
  for (const float* b : biases) {
    Chunk after(5);
    Advance(c.mask.data(), garbage.sums.data(), weights, b, Chunk::kWidth, after.level.data(),
            after.estimate.data(), after.variance.data());
    for (size_t r = 0; r < Chunk::kWidth; ++r) {
      if (!c.mask[r]) {
        ASSERT_EQ(after.level[r], c.level[r]);
        ASSERT_EQ(after.estimate[r], c.estimate[r]);
        ASSERT_EQ(after.variance[r], c.variance[r]);
        continue;
      }
      float e, v;
      EstimateArm(garbage.sums.data(), r, weights, b != nullptr ? b[r] : 0.0f, e, v);
      ASSERT_TRUE(std::isfinite(e) && std::isfinite(v)) << "arm " << r;
      ASSERT_EQ(after.level[r], 9);
      // The kernel may contract multiply-adds where this test's scalar code does not.
      ASSERT_NEAR(after.estimate[r], e, 1e-5f * (1 + std::fabs(e))) << "arm " << r;
      ASSERT_NEAR(after.variance[r], v, 1e-5f * (1 + std::fabs(v))) << "arm " << r;
    }
  }
}

TEST(ArmKernelsTest, PredictedEntriesFollowsTheVarianceToEveryTarget) {
  const Chunk c(6);
  std::vector<uint64_t> entries(11);
  for (size_t l = 0; l < entries.size(); ++l) entries[l] = 16 * l * l;  // entries[0] = 0
  const Demand demands[] = {
      {.search = true, .threshold = 0.5f, .radius_scale = 2.0f, .max_level = 10},
      {.uniform_target = 0.3f, .max_level = 7},
      {.target = c.target.data(), .max_level = 9},
  };
  // The chunk's levels 0-9, and levels 5-7 only, as after a warm-up.
  std::vector<uint8_t> late = c.level;
  for (uint8_t& l : late) l = l == kExactLevel ? l : static_cast<uint8_t>(5 + l % 3);
  const std::vector<uint8_t>* const levels[] = {&c.level, &late};
  for (const std::vector<uint8_t>* level : levels) {
    for (const Demand& demand : demands) {
      const int max_level = demand.max_level;
      // The contract, arm by arm, in double precision.
      double expected = 0;
      for (size_t r = 0; r < Chunk::kWidth; ++r) {
        const uint8_t l = (*level)[r];
        if (l == kExactLevel || l >= max_level) continue;
        double target = demand.target != nullptr ? demand.target[r] : demand.uniform_target;
        if (demand.search) {
          const double gap = std::max(0.0, double{demand.threshold} - c.estimate[r]);
          target = gap * gap / demand.radius_scale;
        }
        const double read = static_cast<double>(entries[l]);
        const double cap = static_cast<double>(entries[max_level]);
        const double needed =
            target > 0 && std::isfinite(c.variance[r]) ? read * c.variance[r] / target : cap;
        expected += std::clamp(needed, read, cap) - read;
      }
      const double predicted = PredictedEntries(demand, level->data(), c.estimate.data(),
                                                c.variance.data(), entries.data(), Chunk::kWidth);
      EXPECT_GT(expected, 0);
      EXPECT_NEAR(predicted, expected, 1e-5 * expected) << "max_level " << max_level;
    }
  }
}

TEST(ArmKernelsTest, NormalizerTargetsAreTheSmallerOfBothBounds) {
  std::mt19937 rng(2);
  std::uniform_real_distribution<float> unit(0, 1);
  std::vector<float> g(1001);
  for (float& v : g) v = std::exp(-30 * unit(rng));  // exp((lower - top) / 2), 60 nats apart
  g[7] = 0;      // so far below the top that g underflowed
  g[8] = 1e-30;  // a / g fits a float, b / g^2 does not
  const double a = 0.02, b = 3e-4;
  std::vector<float> target(g.size());
  NormalizerTargets(g.data(), g.size(), a, b, target.data());
  int by_gamma = 0, by_alpha = 0;  // which bound set the target: both must occur
  for (size_t i = 0; i < g.size(); ++i) {
    if (i == 7) continue;
    const double expected = std::min(a / g[i], b / (double{g[i]} * g[i]));
    ASSERT_NEAR(target[i], expected, 1e-5 * expected) << "arm " << i;
    ++(a / g[i] < b / (double{g[i]} * g[i]) ? by_gamma : by_alpha);
  }
  EXPECT_GT(by_gamma, 0);
  EXPECT_GT(by_alpha, 0);
  // In place, the same targets.
  NormalizerTargets(g.data(), g.size(), a, b, g.data());
  EXPECT_EQ(g, target);
  EXPECT_EQ(target[7], std::numeric_limits<float>::infinity());
}

// Brute force: every arm of [begin, end) by value, then index.
std::vector<uint32_t> SortedBest(const std::vector<float>& values, uint32_t begin, uint32_t end,
                                 size_t count) {
  std::vector<uint32_t> arms(end - begin);
  for (uint32_t i = begin; i < end; ++i) arms[i - begin] = i;
  std::stable_sort(arms.begin(), arms.end(),
                   [&](uint32_t a, uint32_t b) { return values[a] > values[b]; });
  arms.resize(std::min(count, arms.size()));
  return arms;
}

TEST(ArmKernelsTest, BestArmsAreTheLargestValuesTiesToTheLowerIndex) {
  std::mt19937 rng(11);
  // Few distinct values (many ties), continuous values, and the best all in one block.
  std::vector<std::vector<float>> cases(3, std::vector<float>(5000));
  for (float& v : cases[0]) v = static_cast<float>(rng() % 7);
  std::normal_distribution<float> normal;
  for (float& v : cases[1]) v = normal(rng);
  for (size_t i = 0; i < cases[2].size(); ++i) cases[2][i] = i / 64 == 40 ? 10.0f + i % 5 : -1.0f;
  for (const std::vector<float>& values : cases) {
    for (const auto [begin, end] : {std::pair<uint32_t, uint32_t>{0, 5000}, {100, 4321},
                                    {70, 90}, {3000, 3001}}) {
      for (size_t count : {0, 1, 33, 100, 6000}) {
        EXPECT_EQ(BestArms(values.data(), begin, end, count),
                  SortedBest(values, begin, end, count))
            << "arms [" << begin << ", " << end << "), count " << count;
      }
    }
  }
}

}  // namespace
}  // namespace adasoftmax
