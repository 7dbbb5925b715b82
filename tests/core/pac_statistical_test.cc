// Statistical tests of the (epsilon, delta) guarantee: thousands of adaptive queries with fixed
// seeds, each judged against the exact answer in double precision. Deterministic; the allowed
// failure counts are binomial margins, so a correct sampler fails a test with probability < 1e-4.

#include <cmath>
#include <string>
#include <vector>

#include "core/adaptive_softmax.h"
#include "core/calibration.h"
#include "core/pac.h"
#include "gtest/gtest.h"
#include "tests/core/test_models.h"

namespace adasoftmax {
namespace {

// The largest failure count c with P(Binomial(trials, delta) > c) >= 1e-4, i.e. the count a
// sampler that meets delta exceeds only with probability below 1e-4.
int BinomialMargin(int trials, double delta) {
  double tail = 1;  // P(X > c - 1) = P(X >= c)
  for (int c = 0; c <= trials; ++c) {
    const double pmf =
        std::exp(std::lgamma(trials + 1.0) - std::lgamma(c + 1.0) - std::lgamma(trials - c + 1.0) +
                 c * std::log(delta) + (trials - c) * std::log1p(-delta));
    tail -= pmf;  // now P(X > c)
    if (tail < 1e-4) return c;
  }
  return trials;
}

struct Workload {
  std::string name;
  testing::ModelAndQueries head;
};

std::vector<Workload>& Workloads() {
  static auto* workloads = [] {
    auto* w = new std::vector<Workload>;
    w->push_back({"ocr_with_bias", testing::OcrHead()});
    w->push_back(
        {"dense_gaussian", testing::SynthHead({.n = 6000, .d = 192, .queries = 100, .seed = 21})});
    w->push_back({"heavy_tailed", testing::SynthHead({.n = 6000,
                                                      .d = 192,
                                                      .queries = 100,
                                                      .seed = 22,
                                                      .heavy_tailed = true,
                                                      .column_scale_spread = 0.5})});
    return w;
  }();
  return *workloads;
}

struct Setting {
  uint32_t k;
  double epsilon;
  double delta;
};

class TheoryModePacTest : public ::testing::TestWithParam<Setting> {};

// 3 workloads x 100 queries x 8 settings = 2,400 adaptive queries in theory mode.
TEST_P(TheoryModePacTest, FailureRateStaysBelowDeltaPlusBinomialMargin) {
  const Setting setting = GetParam();
  for (Workload& w : Workloads()) {
    const AdaptiveSoftmax adaptive(w.head.model);
    const int queries = 100;
    int failures = 0;
    double fraction = 0;
    for (int q = 0; q < queries; ++q) {
      // OCR: spread the 100 queries over all 64 text lines.
      const size_t row = w.name == "ocr_with_bias" ? (q * 25) % w.head.queries.rows() : q;
      const Query query{
          w.head.query(row),
          {.k = setting.k, .epsilon = setting.epsilon, .delta = setting.delta, .seed = 1000u + q}};
      const TopKResult r = *adaptive.Answer(query);
      failures +=
          !MeetsPac(r, ComputeReference(*w.head.model, query.x, 1.0), setting.k, setting.epsilon);
      fraction += r.sample_fraction / queries;
    }
    EXPECT_LE(failures, BinomialMargin(queries, setting.delta))
        << w.name << " k=" << setting.k << " epsilon=" << setting.epsilon
        << " delta=" << setting.delta;
    RecordProperty(w.name + "_failures", failures);
    RecordProperty(w.name + "_mean_fraction", std::to_string(fraction));
  }
}

INSTANTIATE_TEST_SUITE_P(Settings, TheoryModePacTest,
                         ::testing::Values(Setting{1, 0.3, 0.01}, Setting{5, 0.3, 0.01},
                                           Setting{1, 0.1, 0.01}, Setting{5, 0.1, 0.01},
                                           Setting{1, 0.3, 0.1}, Setting{5, 0.3, 0.1},
                                           Setting{1, 0.1, 0.1}, Setting{5, 0.1, 0.1}),
                         [](const ::testing::TestParamInfo<Setting>& info) {
                           return "k" + std::to_string(info.param.k) + "_eps" +
                                  std::to_string(int(info.param.epsilon * 100)) + "pct_delta" +
                                  std::to_string(int(info.param.delta * 100)) + "pct";
                         });

TEST(BinomialMarginTest, MatchesKnownQuantiles) {
  EXPECT_EQ(BinomialMargin(100, 0.01), 6);  // P(Bin(100, .01) > 5) = 5.9e-4, > 6: 7.3e-5
  EXPECT_EQ(BinomialMargin(100, 0.1), 23);
  EXPECT_EQ(BinomialMargin(300, 0.05), 31);
}

// Half-precision heads: the guarantee holds against the exact answer on the rounded weights
// the model keeps. Float32 heads with a half-precision copy for the sampler: against the
// float32 answer.
TEST(HalfPrecisionPacTest, TheoryModeHoldsDeltaOnHalfPrecisionHeadsAndCopies) {
  for (const auto [dtype, copy] : {std::pair{DType::kFloat16, DType::kFloat16},
                                   {DType::kBFloat16, DType::kBFloat16},
                                   {DType::kFloat32, DType::kFloat16},
                                   {DType::kFloat32, DType::kBFloat16}}) {
    const testing::ModelAndQueries head = testing::SynthHead({.n = 6000,
                                                              .d = 192,
                                                              .queries = 200,
                                                              .seed = 23,
                                                              .heavy_tailed = true,
                                                              .column_scale_spread = 0.5},
                                                             dtype, copy);
    ASSERT_EQ(head.model->dtype(), dtype);
    ASSERT_EQ(head.model->sampling_dtype(), copy);
    const AdaptiveSoftmax adaptive(head.model);
    const QueryOptions options{.k = 1, .epsilon = 0.3, .delta = 0.01};
    int failures = 0;
    double fraction = 0;
    for (int q = 0; q < 200; ++q) {
      QueryOptions o = options;
      o.seed = 3000u + q;
      const Query query{head.query(q), o};
      const TopKResult r = *adaptive.Answer(query);
      failures += !MeetsPac(r, ComputeReference(*head.model, query.x, 1.0), 1, options.epsilon);
      fraction += r.sample_fraction / 200;
    }
    EXPECT_LE(failures, BinomialMargin(200, options.delta))
        << DTypeName(dtype) << "/" << DTypeName(copy);
    EXPECT_LT(fraction, 0.9) << DTypeName(dtype) << "/" << DTypeName(copy)
                             << ": the sampler must not read everything";
  }
}

// Calibration on one split, verification on a disjoint held-out split never seen by it.
TEST(CalibratedModePacTest, CalibratedMultipliersHoldDeltaOnHeldOutQueries) {
  testing::ModelAndQueries head =
      testing::SynthHead({.n = 3000, .d = 128, .queries = 900, .seed = 31, .heavy_tailed = true});
  const QueryOptions options{.k = 1, .epsilon = 0.3, .delta = 0.05};
  // The first 600 queries calibrate (Calibrate keeps its own 30% hold-out of them).
  Matrix calibration_set = Matrix::Owned(600, head.queries.cols(), Layout::kRowMajor);
  std::copy(head.queries.data(), head.queries.data() + calibration_set.size(),
            calibration_set.mutable_data());
  absl::StatusOr<Calibration> calibration =
      Calibrate(head.model, calibration_set, options, {}, {.seed = 5, .threads = 2});
  ASSERT_TRUE(calibration.ok()) << calibration.status();
  EXPECT_LE(calibration->failure_bound, options.delta);

  const AdaptiveSoftmax calibrated(head.model,
                                   {.topk_multiplier = calibration->topk_multiplier,
                                    .normalizer_multiplier = calibration->normalizer_multiplier});
  const AdaptiveSoftmax theory(head.model);
  int failures = 0;
  double calibrated_samples = 0, theory_samples = 0;
  const int held_out = 300;
  for (int q = 600; q < 600 + held_out; ++q) {
    QueryOptions o = options;
    o.seed = 7000u + q;
    const Query query{head.query(q), o};
    const TopKResult r = *calibrated.Answer(query);
    failures += !MeetsPac(r, ComputeReference(*head.model, query.x, 1.0), 1, options.epsilon);
    calibrated_samples += r.samples;
    theory_samples += theory.Answer(query)->samples;
  }
  EXPECT_LE(failures, BinomialMargin(held_out, options.delta));
  // Calibration exists to save samples.
  EXPECT_LT(calibrated_samples, theory_samples);
}

}  // namespace
}  // namespace adasoftmax
