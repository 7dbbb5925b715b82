#include "core/calibration.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <initializer_list>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/model.h"
#include "core/synth.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace adasoftmax {
namespace {

using ::testing::HasSubstr;

std::string TempPath(const std::string& name) {
  return absl::StrCat(::testing::TempDir(), "/calibration_test_", getpid(), "_", name);
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
}

TEST(ClopperPearsonTest, KnownValues) {
  EXPECT_NEAR(ClopperPearsonUpper(0, 300, 0.95), 0.00994, 5e-5);
  // Exact value 0.10225 (scipy.stats.beta.ppf(0.95, 6, 95)).
  EXPECT_NEAR(ClopperPearsonUpper(5, 100, 0.95), 0.10225, 1e-4);
  // scipy.stats.beta.ppf(0.95, 3, 98): the bisection path for failures > 0.
  EXPECT_NEAR(ClopperPearsonUpper(2, 100, 0.95), 0.06162, 1e-4);
  EXPECT_DOUBLE_EQ(ClopperPearsonUpper(0, 0, 0.95), 1.0);
  EXPECT_DOUBLE_EQ(ClopperPearsonUpper(7, 7, 0.95), 1.0);
}

TEST(ClopperPearsonTest, MonotoneAndLargeTrials) {
  double previous = 0;
  for (size_t f = 0; f < 20; ++f) {
    const double u = ClopperPearsonUpper(f, 1000, 0.95);
    EXPECT_GT(u, previous);
    EXPECT_GT(u, f / 1000.0);
    previous = u;
  }
  // Normal approximation is close for large counts: 1000 of 1e6, one-sided z = 1.645.
  const double u = ClopperPearsonUpper(1000, 1000000, 0.95);
  EXPECT_NEAR(u, 0.001 + 1.645 * std::sqrt(0.001 * 0.999 / 1e6), 3e-6);
}

TEST(ClopperPearsonTest, MinimumTrials) {
  EXPECT_EQ(MinimumTrials(0.05, 0.95), 59u);
  EXPECT_EQ(MinimumTrials(0.01, 0.95), 299u);
  EXPECT_LE(ClopperPearsonUpper(0, 299, 0.95), 0.01);
  EXPECT_GT(ClopperPearsonUpper(0, 298, 0.95), 0.01);
}

Calibration Sample() {
  Calibration c;
  c.topk_multiplier = 0.03;
  c.normalizer_multiplier = 1e-4;
  c.lognormal_correction = 0.25;
  c.warmup_fraction = 0.2;
  c.n = 500;
  c.d = 64;
  c.k = 3;
  c.epsilon = 0.2;
  c.delta = 0.05;
  c.temperature = 0.7;
  c.confidence = 0.9;
  c.calibration_queries = 280;
  c.calibration_failures = 2;
  c.failure_bound = 0.0187;
  c.calibration_mean_sample_fraction = 0.123456789;
  c.holdout_queries = 120;
  c.holdout_failures = 1;
  c.holdout_failure_rate = 1.0 / 120;
  c.holdout_mean_sample_fraction = 0.125;
  return c;
}

TEST(CalibrationFileTest, RoundTrip) {
  const std::string path = TempPath("roundtrip.json");
  const Calibration c = Sample();
  ASSERT_TRUE(WriteCalibration(path, c).ok());
  const absl::StatusOr<Calibration> read = ReadCalibration(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->topk_multiplier, c.topk_multiplier);
  EXPECT_EQ(read->normalizer_multiplier, c.normalizer_multiplier);
  EXPECT_EQ(read->lognormal_correction, c.lognormal_correction);
  EXPECT_EQ(read->warmup_fraction, c.warmup_fraction);
  EXPECT_EQ(read->n, c.n);
  EXPECT_EQ(read->d, c.d);
  EXPECT_EQ(read->k, c.k);
  EXPECT_EQ(read->epsilon, c.epsilon);
  EXPECT_EQ(read->delta, c.delta);
  EXPECT_EQ(read->temperature, c.temperature);
  EXPECT_EQ(read->confidence, c.confidence);
  EXPECT_EQ(read->calibration_queries, c.calibration_queries);
  EXPECT_EQ(read->calibration_failures, c.calibration_failures);
  EXPECT_EQ(read->failure_bound, c.failure_bound);
  EXPECT_EQ(read->calibration_mean_sample_fraction, c.calibration_mean_sample_fraction);
  EXPECT_EQ(read->holdout_queries, c.holdout_queries);
  EXPECT_EQ(read->holdout_failures, c.holdout_failures);
  EXPECT_EQ(read->holdout_failure_rate, c.holdout_failure_rate);
  EXPECT_EQ(read->holdout_mean_sample_fraction, c.holdout_mean_sample_fraction);
  std::remove(path.c_str());
}

// Writes Sample() to `path` without `keys` (none of them its last), as files written before
// they were recorded.
void WriteSampleWithout(const std::string& path, std::initializer_list<const char*> keys) {
  ASSERT_TRUE(WriteCalibration(path, Sample()).ok());
  std::ifstream in(path);
  std::string text((std::istreambuf_iterator<char>(in)), {});
  in.close();
  for (const char* key : keys) {
    const size_t at = text.find(absl::StrCat("\"", key, "\""));
    ASSERT_NE(at, std::string::npos) << key;
    text.erase(at, text.find('\n', at) + 1 - at);
  }
  WriteFile(path, text);
}

// Files written before the correction and the warm-up were recorded were calibrated without the
// correction and with the warm-up's default.
TEST(CalibrationFileTest, AMissingCorrectionIsNoneAndAMissingWarmupTheDefault) {
  const std::string path = TempPath("old.json");
  WriteSampleWithout(path, {"lognormal_correction", "warmup_fraction"});
  const absl::StatusOr<Calibration> read = ReadCalibration(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->lognormal_correction, 0.0);
  EXPECT_EQ(read->warmup_fraction, 0.1);
  AdaptiveOptions options{.warmup_fraction = 0.5, .lognormal_correction = 0.7};
  ApplyCalibration(*read, options);
  EXPECT_EQ(options.lognormal_correction, 0.0);
  EXPECT_EQ(options.warmup_fraction, 0.1);
  ApplyCalibration(Sample(), options);
  EXPECT_EQ(options.lognormal_correction, 0.25);
  EXPECT_EQ(options.warmup_fraction, 0.2);
  std::remove(path.c_str());
}

// Files written before the shape was recorded fit any model; a recorded shape must match.
TEST(CalibrationFileTest, TheRecordedShapeMustBeTheModels) {
  const std::string path = TempPath("shape.json");
  WriteSampleWithout(path, {"n", "d"});
  const absl::StatusOr<Calibration> old = ReadCalibration(path);
  ASSERT_TRUE(old.ok()) << old.status();
  EXPECT_EQ(old->n, 0u);
  EXPECT_EQ(old->d, 0u);
  std::remove(path.c_str());

  auto model_of = [](size_t n, size_t d) {
    absl::StatusOr<std::shared_ptr<const Model>> m =
        Model::Create(Matrix::Owned(n, d, Layout::kRowMajor), {});
    EXPECT_TRUE(m.ok()) << m.status();
    return *std::move(m);
  };
  EXPECT_TRUE(CheckCalibrationFits(*old, path, *model_of(7, 3)).ok());
  EXPECT_TRUE(CheckCalibrationFits(Sample(), path, *model_of(500, 64)).ok());
  for (const auto& [n, d] : {std::pair<size_t, size_t>{500, 32}, {499, 64}}) {
    const absl::Status s = CheckCalibrationFits(Sample(), path, *model_of(n, d));
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(s.message(), HasSubstr(absl::StrCat(
                                 "calibrated on a 500 x 64 head, but the model is ", n, " x ", d)));
  }
}

TEST(CalibrationFileTest, MissingFile) {
  const absl::StatusOr<Calibration> read = ReadCalibration(TempPath("does_not_exist.json"));
  EXPECT_EQ(read.status().code(), absl::StatusCode::kNotFound);
}

// Rewrites one key of a valid file (or removes it when `value` is empty).
absl::Status ReadWith(const std::string& key, const std::string& value) {
  const std::string path = TempPath("bad.json");
  EXPECT_TRUE(WriteCalibration(path, Sample()).ok());
  std::ifstream in(path);
  std::string text((std::istreambuf_iterator<char>(in)), {});
  in.close();
  const size_t at = text.find("\"" + key + "\"");
  EXPECT_NE(at, std::string::npos);
  const size_t end = text.find_first_of(",\n}", text.find(':', at));
  if (value.empty()) {
    text.erase(at, end - at + (text[end] == ',' ? 1 : 0));
    // A removed last key leaves a trailing comma; drop it.
    const size_t brace = text.rfind('}');
    const size_t comma = text.find_last_not_of(" \n", brace - 1);
    if (text[comma] == ',') text.erase(comma, 1);
  } else {
    text.replace(at, end - at, "\"" + key + "\": " + value);
  }
  WriteFile(path, text);
  absl::Status status = ReadCalibration(path).status();
  std::remove(path.c_str());
  return status;
}

TEST(CalibrationFileTest, BadFiles) {
  {
    const absl::Status s = ReadWith("normalizer_multiplier", "");
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(s.message(), HasSubstr("normalizer_multiplier: missing"));
    EXPECT_THAT(s.message(), HasSubstr("bad.json"));
  }
  {
    const absl::Status s = ReadWith("topk_multiplier", "\"big\"");
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(s.message(), HasSubstr("topk_multiplier: expected a number"));
  }
  {
    const absl::Status s = ReadWith("topk_multiplier", "0");
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(s.message(), HasSubstr("topk_multiplier: is 0"));
  }
  {
    const absl::Status s = ReadWith("normalizer_multiplier", "-1e-3");
    EXPECT_THAT(s.message(), HasSubstr("normalizer_multiplier: is -0.001"));
  }
  {
    const absl::Status s = ReadWith("lognormal_correction", "1.5");
    EXPECT_THAT(s.message(), HasSubstr("lognormal_correction: is 1.5"));
  }
  {
    const absl::Status s = ReadWith("warmup_fraction", "0");
    EXPECT_THAT(s.message(), HasSubstr("warmup_fraction: is 0 but must be in (0, 1]"));
  }
  {
    const absl::Status s = ReadWith("k", "1.5");
    EXPECT_THAT(s.message(), HasSubstr("k: expected a non-negative integer"));
  }
  {
    const absl::Status s = ReadWith("delta", "1");
    EXPECT_THAT(s.message(), HasSubstr("delta: is 1"));
  }
  {
    const absl::Status s = ReadWith("d", "");
    EXPECT_THAT(s.message(), HasSubstr("d: missing"));
  }
  {
    const absl::Status s = ReadWith("n", "0");
    EXPECT_THAT(s.message(), HasSubstr("n: is 0 but must be >= 1"));
  }
  {
    const absl::Status s = ReadWith("holdout_failures", "500");
    EXPECT_THAT(s.message(), HasSubstr("holdout_failures: exceeds holdout_queries"));
  }
  const std::string path = TempPath("garbage.json");
  WriteFile(path, "{not json");
  EXPECT_THAT(ReadCalibration(path).status().message(), HasSubstr("not valid JSON"));
  WriteFile(path, "[1, 2]");
  EXPECT_THAT(ReadCalibration(path).status().message(), HasSubstr("not a JSON object"));
  std::remove(path.c_str());
}

// A grid of one correction from rows of costs, one row per top-k multiplier; a negative cost
// marks a point that fails far above delta.
CalibrationGrid Grid(const std::vector<std::vector<double>>& costs) {
  CalibrationGrid grid;
  for (const std::vector<double>& row : costs) {
    grid.emplace_back();
    for (double cost : row) grid.back().push_back({{cost >= 0, cost >= 0, cost, 0}});
  }
  return grid;
}

TEST(ChooseGridPointTest, PrefersACheapPairWhoseNeighboursQualify) {
  // (1, 1) is the cheapest, but (0, 1) beside it fails; (3, 3) is cheaper still but at the
  // grid's edge. (2, 2) is the cheapest with four qualifying neighbours.
  CalibrationGrid grid =
      Grid({{0.9, -1, 0.9, 0.9}, {0.8, 0.1, 0.7, 0.8}, {0.8, 0.6, 0.5, 0.4}, {0.9, 0.8, 0.3, 0.2}});
  EXPECT_EQ(ChooseGridPoint(grid), (GridIndex{2, 2, 0}));
  // A neighbour within delta gives a margin without qualifying itself.
  grid[0][1][0].within_delta = true;
  EXPECT_EQ(ChooseGridPoint(grid), (GridIndex{1, 1, 0}));
  // Without (2, 2)'s margin ((2, 3) fails), the cheapest pair with one is (2, 1).
  EXPECT_EQ(
      ChooseGridPoint(Grid(
          {{0.9, -1, 0.9, 0.9}, {0.8, 0.1, 0.7, 0.8}, {0.8, 0.6, 0.5, -1}, {0.9, 0.8, 0.3, 0.2}})),
      (GridIndex{2, 1, 0}));
}

TEST(ChooseGridPointTest, FallsBackToTheCheapestQualifyingPair) {
  // Every qualifying pair has a failing neighbour or lies on the grid's edge.
  EXPECT_EQ(ChooseGridPoint(Grid({{0.9, 0.8, 0.9}, {0.7, -1, 0.3}, {0.9, 0.8, 0.4}})),
            (GridIndex{1, 2, 0}));
  EXPECT_EQ(ChooseGridPoint(Grid({{0.5}})), (GridIndex{0, 0, 0}));
}

TEST(ChooseGridPointTest, NoneWhenNothingQualifiesAndTiesGoFirst) {
  EXPECT_EQ(ChooseGridPoint(Grid({{-1, -1}, {-1, -1}})), std::nullopt);
  EXPECT_EQ(ChooseGridPoint(Grid({{0.5, 0.5}, {0.5, 0.5}})), (GridIndex{0, 0, 0}));
  EXPECT_EQ(ChooseGridPoint(Grid({{0.5, 0.5, 0.5, 0.5},
                                  {0.5, 0.5, 0.5, 0.5},
                                  {0.5, 0.5, 0.5, 0.5},
                                  {0.5, 0.5, 0.5, 0.5}})),
            (GridIndex{1, 1, 0}));
  // An axis of one value asks for no neighbours.
  EXPECT_EQ(ChooseGridPoint(Grid({{0.5, 0.4, 0.5}})), (GridIndex{0, 1, 0}));
}

TEST(ChooseGridPointTest, CorrectionsNeedAMarginThenFewFailures) {
  // 3 x 3 pairs, 4 corrections, every point qualifying; the middle pair is the cheapest.
  CalibrationGrid grid(3, std::vector<std::vector<GridPoint>>(3));
  for (size_t i = 0; i < 3; ++i) {
    for (size_t j = 0; j < 3; ++j) {
      const double cost = i == 1 && j == 1 ? 0.1 : 0.5;
      for (size_t failures : {0, 2, 1, 0}) grid[i][j].push_back({true, true, cost, failures});
    }
  }
  // Corrections 1 and 2 have a margin; of those, 2 failed less. 0 and 3 failed less still but
  // lie on the axis' edge.
  EXPECT_EQ(ChooseGridPoint(grid), (GridIndex{1, 1, 2}));
  // Correction 3 fails for the middle pair: 2 has no margin left, 1 has.
  grid[1][1][3] = {false, false, 0.1, 9};
  EXPECT_EQ(ChooseGridPoint(grid), (GridIndex{1, 1, 1}));
  // A margin is lost when a neighbouring pair fails at that correction.
  grid[0][1][1] = {false, false, 0.5, 9};
  EXPECT_EQ(ChooseGridPoint(grid), (GridIndex{1, 1, 0}));
}

TEST(ChooseGridPointTest, EqualFailuresGoToTheSmallerError) {
  // One pair, four corrections: 1 and 2 have a margin and fail as often; 2 estimates better.
  CalibrationGrid grid(1, std::vector<std::vector<GridPoint>>(1));
  for (double error : {0.1, 0.3, 0.2, 0.05}) grid[0][0].push_back({true, true, 0.5, 0, error});
  EXPECT_EQ(ChooseGridPoint(grid), (GridIndex{0, 0, 2}));
}

class CalibrateTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    SynthOptions options;
    options.n = 2000;
    options.d = 64;
    options.queries = 400;
    options.seed = 7;
    absl::StatusOr<SynthData> data = Synthesize(options);
    ASSERT_TRUE(data.ok()) << data.status();
    absl::StatusOr<std::shared_ptr<const Model>> model =
        Model::Create(std::move(data->weights), std::move(data->bias));
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = new std::shared_ptr<const Model>(*std::move(model));
    queries_ = new Matrix(std::move(data->queries));
  }
  static void TearDownTestSuite() {
    delete model_;
    delete queries_;
  }

  static QueryOptions Options() {
    QueryOptions q;
    q.k = 1;
    q.epsilon = 0.3;
    q.delta = 0.05;
    return q;
  }

  // A copy of the first `rows` queries.
  static Matrix FirstRows(size_t rows) {
    Matrix m = Matrix::Owned(rows, queries_->cols(), Layout::kRowMajor);
    for (size_t r = 0; r < rows; ++r) {
      for (size_t c = 0; c < queries_->cols(); ++c) {
        m.mutable_data()[r * queries_->cols() + c] = queries_->at(r, c);
      }
    }
    return m;
  }

  static std::shared_ptr<const Model>* model_;
  static Matrix* queries_;
};

