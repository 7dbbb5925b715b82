#include "core/synth.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace adasoftmax {
namespace {

SynthOptions SmallOptions() {
  SynthOptions o;
  o.n = 3000;
  o.d = 256;
  o.queries = 24;
  o.seed = 7;
  return o;
}

bool SameBytes(const Matrix& a, const Matrix& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Exact logits A x + b of query q, accumulated in double.
std::vector<double> Logits(const SynthData& data, size_t q) {
  const Matrix& a = data.weights;
  const float* x = data.queries.data() + q * a.cols();
  std::vector<double> logits(a.rows());
  for (size_t i = 0; i < a.rows(); ++i) {
    double sum = data.bias.empty() ? 0.0 : data.bias[i];
    for (size_t j = 0; j < a.cols(); ++j) sum += static_cast<double>(a.at(i, j)) * x[j];
    logits[i] = sum;
  }
  return logits;
}

// Share of sum_j |x_j|^power held by the largest 1% (at least one) of the coordinates.
double TopOnePercentShare(const float* x, size_t d, int power) {
  std::vector<double> magnitudes(x, x + d);
  for (double& m : magnitudes) m = std::pow(std::abs(m), power);
  std::sort(magnitudes.begin(), magnitudes.end(), std::greater<>());
  const size_t top = std::max<size_t>(1, d / 100);
  double total = 0, head = 0;
  for (size_t j = 0; j < d; ++j) (j < top ? head : total) += magnitudes[j];
  return head / (head + total);
}

TEST(SynthTest, SameSeedGivesIdenticalBytes) {
  SynthOptions o = SmallOptions();
  o.bias = true;
  o.heavy_tailed = true;
  absl::StatusOr<SynthData> a = Synthesize(o);
  absl::StatusOr<SynthData> b = Synthesize(o);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_TRUE(SameBytes(a->weights, b->weights));
  EXPECT_TRUE(SameBytes(a->queries, b->queries));
  EXPECT_EQ(a->bias, b->bias);
  EXPECT_EQ(a->target_rows, b->target_rows);
}

TEST(SynthTest, DifferentSeedDiffers) {
  SynthOptions o = SmallOptions();
  absl::StatusOr<SynthData> a = Synthesize(o);
  o.seed += 1;
  absl::StatusOr<SynthData> b = Synthesize(o);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_FALSE(SameBytes(a->weights, b->weights));
  EXPECT_FALSE(SameBytes(a->queries, b->queries));
  EXPECT_NE(a->target_rows, b->target_rows);
}

TEST(SynthTest, WeightsDoNotDependOnQueryOptions) {
  SynthOptions o = SmallOptions();
  absl::StatusOr<SynthData> a = Synthesize(o);
  o.queries = 3;
  o.heavy_tailed = true;
  o.bias = true;
  absl::StatusOr<SynthData> b = Synthesize(o);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_TRUE(SameBytes(a->weights, b->weights));
}

struct Variant {
  const char* name;
  bool heavy_tailed;
  bool bias;
  double column_scale_spread;
};

TEST(SynthTest, TargetIsExactTop1WithProbabilityInRange) {
  for (const Variant& v :
       {Variant{"gaussian", false, false, 0.0}, Variant{"bias", false, true, 0.0},
        Variant{"heavy", true, false, 0.0}, Variant{"scaled columns", false, true, 0.7},
        Variant{"heavy scaled", true, true, 0.7}}) {
    SCOPED_TRACE(v.name);
    SynthOptions o = SmallOptions();
    o.heavy_tailed = v.heavy_tailed;
    o.bias = v.bias;
    o.column_scale_spread = v.column_scale_spread;
    absl::StatusOr<SynthData> data = Synthesize(o);
    ASSERT_TRUE(data.ok()) << data.status();
    ASSERT_EQ(data->weights.rows(), o.n);
    ASSERT_EQ(data->weights.cols(), o.d);
    ASSERT_EQ(data->weights.layout(), Layout::kRowMajor);
    ASSERT_EQ(data->queries.rows(), o.queries);
    ASSERT_EQ(data->queries.cols(), o.d);
    ASSERT_EQ(data->target_rows.size(), o.queries);
    ASSERT_EQ(data->bias.size(), v.bias ? o.n : 0);

    for (size_t q = 0; q < o.queries; ++q) {
      const std::vector<double> logits = Logits(*data, q);
      const size_t r = data->target_rows[q];
      const size_t top = std::max_element(logits.begin(), logits.end()) - logits.begin();
      EXPECT_EQ(top, r) << "query " << q;
      double sum = 0;
      for (double l : logits) sum += std::exp(l - logits[r]);
      const double p = 1.0 / sum;
      EXPECT_GE(p, o.top1_min - 0.01) << "query " << q;
      EXPECT_LE(p, o.top1_max + 0.01) << "query " << q;

      // The background spread is roughly logit_spread (plus the bias variance 0.5).
      double mean = 0, square = 0;
      for (double l : logits) mean += l / logits.size();
      for (double l : logits) square += (l - mean) * (l - mean) / logits.size();
      const double expected = std::sqrt(o.logit_spread * o.logit_spread + (v.bias ? 0.5 : 0.0));
      EXPECT_NEAR(std::sqrt(square), expected, 0.15 * expected) << "query " << q;
    }
  }
}

TEST(SynthTest, DefaultOptionsAtGpt2Size) {
  const SynthOptions o;
  absl::StatusOr<SynthData> data = Synthesize(o);
  ASSERT_TRUE(data.ok()) << data.status();
  ASSERT_EQ(data->weights.rows(), 50257);
  ASSERT_EQ(data->queries.rows(), 200);
  for (size_t q = 0; q < o.queries; q += 40) {
    const std::vector<double> logits = Logits(*data, q);
    const size_t r = data->target_rows[q];
    EXPECT_EQ(std::max_element(logits.begin(), logits.end()) - logits.begin(), r);
    double sum = 0;
    for (double l : logits) sum += std::exp(l - logits[r]);
    EXPECT_GE(1.0 / sum, o.top1_min - 0.01);
    EXPECT_LE(1.0 / sum, o.top1_max + 0.01);
  }
}

TEST(SynthTest, NarrowProbabilityRangeIsHit) {
  SynthOptions o = SmallOptions();
  o.top1_min = o.top1_max = 0.6;
  absl::StatusOr<SynthData> data = Synthesize(o);
  ASSERT_TRUE(data.ok()) << data.status();
  for (size_t q = 0; q < o.queries; ++q) {
    const std::vector<double> logits = Logits(*data, q);
    double sum = 0;
    for (double l : logits) sum += std::exp(l - logits[data->target_rows[q]]);
    EXPECT_NEAR(1.0 / sum, 0.6, 1e-3) << "query " << q;
  }
}

TEST(SynthTest, HeavyTailedQueriesAreDominatedByFewCoordinates) {
  SynthOptions o = SmallOptions();
  o.d = 512;  // 1% = 5 coordinates
  absl::StatusOr<SynthData> gaussian = Synthesize(o);
  o.heavy_tailed = true;
  absl::StatusOr<SynthData> heavy = Synthesize(o);
  ASSERT_TRUE(gaussian.ok()) << gaussian.status();
  ASSERT_TRUE(heavy.ok()) << heavy.status();
  // The dense correction that makes the target top-1 caps the L1 share of the massive channels
  // (about 25% at GPT-2 size, 30% here); their share of |x|_2^2 stays far above 50%.
  double heavy_mean = 0;
  for (size_t q = 0; q < o.queries; ++q) {
    const float* g = gaussian->queries.data() + q * o.d;
    const float* h = heavy->queries.data() + q * o.d;
    EXPECT_LT(TopOnePercentShare(g, o.d, 1), 0.06) << "query " << q;
    EXPECT_LT(TopOnePercentShare(g, o.d, 2), 0.15) << "query " << q;
    EXPECT_GT(TopOnePercentShare(h, o.d, 1), 0.18) << "query " << q;
    EXPECT_GT(TopOnePercentShare(h, o.d, 2), 0.75) << "query " << q;
    heavy_mean += TopOnePercentShare(h, o.d, 1) / o.queries;
  }
  EXPECT_GT(heavy_mean, 0.25);
}

TEST(SynthTest, InvalidOptions) {
  std::vector<std::function<void(SynthOptions&)>> edits = {
      [](SynthOptions& o) { o.n = 1; },
      [](SynthOptions& o) { o.d = 0; },
      [](SynthOptions& o) { o.n = size_t{1} << 31; },
      [](SynthOptions& o) { o.n = size_t{1} << 24, o.d = 1024; },
      [](SynthOptions& o) { o.queries = size_t{1} << 40; },
      [](SynthOptions& o) { o.logit_spread = 0; },
      [](SynthOptions& o) { o.logit_spread = std::numeric_limits<double>::infinity(); },
      [](SynthOptions& o) { o.logit_spread = std::numeric_limits<double>::quiet_NaN(); },
      [](SynthOptions& o) { o.top1_min = 0; },
      [](SynthOptions& o) { o.top1_max = 1; },
      [](SynthOptions& o) { o.top1_min = 0.8, o.top1_max = 0.7; },
      [](SynthOptions& o) { o.top1_min = std::numeric_limits<double>::quiet_NaN(); },
      [](SynthOptions& o) { o.column_scale_spread = -0.1; },
      [](SynthOptions& o) { o.column_scale_spread = 10; },
  };
  for (size_t i = 0; i < edits.size(); ++i) {
    SynthOptions o = SmallOptions();
    edits[i](o);
    EXPECT_EQ(Synthesize(o).status().code(), absl::StatusCode::kInvalidArgument) << "edit " << i;
  }
}

TEST(SynthTest, InfeasibleOptionsFailCleanly) {
  // With two rows the top-1 probability is at least 1/2.
  SynthOptions o = SmallOptions();
  o.n = 2;
  o.d = 4;
  o.top1_min = 0.3;
  o.top1_max = 0.4;
  absl::StatusOr<SynthData> data = Synthesize(o);
  EXPECT_EQ(data.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(data.status().message()), testing::HasSubstr("top-1"));
}

TEST(SynthTest, TinyFeasibleShapes) {
  SynthOptions o;
  o.n = 2;
  o.d = 1;
  o.queries = 5;
  o.top1_min = 0.6;
  o.top1_max = 0.9;
  absl::StatusOr<SynthData> data = Synthesize(o);
  ASSERT_TRUE(data.ok()) << data.status();
  for (size_t q = 0; q < o.queries; ++q) {
    const std::vector<double> logits = Logits(*data, q);
    EXPECT_GT(logits[data->target_rows[q]], logits[1 - data->target_rows[q]]);
  }
  o.queries = 0;
  data = Synthesize(o);
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(data->queries.rows(), 0);
}

}  // namespace
}  // namespace adasoftmax
