#include "core/panel_order.h"

#include <cmath>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/core/test_models.h"

namespace adasoftmax {
namespace {

using ::testing::ElementsAre;
using testing::SynthHead;

// A small head whose columns differ in scale, so importance weights matter.
testing::ModelAndQueries SmallHead() {
  return SynthHead({.n = 300,
                    .d = 40,
                    .queries = 4,
                    .seed = 7,
                    .heavy_tailed = true,
                    .column_scale_spread = 1.0});
}

TEST(PanelOrderTest, SpreadOfWeightsMeasuresHowEvenlyTheyCoverTheColumns) {
  // Column j of A has absolute sum j + 1 (the atom weight); column 3 is all zero.
  Matrix a = Matrix::Owned(2, 4, Layout::kRowMajor);
  for (size_t j = 0; j < 3; ++j) {
    a.mutable_data()[j] = a.mutable_data()[4 + j] = -0.5f * static_cast<float>(j + 1);
  }
  const std::shared_ptr<const Model> model = *Model::Create(std::move(a), {});
  auto spread = [&](std::vector<float> x, ImportanceOptions importance = {}) {
    return SpreadOfWeights(*model, x, importance);
  };
  // Weights |x_j| (j + 1) = 3, 3, 0 (x_2 = 0) and nothing for the zero column: equal.
  WeightSpread s = spread({3, 1.5, 0, 7});
  EXPECT_EQ(s.panels, 2u);
  EXPECT_DOUBLE_EQ(s.share, 1.0);
  // Weights 1, 2, 3: 36 / (3 x 14).
  s = spread({1, 1, 1, 1});
  EXPECT_EQ(s.panels, 3u);
  EXPECT_DOUBLE_EQ(s.share, 36.0 / 42.0);
  // Without the atom weights, |x_j| alone: 1, 4, 1 gives 36 / (3 x 18).
  s = spread({-1, 4, 1, 0}, {.atom = false});
  EXPECT_DOUBLE_EQ(s.share, 36.0 / 54.0);
  // One column holds nearly all the weight: share -> 1 / panels.
  s = spread({1e-6f, 1e-6f, 1e3f, 0});
  EXPECT_NEAR(s.share, 1.0 / 3.0, 1e-6);
  s = spread({0, 0, 0, 5});
  EXPECT_EQ(s.panels, 0u);
  EXPECT_EQ(s.share, 0.0);
}

TEST(PanelOrderTest, SharingLossesMeasureWhatTheBatchsWeightsCostEachQuery) {
  // Column j of A has absolute sum j + 1 (the atom weight); column 3 is all zero.
  Matrix a = Matrix::Owned(1, 4, Layout::kRowMajor);
  for (size_t j = 0; j < 3; ++j) a.mutable_data()[j] = static_cast<float>(j + 1);
  const std::shared_ptr<const Model> model = *Model::Create(std::move(a), {});
  auto losses = [&](std::vector<std::vector<float>> xs, ImportanceOptions importance = {}) {
    std::vector<absl::Span<const float>> spans(xs.begin(), xs.end());
    return SharingLosses(*model, spans, importance);
  };
  const auto one = ::testing::DoubleNear(1, 1e-12);
  // Proportional queries, and queries differing only on the zero column, lose nothing.
  EXPECT_THAT(losses({{1, -2, 0.5, 0}, {-2, 4, 1, 9}}), ElementsAre(one, one));
  EXPECT_THAT(losses({{1, 2, 3, 4}}), ElementsAre(one));
  // Weights |x_j| / |x|_1 x (j + 1): w = (1, 0, 0) and (0, 1, 1.5); the batch's v = (1, 1, 1.5).
  // The first: (1 / 1) x 3.5 / 1^2; the second: (1 + 1.5^2 / 1.5) x 3.5 / 2.5^2.
  std::vector<double> l = losses({{1, 0, 0, 0}, {0, 1, 1, 0}});
  EXPECT_DOUBLE_EQ(l[0], 3.5);
  EXPECT_DOUBLE_EQ(l[1], 1.4);
  // Without query weights, columns weigh the number of queries reading them: v = (1, 2, 2) x
  // atom; the first, w = (0, 2, 3): (4 / 4 + 9 / 6) x 11 / 25.
  l = losses({{0, 5, 5, 0}, {0, 1, 1, 0}, {7, 0, 0, 0}}, {.query = false});
  EXPECT_DOUBLE_EQ(l[0], 2.5 * 11 / 25);
  EXPECT_DOUBLE_EQ(l[2], 11.0);
  // An all-zero query costs nothing and weighs nothing.
  EXPECT_THAT(losses({{0, 0, 0, 0}, {1, 1, 1, 0}}), ElementsAre(1.0, one));
}

TEST(PanelOrderTest, IsAPermutationOfTheNonzeroColumnsWithGrowingPrefixes) {
  testing::ModelAndQueries head = SmallHead();
  std::vector<float> x(head.query(0).begin(), head.query(0).end());
  x[3] = x[17] = 0;
  const std::vector<absl::Span<const float>> xs = {x};
  const PanelOrder order = PanelOrder::Draw(*head.model, xs, {}, 1);
  ASSERT_EQ(order.size(), 38u);
  std::vector<int> seen(40, 0);
  for (size_t t = 0; t < order.size(); ++t) ++seen[order.panel(t)];
  EXPECT_EQ(seen[3], 0);
  EXPECT_EQ(seen[17], 0);
  for (int j = 0; j < 40; ++j) {
    if (j != 3 && j != 17) EXPECT_EQ(seen[j], 1) << j;
  }
  EXPECT_EQ(order.prefix(0), 0u);
  EXPECT_EQ(order.prefix(order.last_level()), order.size());
  for (int level = 0; level + 1 < order.levels(); ++level) {
    EXPECT_LT(order.prefix(level), order.prefix(level + 1));
  }
  EXPECT_EQ(order.InclusionProbability(order.size(), 0), 1.0);
}

TEST(PanelOrderTest, EachLevelsNewPanelsComeGroupedByBinInRuns) {
  testing::ModelAndQueries head = SmallHead();
  const std::vector<absl::Span<const float>> xs = {head.query(1)};
  const PanelOrder order = PanelOrder::Draw(*head.model, xs, {}, 3);
  int mixed_levels = 0;  // levels whose new panels fall in more than one bin
  for (int level = 0; level + 1 < order.levels(); ++level) {
    size_t t = order.prefix(level);
    for (const PanelOrder::Run& run : order.runs(level)) {
      EXPECT_EQ(run.begin, t) << level;
      for (; t < run.end; ++t) EXPECT_EQ(order.bin(t), run.bin) << level << " " << t;
    }
    EXPECT_EQ(t, order.prefix(level + 1)) << level;
    for (t = order.prefix(level) + 1; t < order.prefix(level + 1); ++t) {
      EXPECT_LE(order.bin(t - 1), order.bin(t)) << level << " " << t;
    }
    mixed_levels += order.runs(level).size() > 1;
  }
  EXPECT_GE(mixed_levels, 2);  // the grouping had something to do
}

TEST(PanelOrderTest, SameSeedSameOrderOtherSeedOtherOrder) {
  testing::ModelAndQueries head = SmallHead();
  const std::vector<absl::Span<const float>> xs = {head.query(0)};
  const PanelOrder a = PanelOrder::Draw(*head.model, xs, {}, 5);
  const PanelOrder b = PanelOrder::Draw(*head.model, xs, {}, 5);
  const PanelOrder c = PanelOrder::Draw(*head.model, xs, {}, 6);
  bool differs = false;
  for (size_t t = 0; t < a.size(); ++t) {
    EXPECT_EQ(a.panel(t), b.panel(t));
    differs |= a.panel(t) != c.panel(t);
  }
  EXPECT_TRUE(differs);
}

// Gumbel-top-k with rank conditioning: q_j is column j's inclusion probability given the other
// keys, so 1{j in prefix} / q_j must average to 1 for every column.
TEST(PanelOrderTest, InclusionProbabilitiesMatchMonteCarloFrequencies) {
  testing::ModelAndQueries head = SmallHead();
  const std::vector<absl::Span<const float>> xs = {head.query(1)};
  constexpr int kDraws = 20000;
  const size_t d = head.model->d();
  for (int level : {1, 2}) {
    std::vector<double> sum(d, 0), sum_sq(d, 0);
    for (int draw = 0; draw < kDraws; ++draw) {
      const PanelOrder order = PanelOrder::Draw(*head.model, xs, {}, 1000 + draw);
      for (size_t t = 0; t < order.prefix(level); ++t) {
        const double w = order.inverse_inclusion(level)[order.bin(t)];
        sum[order.panel(t)] += w;
        sum_sq[order.panel(t)] += w * w;
      }
    }
    for (size_t j = 0; j < d; ++j) {
      const double mean = sum[j] / kDraws;
      const double se = std::sqrt((sum_sq[j] / kDraws - mean * mean) / kDraws);
      EXPECT_NEAR(mean, 1.0, 4.5 * se + 1e-3) << "column " << j << " level " << level;
    }
  }
}

// The Horvitz-Thompson estimate of A_i . x at every level is unbiased, and its variance estimate
// matches the Monte Carlo variance.
TEST(PanelOrderTest, EstimatorIsUnbiasedAndVarianceIsCalibrated) {
  testing::ModelAndQueries head = SmallHead();
  const absl::Span<const float> x = head.query(2);
  const std::vector<absl::Span<const float>> xs = {x};
  const Model& model = *head.model;
  const size_t d = model.d();
  constexpr int kDraws = 20000;
  for (size_t arm : {0u, 123u}) {
    double truth = 0;
    for (size_t j = 0; j < d; ++j) truth += double{model.weight(arm, j)} * x[j];
    for (int level : {1, 2, 3}) {
      double mean = 0, mean_sq = 0, mean_var_estimate = 0;
      for (int draw = 0; draw < kDraws; ++draw) {
        const PanelOrder order = PanelOrder::Draw(model, xs, {}, 77 + draw);
        const float* inverse = order.inverse_inclusion(level);
        const float* factor = order.variance_factor(level);
        double estimate = 0, variance = 0;
        for (size_t t = 0; t < order.prefix(level); ++t) {
          const double a = double{model.weight(arm, order.panel(t))} * x[order.panel(t)];
          estimate += a * inverse[order.bin(t)];
          variance += a * a * factor[order.bin(t)];
        }
        mean += estimate / kDraws;
        mean_sq += estimate * estimate / kDraws;
        mean_var_estimate += variance / kDraws;
      }
      const double variance = mean_sq - mean * mean;
      EXPECT_NEAR(mean, truth, 4.5 * std::sqrt(variance / kDraws))
          << "arm " << arm << " level " << level;
      EXPECT_NEAR(mean_var_estimate / variance, 1.0, 0.15) << "arm " << arm << " level " << level;
    }
  }
}

TEST(PanelOrderTest, ImportanceFlagsChangeTheOrder) {
  testing::ModelAndQueries head = SmallHead();
  const std::vector<absl::Span<const float>> xs = {head.query(0)};
  // With both weights off, every column shares bin 0: the order is uniform.
  const PanelOrder uniform = PanelOrder::Draw(*head.model, xs, {.atom = false, .query = false}, 3);
  for (size_t t = 0; t < uniform.size(); ++t) EXPECT_EQ(uniform.bin(t), 0);
  const PanelOrder weighted = PanelOrder::Draw(*head.model, xs, {}, 3);
  bool spread = false;
  for (size_t t = 0; t < weighted.size(); ++t) spread |= weighted.bin(t) != 0;
  EXPECT_TRUE(spread);
}

}  // namespace
}  // namespace adasoftmax