std::shared_ptr<const Model>* CalibrateTest::model_ = nullptr;
Matrix* CalibrateTest::queries_ = nullptr;

TEST_F(CalibrateTest, ChoosesMultipliersWithinTheBound) {
  CalibrationOptions options;
  options.threads = 2;
  const absl::StatusOr<Calibration> c =
      Calibrate(*model_, *queries_, Options(), AdaptiveOptions{}, options);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->calibration_queries, 280u);
  EXPECT_EQ(c->holdout_queries, 120u);
  EXPECT_LE(c->failure_bound, 0.05);
  EXPECT_DOUBLE_EQ(c->failure_bound, ClopperPearsonUpper(c->calibration_failures, 280, 0.95));
  EXPECT_GT(c->topk_multiplier, 0);
  EXPECT_GT(c->normalizer_multiplier, 0);
  EXPECT_GT(c->calibration_mean_sample_fraction, 0);
  EXPECT_LE(c->calibration_mean_sample_fraction, 1);
  EXPECT_GT(c->holdout_mean_sample_fraction, 0);
  EXPECT_DOUBLE_EQ(c->holdout_failure_rate, c->holdout_failures / 120.0);
  EXPECT_EQ(c->delta, 0.05);
  EXPECT_EQ(c->k, 1u);
  EXPECT_EQ(c->n, (*model_)->n());
  EXPECT_EQ(c->d, (*model_)->d());
  EXPECT_THAT(options.correction_grid, ::testing::Contains(c->lognormal_correction));
  EXPECT_EQ(c->warmup_fraction, AdaptiveOptions{}.warmup_fraction);

  // Reproducible, whatever the thread count; every query samples, whatever the base's bounds;
  // the base's correction plays no part.
  options.threads = 1;
  const absl::StatusOr<Calibration> again = Calibrate(
      *model_, *queries_, Options(),
      AdaptiveOptions{.lognormal_correction = 0.9, .min_epsilon = 0.9, .min_delta = 0.5}, options);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->topk_multiplier, c->topk_multiplier);
  EXPECT_EQ(again->normalizer_multiplier, c->normalizer_multiplier);
  EXPECT_EQ(again->lognormal_correction, c->lognormal_correction);
  EXPECT_EQ(again->calibration_failures, c->calibration_failures);
  EXPECT_EQ(again->calibration_mean_sample_fraction, c->calibration_mean_sample_fraction);
  EXPECT_EQ(again->holdout_failures, c->holdout_failures);
}

