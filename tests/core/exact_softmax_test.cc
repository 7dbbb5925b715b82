#include "core/exact_softmax.h"

#include <cmath>
#include <vector>

#include "core/pac.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/core/test_models.h"

namespace adasoftmax {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Every dtype: half-precision models are compared with double precision on their own rounded
// weights (ComputeReference reads the model).
class ExactSoftmaxTest : public ::testing::TestWithParam<DType> {};

TEST_P(ExactSoftmaxTest, MatchesNaiveDoublePrecisionSoftmaxOnTheOcrHead) {
  testing::ModelAndQueries head = testing::OcrHead(GetParam());
  const ExactSoftmax exact(head.model);
  for (size_t q = 0; q < 50; ++q) {
    for (double temperature : {1.0, 0.5}) {
      const Query query{head.query(q), {.k = 5, .temperature = temperature}};
      absl::StatusOr<TopKResult> result = exact.Answer(query);
      ASSERT_TRUE(result.ok()) << result.status();
      const ReferenceAnswer ref = ComputeReference(*head.model, query.x, temperature);
      EXPECT_NEAR(result->log_partition, ref.log_partition, 1e-4);
      EXPECT_TRUE(MeetsPac(*result, ref, 5, 1e-3));
      for (size_t r = 0; r < 5; ++r) {
        EXPECT_NEAR(result->logits[r], ref.logits[result->indices[r]], 1e-4);
        if (r > 0) EXPECT_GE(result->logits[r - 1], result->logits[r]);
      }
      EXPECT_EQ(result->sample_fraction, 1.0);
      EXPECT_TRUE(result->exact);
    }
  }
}

// 20 queries: a group of 16 and one of 4 per SGEMM block of rows, the last block partial.
TEST_P(ExactSoftmaxTest, BatchAnswersEqualSingleAnswers) {
  testing::ModelAndQueries head = testing::OcrHead(GetParam());
  const ExactSoftmax exact(head.model);
  std::vector<Query> batch;
  for (size_t q = 0; q < 20; ++q) batch.push_back({head.query(q), {.k = 3}});
  const std::vector<TopKResult> together = exact.Run(batch);
  ASSERT_EQ(together.size(), batch.size());
  for (size_t q = 0; q < batch.size(); ++q) {
    const TopKResult alone = exact.Run({&batch[q], 1})[0];
    EXPECT_EQ(together[q].indices, alone.indices);
    EXPECT_NEAR(together[q].log_partition, alone.log_partition, 1e-4);
    // Each answer read the whole matrix, in its dtype.
    const Model& m = *head.model;
    EXPECT_EQ(together[q].bytes_touched, m.n() * m.d() * ElementBytes(GetParam()));
  }
}

// A single query's products, per dtype: by SGEMV on a head in cache, by RowsDotVector on one of
// kStreamMinBytes or more; within float rounding of the bare SGEMV either way.
TEST_P(ExactSoftmaxTest, SingleQueryProductsMatchTheBareSgemvInCacheAndFromMemory) {
  constexpr size_t kD = 1024;
  const size_t row_bytes = kD * ElementBytes(GetParam());
  for (const size_t n : {size_t{600}, kStreamMinBytes / row_bytes + 1}) {
    const testing::ModelAndQueries head =
        testing::SynthHead({.n = n, .d = kD, .queries = 3, .seed = 5}, GetParam());
    const Model& m = *head.model;
    std::vector<float> raw(n), sgemv(n);
    for (size_t q = 0; q < 3; ++q) {
      const Query query{head.query(q), {}};
      RawProducts(m, {&query, 1}, absl::MakeSpan(raw));
      SgemvProducts(m, query.x, absl::MakeSpan(sgemv));
      size_t off = 0;
      for (size_t i = 0; i < n; ++i) {
        off += !(std::abs(raw[i] - sgemv[i]) <= 1e-4f * (1 + std::abs(sgemv[i])));
      }
      EXPECT_EQ(off, 0) << "n " << n << ", query " << q << ": row 0 " << raw[0] << " against "
                        << sgemv[0];
    }
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, ExactSoftmaxTest,
                         ::testing::Values(DType::kFloat32, DType::kFloat16, DType::kBFloat16),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return std::string(DTypeName(info.param));
                         });

TEST(SoftmaxTopKTest, BreaksTiesByLowerIndexAndHandlesKEqualsN) {
  const std::vector<float> raw = {1, 3, 3, 0, 3};
  const TopKResult top = SoftmaxTopK(raw, {}, 1.0, 2);
  EXPECT_THAT(top.indices, ElementsAre(1, 2));
  const TopKResult all = SoftmaxTopK(raw, {}, 1.0, 5);
  EXPECT_THAT(all.indices, ElementsAre(1, 2, 4, 0, 3));
  // The exponentials are floats (relative error about 1e-7, as the products'), summed in double.
  double total = 0;
  for (double p : all.probabilities) total += p;
  EXPECT_NEAR(total, 1.0, 1e-6);
  const double z = std::log(std::exp(1.0) + 3 * std::exp(3.0) + 1.0);
  EXPECT_NEAR(all.log_partition, z, 1e-6);
}

TEST(SoftmaxTopKTest, TemperaturesPastFloatsRangeKeepFiniteAnswers) {
  const std::vector<float> raw = {1, 3, 2, -4};
  const std::vector<float> bias = {0, 0, 0.5f, 0};
  for (double temperature : {1e38, 1e300}) {
    const TopKResult top = SoftmaxTopK(raw, bias, temperature, 2);
    EXPECT_THAT(top.indices, ElementsAre(1, 2)) << temperature;
    EXPECT_THAT(top.probabilities, ElementsAre(1.0, 0.0)) << temperature;
    EXPECT_EQ(top.logits[0], 3 * temperature) << temperature;
    EXPECT_EQ(top.log_partition, 3 * temperature) << temperature;
  }
}

TEST(ValidateQueryTest, EachInvalidInputGetsItsOwnError) {
  testing::ModelAndQueries head = testing::OcrHead();
  const Model& model = *head.model;
  std::vector<float> x(head.query(0).begin(), head.query(0).end());
  auto error = [&](absl::Span<const float> query, QueryOptions options) {
    return ValidateQuery(model, {query, options});
  };
  EXPECT_TRUE(error(x, {}).ok());
  EXPECT_THAT(error(absl::MakeConstSpan(x).subspan(1), {}).message(),
              HasSubstr("query: has 119 entries but the model has d = 120"));
  EXPECT_THAT(error(x, {.k = 0}).message(), HasSubstr("k: is 0"));
  EXPECT_THAT(error(x, {.k = 6626}).message(),
              HasSubstr("k: is 6626 but must be in [1, n = 6625]"));
  EXPECT_THAT(error(x, {.epsilon = 0}).message(), HasSubstr("epsilon"));
  EXPECT_THAT(error(x, {.epsilon = 1}).message(), HasSubstr("epsilon"));
  EXPECT_THAT(error(x, {.delta = 0}).message(), HasSubstr("delta"));
  EXPECT_THAT(error(x, {.delta = 1.5}).message(), HasSubstr("delta"));
  EXPECT_THAT(error(x, {.temperature = 0}).message(), HasSubstr("temperature"));
  EXPECT_THAT(error(x, {.temperature = -1}).message(), HasSubstr("temperature"));
  EXPECT_THAT(error(x, {.temperature = INFINITY}).message(), HasSubstr("temperature"));
  for (float bad : {NAN, INFINITY}) {
    x[7] = bad;
    EXPECT_THAT(error(x, {}).message(), HasSubstr("query: entry 7"));
  }
  EXPECT_EQ(error(x, {}).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace adasoftmax