// The multipliers are calibrated with the base's warm-up, and hold with it alone.
TEST_F(CalibrateTest, RecordsTheWarmupItRanWith) {
  CalibrationOptions options;
  options.topk_grid = {1};
  options.normalizer_grid = {1};
  options.correction_grid = {0};
  options.threads = 2;
  const absl::StatusOr<Calibration> narrow =
      Calibrate(*model_, *queries_, Options(), AdaptiveOptions{.warmup_fraction = 0.05}, options);
  const absl::StatusOr<Calibration> wide =
      Calibrate(*model_, *queries_, Options(), AdaptiveOptions{.warmup_fraction = 0.5}, options);
  ASSERT_TRUE(narrow.ok()) << narrow.status();
  ASSERT_TRUE(wide.ok()) << wide.status();
  EXPECT_EQ(narrow->warmup_fraction, 0.05);
  EXPECT_EQ(wide->warmup_fraction, 0.5);
  // A warm-up reading half the columns of every arm reads more than one reading a twentieth.
  EXPECT_GT(wide->calibration_mean_sample_fraction, narrow->calibration_mean_sample_fraction);
}

TEST_F(CalibrateTest, TooFewQueriesNamesTheNeededCount) {
  const Matrix few = FirstRows(50);  // 35 calibration queries; delta 0.05 needs 59
  const absl::StatusOr<Calibration> c =
      Calibrate(*model_, few, Options(), AdaptiveOptions{}, CalibrationOptions{});
  EXPECT_EQ(c.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(c.status().message(), HasSubstr("at least 59 calibration queries"));
  EXPECT_THAT(c.status().message(), HasSubstr("84 queries in total"));
}

TEST_F(CalibrateTest, InvalidOptionsNameTheField) {
  const Matrix few = FirstRows(100);
  CalibrationOptions options;
  options.holdout_fraction = 1.5;
  EXPECT_THAT(Calibrate(*model_, few, Options(), {}, options).status().message(),
              HasSubstr("holdout_fraction"));
  options = CalibrationOptions{};
  options.confidence = 0;
  EXPECT_THAT(Calibrate(*model_, few, Options(), {}, options).status().message(),
              HasSubstr("confidence"));
  options = CalibrationOptions{};
  options.topk_grid = {0.1, -1};
  EXPECT_THAT(Calibrate(*model_, few, Options(), {}, options).status().message(),
              HasSubstr("topk_grid"));
  options = CalibrationOptions{};
  options.normalizer_grid = {};
  EXPECT_THAT(Calibrate(*model_, few, Options(), {}, options).status().message(),
              HasSubstr("normalizer_grid"));
  options = CalibrationOptions{};
  options.correction_grid = {0, 1.5};
  EXPECT_THAT(Calibrate(*model_, few, Options(), {}, options).status().message(),
              HasSubstr("correction_grid: holds 1.5"));
  options.correction_grid = {};
  EXPECT_THAT(Calibrate(*model_, few, Options(), {}, options).status().message(),
              HasSubstr("correction_grid: is empty"));
  const Matrix one = FirstRows(1);
  const absl::Status s = Calibrate(*model_, one, Options(), {}, CalibrationOptions{}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("queries"));
  QueryOptions bad_k = Options();
  bad_k.k = 0;
  EXPECT_THAT(Calibrate(*model_, few, bad_k, {}, CalibrationOptions{}).status().message(),
              HasSubstr("k:"));
}

}  // namespace
}  // namespace adasoftmax
