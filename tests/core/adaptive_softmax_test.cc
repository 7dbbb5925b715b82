#include "core/adaptive_softmax.h"

#include <cmath>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

#include "core/arm_kernels.h"
#include "core/exact_softmax.h"
#include "core/pac.h"
#include "core/worker_pool.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/core/test_models.h"

namespace adasoftmax {
namespace {

using ::testing::Each;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

testing::ModelAndQueries HeavyHead() {
  return testing::SynthHead({.n = 4000, .d = 256, .queries = 20, .seed = 3, .heavy_tailed = true});
}

bool SameBits(const TopKResult& a, const TopKResult& b) {
  auto same = [](const std::vector<double>& x, const std::vector<double>& y) {
    return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * 8) == 0;
  };
  return a.indices == b.indices && same(a.probabilities, b.probabilities) &&
         same(a.logits, b.logits) && a.samples == b.samples &&
         a.bytes_touched == b.bytes_touched &&
         std::memcmp(&a.log_partition, &b.log_partition, 8) == 0;
}

TEST(AdaptiveSoftmaxTest, SameSeedSameAnswerBitForBit) {
  testing::ModelAndQueries head = HeavyHead();
  const AdaptiveSoftmax adaptive(head.model);
  for (size_t q = 0; q < 5; ++q) {
    const Query query{head.query(q), {.k = 2, .seed = 42 + q}};
    EXPECT_TRUE(SameBits(*adaptive.Answer(query), *adaptive.Answer(query)));
  }
}

TEST(AdaptiveSoftmaxTest, NoSeedDrawsAFreshOrderPerQuery) {
  testing::ModelAndQueries head = HeavyHead();
  const AdaptiveSoftmax adaptive(head.model);
  const Query query{head.query(0), {}};
  // Different orders read different numbers of entries; 8 identical counts would mean one order.
  std::vector<uint64_t> samples;
  for (int r = 0; r < 8; ++r) samples.push_back(adaptive.Answer(query)->samples);
  EXPECT_NE(std::count(samples.begin(), samples.end(), samples[0]), 8);
}

TEST(AdaptiveSoftmaxTest, ReadsLessThanTheMatrixAndCountsExactWinnerRows) {
  testing::ModelAndQueries head = HeavyHead();
  const AdaptiveSoftmax adaptive(head.model);
  const Model& m = *head.model;
  for (size_t q = 0; q < 10; ++q) {
    const TopKResult r = *adaptive.Answer({head.query(q), {.k = 3, .seed = q + 1}});
    EXPECT_GE(r.samples, 3 * m.d());  // the winners' rows at least
    EXPECT_LT(r.sample_fraction, 1.0);
    EXPECT_DOUBLE_EQ(r.sample_fraction, double(r.samples) / (m.n() * m.d()));
    // Every sample is touched, and sweeps also touch arms that no longer need the columns.
    EXPECT_GT(r.bytes_touched, r.samples * sizeof(float));
    const ReferenceAnswer ref = ComputeReference(m, head.query(q), 1.0);
    for (size_t i = 0; i < 3; ++i) {
      EXPECT_NEAR(r.logits[i], ref.logits[r.indices[i]], 1e-9);  // winners are exact
    }
  }
}

TEST(AdaptiveSoftmaxTest, EliminationKeepsTheBestArm) {
  testing::ModelAndQueries head = testing::OcrHead();
  const AdaptiveSoftmax adaptive(head.model);
  const ExactSoftmax exact(head.model);
  int agree = 0;
  for (size_t q = 0; q < 200; ++q) {
    const Query query{head.query(q), {.seed = q + 1}};
    agree += adaptive.Answer(query)->indices[0] == exact.Answer(query)->indices[0];
  }
  // delta = 0.01: more than 6 misses in 200 has probability < 1e-4 under the guarantee.
  EXPECT_GE(agree, 194);
}

TEST(AdaptiveSoftmaxTest, TerminatesOnExactTiesAndPrefersLowerIndices) {
  // Rows 2, 5 and 7 are identical and the largest: any k-subset of them is a true top-k.
  Matrix a = Matrix::Owned(10, 8, Layout::kRowMajor);
  for (size_t i = 0; i < 10; ++i) {
    for (size_t j = 0; j < 8; ++j) {
      const bool top = i == 2 || i == 5 || i == 7;
      a.mutable_data()[i * 8 + j] = top ? 1.0f : 0.1f * static_cast<float>(i % 3);
    }
  }
  auto model = *Model::Create(std::move(a), {});
  const std::vector<float> x(8, 1.0f);
  const AdaptiveSoftmax adaptive(model);
  const TopKResult r = *adaptive.Answer({x, {.k = 2, .seed = 9}});
  EXPECT_EQ(r.indices, (std::vector<uint32_t>{2, 5}));
  EXPECT_TRUE(MeetsPac(r, ComputeReference(*model, x, 1.0), 2, 0.3));
}

TEST(AdaptiveSoftmaxTest, AnyKFromOneToN) {
  testing::ModelAndQueries head = testing::SynthHead({.n = 50, .d = 32, .queries = 2, .seed = 5});
  const AdaptiveSoftmax adaptive(head.model);
  for (uint32_t k : {1u, 7u, 49u, 50u}) {
    const TopKResult r = *adaptive.Answer({head.query(0), {.k = k, .seed = 3}});
    EXPECT_EQ(r.indices.size(), k);
    EXPECT_TRUE(MeetsPac(r, ComputeReference(*head.model, head.query(0), 1.0), k, 0.3)) << k;
  }
  // k = n reads every row exactly.
  EXPECT_TRUE(adaptive.Answer({head.query(1), {.k = 50, .seed = 3}})->exact);
}

TEST(AdaptiveSoftmaxTest, AllZeroQueryIsExactFromTheBiasAlone) {
  testing::ModelAndQueries head = testing::OcrHead();
  const AdaptiveSoftmax adaptive(head.model);
  const std::vector<float> zero(head.model->d(), 0.0f);
  const TopKResult r = *adaptive.Answer({zero, {.k = 3}});
  EXPECT_TRUE(MeetsPac(r, ComputeReference(*head.model, zero, 1.0), 3, 1e-6));
}

TEST(AdaptiveSoftmaxTest, NormaliserMeetsEpsilonWithTemperatureAndBias) {
  testing::ModelAndQueries head = testing::OcrHead();
  const AdaptiveSoftmax adaptive(head.model);
  int failures = 0;
  for (size_t q = 0; q < 300; ++q) {
    for (double epsilon : {0.3, 0.05}) {
      const Query query{head.query(q), {.epsilon = epsilon, .temperature = 0.7, .seed = q + 1}};
      const TopKResult r = *adaptive.Answer(query);
      const ReferenceAnswer ref = ComputeReference(*head.model, query.x, 0.7);
      failures += std::fabs(r.log_partition - ref.log_partition) > std::log1p(epsilon);
    }
  }
  // 600 queries at delta = 0.01: more than 15 failures has probability < 1e-4.
  EXPECT_LE(failures, 15);
}

// The correction changes what the samples estimate Z to, not the samples: each arm's term
// exp(estimate) becomes exp(estimate - c variance / 2), so log Z falls, by at most c / 2 times
// the largest variance of an arm not computed exactly, and not at all when every arm is exact.
TEST(AdaptiveSoftmaxTest, LognormalCorrectionLowersTheEstimatedPartitionOnly) {
  testing::ModelAndQueries head = HeavyHead();
  const AdaptiveSoftmax plain(head.model);
  const AdaptiveSoftmax corrected(head.model, {.lognormal_correction = 0.5});
  int lower = 0;
  for (size_t q = 0; q < 10; ++q) {
    const Query query{head.query(q), {.k = 2, .seed = 5 + q}};
    const TopKResult a = *plain.Answer(query), b = *corrected.Answer(query);
    EXPECT_EQ(a.samples, b.samples);
    EXPECT_EQ(a.indices, b.indices);
    EXPECT_EQ(a.logits, b.logits);
    EXPECT_LE(b.log_partition, a.log_partition);
    lower += b.log_partition < a.log_partition - 1e-6;
    for (size_t i = 0; i < 2; ++i) {
      EXPECT_NEAR(std::log(b.probabilities[i]), b.logits[i] - b.log_partition, 1e-9);
    }
  }
  EXPECT_EQ(lower, 10);
  const uint32_t n = static_cast<uint32_t>(head.model->n());
  const Query all{head.query(0), {.k = n, .seed = 5}};
  EXPECT_EQ(plain.Answer(all)->log_partition, corrected.Answer(all)->log_partition);
}

// One sampling run scores several corrections: each log partition is the one a run with that
// correction gives, bit for bit; queries answered exactly get their exact one for each.
TEST(AdaptiveSoftmaxTest, RunWithCorrectionsGivesEachCorrectionsPartition) {
  testing::ModelAndQueries head = HeavyHead();
  const std::vector<double> corrections = {0, 0.3, 1};
  std::vector<Query> batch;
  for (size_t q = 0; q < 4; ++q) batch.push_back({head.query(q), {.seed = 3 + q}});
  batch.push_back({head.query(4), {.epsilon = 0.01, .seed = 9}});  // below min_epsilon: exact
  const AdaptiveSoftmax adaptive(head.model, {.lognormal_correction = 0.5, .min_epsilon = 0.1});
  std::vector<std::vector<double>> log_partitions;
  const std::vector<TopKResult> results =
      adaptive.RunWithCorrections(batch, corrections, log_partitions);
  ASSERT_EQ(log_partitions.size(), batch.size());
  EXPECT_EQ(results[0].log_partition, adaptive.Run(batch)[0].log_partition);
  for (size_t l = 0; l < corrections.size(); ++l) {
    const AdaptiveSoftmax alone(head.model,
                                {.lognormal_correction = corrections[l], .min_epsilon = 0.1});
    const std::vector<TopKResult> expected = alone.Run(batch);
    for (size_t q = 0; q < batch.size(); ++q) {
      ASSERT_EQ(log_partitions[q].size(), corrections.size());
      EXPECT_EQ(log_partitions[q][l], expected[q].log_partition) << q << " " << l;
      EXPECT_EQ(results[q].samples, expected[q].samples);
    }
  }
  EXPECT_TRUE(results[4].exact);
  EXPECT_LT(log_partitions[0][2], log_partitions[0][0]);
}

// Options that sample a whole batch together, whatever its sampling state weighs and whatever
// sharing costs.
constexpr AdaptiveOptions kOneGroup = {.sampling_memory_fraction = 1e6,
                                       .max_sharing_loss = INFINITY};

TEST(AdaptiveSoftmaxTest, BatchSharesOneOrderAndKeepsEachQuerysGuarantee) {
  testing::ModelAndQueries head = HeavyHead();
  const AdaptiveSoftmax adaptive(head.model, kOneGroup);
  ASSERT_GE(adaptive.SamplingGroupSize(), 16u);
  std::vector<Query> batch;
  for (size_t q = 0; q < 16; ++q)
    batch.push_back({head.query(q), {.k = static_cast<uint32_t>(1 + q % 3), .seed = 11}});
  const std::vector<TopKResult> results = adaptive.Run(batch);
  ASSERT_EQ(results.size(), batch.size());
  int failures = 0;
  for (size_t q = 0; q < batch.size(); ++q) {
    failures += !MeetsPac(results[q], ComputeReference(*head.model, batch[q].x, 1.0),
                          batch[q].options.k, 0.3);
  }
  EXPECT_LE(failures, 1);
  // Same seed for the whole batch: reproducible too.
  const std::vector<TopKResult> again = adaptive.Run(batch);
  for (size_t q = 0; q < batch.size(); ++q) EXPECT_TRUE(SameBits(results[q], again[q]));
}

// Three chunks of arms, the last one partial, pulled in parallel: the chunks' parts of every
// reduction (the references' candidates, the normaliser's sums, the partition function, the
// fallback's predictions) are combined in chunk order, so the answers do not depend on which
// thread pulled which chunk.
TEST(AdaptiveSoftmaxTest, ChunksPulledInParallelGiveTheSameAnswersBitForBit) {
  testing::ModelAndQueries head =
      testing::SynthHead({.n = 2 * kChunk + 1000, .d = 64, .queries = 8, .seed = 9,
                          .heavy_tailed = true});
  ASSERT_GE(head.model->n() * head.model->d(), kParallelMinEntries);
  for (double sample_cost : {0.0, 3.0}) {
    const AdaptiveSoftmax adaptive(head.model, {.sample_cost = sample_cost,
                                                .sampling_memory_fraction = 1e6,
                                                .max_sharing_loss = INFINITY});
    std::vector<Query> batch;
    for (size_t q = 0; q < 8; ++q) batch.push_back({head.query(q), {.k = 2, .seed = 13}});
    const std::vector<TopKResult> results = adaptive.Run(batch);
    int failures = 0;
    for (size_t q = 0; q < batch.size(); ++q) {
      failures += !MeetsPac(results[q], ComputeReference(*head.model, batch[q].x, 1.0), 2, 0.3);
    }
    EXPECT_LE(failures, 1) << sample_cost;
    for (int repeat = 0; repeat < 3; ++repeat) {
      const std::vector<TopKResult> again = adaptive.Run(batch);
      for (size_t q = 0; q < batch.size(); ++q) {
        EXPECT_TRUE(SameBits(results[q], again[q])) << sample_cost << " " << q;
      }
    }
  }
}

// With at least as many groups as threads, whole rounds of groups are sampled side by side, one
// a thread, and the rest one at a time, each by all the threads: every answer is the one its
// query gets alone.
TEST(AdaptiveSoftmaxTest, GroupsSampledSideBySideGiveTheAnswersEachGetsAlone) {
  if (ParallelWidth() < 2) GTEST_SKIP() << "one thread: groups are never side by side";
  testing::ModelAndQueries head = testing::SynthHead(
      {.n = 2 * kChunk + 1000, .d = 64, .queries = 8, .seed = 4, .heavy_tailed = true});
  ASSERT_GE(head.model->n() * head.model->d(), kParallelMinEntries);
  const AdaptiveSoftmax alone(head.model, {.sampling_memory_fraction = 0});
  std::vector<Query> batch;
  for (size_t q = 0; q < 8; ++q) batch.push_back({head.query(q), {.k = 2, .seed = 20 + q}});
  for (size_t size : {2, 3, 8}) {
    const absl::Span<const Query> part = absl::MakeConstSpan(batch).first(size);
    const std::vector<TopKResult> results = alone.Run(part);
    for (size_t q = 0; q < size; ++q) {
      EXPECT_TRUE(SameBits(results[q], alone.Run({&part[q], 1})[0])) << size << " " << q;
    }
  }
}

// A batch is sampled in groups of SamplingGroupSize() queries, in order, each group with its
// own order: every answer is the one its group alone gets.
TEST(AdaptiveSoftmaxTest, SampledQueriesShareAnOrderInGroupsTheMemoryFractionBounds) {
  testing::ModelAndQueries head = HeavyHead();
  const AdaptiveSoftmax grouped(head.model,
                                {.sampling_memory_fraction = 1, .max_sharing_loss = INFINITY});
  const size_t size = grouped.SamplingGroupSize();
  // Each query's state holds at least its sums, 2 x kBins floats an arm.
  const size_t weight_bytes = head.model->n() * head.model->d() * sizeof(float);
  EXPECT_LE(size * 2 * kBins * sizeof(float) * head.model->n(), weight_bytes);
  ASSERT_GE(size, 2u);
  std::vector<Query> batch;
  for (size_t q = 0; q < size + 1; ++q) batch.push_back({head.query(q), {.seed = 5}});
  const std::vector<TopKResult> results = grouped.Run(batch);
  const std::vector<TopKResult> first = grouped.Run(absl::MakeConstSpan(batch).first(size));
  for (size_t q = 0; q < size; ++q) EXPECT_TRUE(SameBits(results[q], first[q])) << q;
  const TopKResult& last = results[size];
  EXPECT_TRUE(SameBits(last, grouped.Run({&batch[size], 1})[0]));
  // One group for the whole batch: the last query shares the others' order.
  EXPECT_FALSE(SameBits(last, AdaptiveSoftmax(head.model, kOneGroup).Run(batch)[size]));
  // Fraction 0: every query alone.
  const AdaptiveSoftmax alone(head.model, {.sampling_memory_fraction = 0});
  EXPECT_EQ(alone.SamplingGroupSize(), 1u);
  const std::vector<TopKResult> each = alone.Run(batch);
  for (size_t q = 0; q < batch.size(); ++q) {
    EXPECT_TRUE(SameBits(each[q], alone.Run({&batch[q], 1})[0])) << q;
  }
}

// Six proportional queries on the first half of the columns and one on the other half: the
// batch's weights cost each of the six a sharing loss of 7/6, and the seventh 7.
TEST(AdaptiveSoftmaxTest, QueriesThatSharingWouldCostTooMuchAreSampledAlone) {
  testing::ModelAndQueries head = HeavyHead();
  const size_t d = head.model->d();
  std::vector<std::vector<float>> xs;
  for (int c = 1; c <= 6; ++c) {
    std::vector<float> x(head.query(0).begin(), head.query(0).end());
    for (size_t j = 0; j < d; ++j) x[j] = j < d / 2 ? c * x[j] : 0.0f;
    xs.push_back(std::move(x));
  }
  std::vector<float> other(head.query(1).begin(), head.query(1).end());
  std::fill(other.begin(), other.begin() + d / 2, 0.0f);
  xs.push_back(std::move(other));
  std::vector<Query> batch;
  for (const std::vector<float>& x : xs) batch.push_back({x, {.seed = 7}});
  const absl::Span<const Query> six = absl::MakeConstSpan(batch).first(6);

  const AdaptiveSoftmax adaptive(head.model, {.sampling_memory_fraction = 1e6});
  ASSERT_EQ(adaptive.options().max_sharing_loss, kDefaultMaxSharingLoss);
  const std::vector<TopKResult> results = adaptive.Run(batch);
  EXPECT_TRUE(SameBits(results[6], adaptive.Run({&batch[6], 1})[0]));
  const std::vector<TopKResult> together = adaptive.Run(six);
  for (size_t q = 0; q < 6; ++q) EXPECT_TRUE(SameBits(results[q], together[q])) << q;

  // Unbounded, the seventh's columns enter the six's order.
  const std::vector<TopKResult> all = AdaptiveSoftmax(head.model, kOneGroup).Run(batch);
  EXPECT_FALSE(SameBits(all[0], together[0]));
  // Bounded at 7/6 less a little, each query goes alone.
  const AdaptiveSoftmax alone(head.model,
                              {.sampling_memory_fraction = 1e6, .max_sharing_loss = 1.16});
  const std::vector<TopKResult> each = alone.Run(batch);
  for (size_t q = 0; q < 6; ++q) {
    EXPECT_TRUE(SameBits(each[q], alone.Run({&batch[q], 1})[0])) << q;
  }
}

TEST(AdaptiveSoftmaxTest, AStoppedQueryStopsWorkingAndLeavesItsNeighboursAlone) {
  testing::ModelAndQueries head = HeavyHead();
  const AdaptiveSoftmax adaptive(head.model, kOneGroup);
  std::vector<Query> batch;
  for (size_t q = 0; q < 6; ++q) batch.push_back({head.query(q), {.seed = 3}});
  int polls = 0;
  batch[2].stop = [&polls] { return ++polls > 1; };  // stops after the warm-up
  const std::vector<TopKResult> results = adaptive.Run(batch);
  EXPECT_TRUE(results[2].indices.empty());
  EXPECT_GT(polls, 1);
  batch[2].stop = nullptr;
  const TopKResult finished = adaptive.Run({&batch[2], 1})[0];
  EXPECT_LT(results[2].samples, finished.samples);
  for (size_t q : {0u, 1u, 3u, 4u, 5u}) {
    EXPECT_TRUE(MeetsPac(results[q], ComputeReference(*head.model, batch[q].x, 1.0), 1, 0.3)) << q;
  }
}

TEST(AdaptiveSoftmaxTest, ExpensiveSamplingFallsBackToTheExactAnswer) {
  testing::ModelAndQueries head = HeavyHead();
  const AdaptiveSoftmax adaptive(head.model, {.sample_cost = 1e9});
  const ExactSoftmax exact(head.model);
  std::vector<Query> batch;
  for (size_t q = 0; q < 4; ++q) batch.push_back({head.query(q), {.k = 2, .seed = 5}});
  batch[3].stop = [] { return true; };
  const std::vector<TopKResult> results = adaptive.Run(batch);
  // The three that fell back are answered together, as one exact batch.
  const std::vector<TopKResult> want_all = exact.Run(absl::MakeConstSpan(batch).first(3));
  const Model& m = *head.model;
  for (size_t q = 0; q < 3; ++q) {
    const TopKResult& want = want_all[q];
    EXPECT_TRUE(results[q].exact);
    EXPECT_EQ(results[q].samples, m.n() * m.d());
    EXPECT_EQ(results[q].bytes_touched, m.n() * m.d() * sizeof(float));  // nothing sampled first
    EXPECT_EQ(results[q].indices, want.indices);
    EXPECT_EQ(results[q].logits, want.logits);
    EXPECT_EQ(results[q].log_partition, want.log_partition);
  }
  EXPECT_TRUE(results[3].indices.empty());  // a stopped query is not answered exactly instead
}

TEST(AdaptiveSoftmaxTest, CheapSamplingNeverFallsBack) {
  testing::ModelAndQueries head = HeavyHead();
  const AdaptiveSoftmax plain(head.model);
  const AdaptiveSoftmax cheap(head.model, {.sample_cost = 1e-6});
  for (size_t q = 0; q < 5; ++q) {
    const Query query{head.query(q), {.seed = 7 + q}};
    const TopKResult r = *cheap.Answer(query);
    EXPECT_FALSE(r.exact);
    EXPECT_TRUE(SameBits(r, *plain.Answer(query)));
  }
}

TEST(AdaptiveSoftmaxTest, CostlierSamplingFallsBackMoreOftenAndStaysCorrect) {
  testing::ModelAndQueries head = HeavyHead();
  const uint64_t pass_bytes = head.model->n() * head.model->d() * sizeof(float);
  int previous = -1;
  int sampled_first = 0;  // fallbacks that sampled before they fell back
  for (double cost : {1.0, 4.0, 16.0, 64.0, 1e9}) {
    const AdaptiveSoftmax adaptive(head.model, {.sample_cost = cost});
    int fallbacks = 0;
    for (size_t q = 0; q < head.queries.rows(); ++q) {
      const Query query{head.query(q), {.seed = 100 + q}};
      const TopKResult r = *adaptive.Answer(query);
      fallbacks += r.exact;
      if (r.exact) {
        EXPECT_GE(r.bytes_touched, pass_bytes);
        sampled_first += r.bytes_touched > pass_bytes;
      }
      EXPECT_TRUE(MeetsPac(r, ComputeReference(*head.model, query.x, 1.0), 1, 0.3)) << q;
    }
    EXPECT_GE(fallbacks, previous) << cost;
    previous = fallbacks;
  }
  EXPECT_EQ(previous, static_cast<int>(head.queries.rows()));
  EXPECT_GT(sampled_first, 0);  // their sampling counts too
}

// A meter past its warm-up that has seen exact single queries take `exact_ns` an entry and
// samples `sample_ns` each (one predicted per sample read), and, given a `share`, each query
// after the first of exact batches of 16 add that share of a single query's time.
std::shared_ptr<SampleCostMeter> WarmMeter(double exact_ns, double sample_ns,
                                           std::optional<double> share = std::nullopt) {
  auto meter = std::make_shared<SampleCostMeter>(kDefaultSampleCost);
  for (int i = 0; i < SampleCostMeter::kWarmup; ++i) {
    meter->AddExact(1, 1e6, exact_ns * 1e-3);
    meter->AddSampled(1e6, 1e6, sample_ns * 1e-3, 0);
  }
  for (int i = 0; share && i < SampleCostMeter::kWarmup; ++i) {
    meter->AddExact(16, 1e6, exact_ns * 1e-3 * (1 + 15 * *share));
  }
  return meter;
}

bool SkipsAlone(const AdaptiveSoftmax& adaptive, const Query& query) {
  return adaptive.SkipsSampling({&query, 1})[0];
}

TEST(AdaptiveSoftmaxTest, EvenlySpreadQueriesSkipSamplingAndGetTheExactAnswer) {
  // The same head with dense Gaussian queries (share ~0.64) and heavy-tailed ones (~0.1).
  const SynthOptions options{.n = 4000, .d = 256, .queries = 8, .seed = 3};
  const testing::ModelAndQueries dense = testing::SynthHead(options);
  SynthOptions heavy_options = options;
  heavy_options.heavy_tailed = true;
  const testing::ModelAndQueries heavy = testing::SynthHead(heavy_options);
  // sample_cost 4 skips sampling from a predicted 1/4 of the entries: share > 0.5.
  const AdaptiveSoftmax adaptive(dense.model, {.sample_cost = 4});
  const AdaptiveSoftmax cautious(dense.model, {.topk_multiplier = 0.1, .sample_cost = 4});
  const AdaptiveSoftmax never(dense.model, {.sample_cost = 0});
  std::vector<Query> batch;
  for (size_t q = 0; q < 8; ++q) {
    batch.push_back({dense.query(q), {.seed = 9}});
    batch.push_back({heavy.query(q), {.seed = 9}});
  }
  for (size_t q = 0; q < batch.size(); q += 2) {
    EXPECT_TRUE(SkipsAlone(adaptive, batch[q])) << q;
    EXPECT_FALSE(SkipsAlone(adaptive, batch[q + 1])) << q;
    EXPECT_FALSE(SkipsAlone(cautious, batch[q])) << q;  // a smaller radius samples less
    EXPECT_FALSE(SkipsAlone(never, batch[q])) << q;
  }
  // A mixed batch: the dense queries are answered exactly; every answer lands in its place.
  const std::vector<TopKResult> results = adaptive.Run(batch);
  const ExactSoftmax exact(dense.model);
  for (size_t q = 0; q < batch.size(); ++q) {
    const TopKResult want = *exact.Answer(batch[q]);
    EXPECT_EQ(results[q].indices, want.indices) << q;
    EXPECT_TRUE(MeetsPac(results[q], ComputeReference(*dense.model, batch[q].x, 1.0), 1, 0.3))
        << q;
    if (q % 2 == 0) {
      EXPECT_TRUE(results[q].exact) << q;
      EXPECT_NEAR(results[q].log_partition, want.log_partition, 1e-4) << q;
    }
  }
}

TEST(AdaptiveSoftmaxTest, BatchesCheaperToAnswerExactlyTogetherSkipSampling) {
  // At this cost each query alone is cheaper to sample than one exact pass, but 16 together
  // are dearer than one pass plus 15 x kBatchedExactQueryCost; two are not.
  testing::ModelAndQueries head = HeavyHead();
  const AdaptiveSoftmax adaptive(head.model, {.sample_cost = 6});
  std::vector<Query> batch;
  for (size_t q = 0; q < 16; ++q) batch.push_back({head.query(q), {.seed = 4}});
  for (const Query& query : batch) EXPECT_FALSE(SkipsAlone(adaptive, query));
  EXPECT_THAT(adaptive.SkipsSampling(absl::MakeConstSpan(batch).first(2)), Each(false));
  EXPECT_THAT(adaptive.SkipsSampling(batch), Each(true));
  const AdaptiveSoftmax never(head.model, {.sample_cost = 0});
  EXPECT_THAT(never.SkipsSampling(batch), Each(false));
  // Run answers the batch as the exact path does.
  const std::vector<TopKResult> results = adaptive.Run(batch);
  const std::vector<TopKResult> want = ExactSoftmax(head.model).Run(batch);
  for (size_t q = 0; q < batch.size(); ++q) {
    EXPECT_TRUE(results[q].exact) << q;
    EXPECT_EQ(results[q].indices, want[q].indices) << q;
    EXPECT_EQ(results[q].log_partition, want[q].log_partition) << q;
  }
}

TEST(AdaptiveSoftmaxTest, AMeteredBatchShareDecidesWhichQueriesJoinTheExactPath) {
  // A meter pricing samples at 6 streamed entries, as the fixed cost above, that has seen each
  // query after the first of an exact batch add `share` of a single query's time.
  testing::ModelAndQueries head = HeavyHead();
  std::vector<Query> batch;
  for (size_t q = 0; q < 16; ++q) batch.push_back({head.query(q), {.seed = 4}});
  // Where batches are as dear as their queries alone, the 16 sample; where each further query
  // adds 0.2, they go exact together, as with kBatchedExactQueryCost.
  const AdaptiveSoftmax alone(head.model, {.sample_cost = 6}, WarmMeter(1, 6, 1));
  const AdaptiveSoftmax fifth(head.model, {.sample_cost = 6}, WarmMeter(1, 6, 0.2));
  EXPECT_THAT(alone.SkipsSampling(batch), Each(false));
  EXPECT_THAT(fifth.SkipsSampling(batch), Each(true));
  // A query stricter than the multipliers hold at goes exact whatever its cost; a sampled query
  // joins it when a further exact query costs less than sampling it is predicted to.
  const std::vector<Query> mixed = {{head.query(0), {.epsilon = 0.1, .seed = 4}},
                                    {head.query(1), {.seed = 4}}};
  const AdaptiveSoftmax strict_alone(head.model, {.sample_cost = 6, .min_epsilon = 0.2},
                                     WarmMeter(1, 6, 1));
  const AdaptiveSoftmax strict_cheap(head.model, {.sample_cost = 6, .min_epsilon = 0.2},
                                     WarmMeter(1, 6, 0.01));
  EXPECT_THAT(strict_alone.SkipsSampling(mixed), ElementsAre(true, false));
  EXPECT_THAT(strict_cheap.SkipsSampling(mixed), ElementsAre(true, true));
}

TEST(AdaptiveSoftmaxTest, LogitsTooLargeForFloatEstimatesGetTheExactAnswer) {
  const testing::ModelAndQueries ocr = testing::OcrHead();
  const AdaptiveSoftmax adaptive(ocr.model, {.sample_cost = 0});  // no fallback for cost
  const ExactSoftmax exact(ocr.model);
  for (size_t q = 0; q < 3; ++q) {
    const Query hot{ocr.query(q), {.temperature = 1e7, .seed = 1}};
    const TopKResult r = *adaptive.Answer(hot);
    EXPECT_TRUE(r.exact) << q;
    const TopKResult want = *exact.Answer(hot);
    EXPECT_EQ(r.indices, want.indices) << q;
    EXPECT_EQ(r.log_partition, want.log_partition) << q;
    EXPECT_FALSE(adaptive.Answer({ocr.query(q), {.seed = 1}})->exact) << q;  // temperature 1
  }
}

// The sampler's copy of the weights moves each logit by at most bias = temperature x |x| x
// sampling_error_norm(); at epsilon 0.3 it leaves the sampler less than half of epsilon once
// bias > ln(1.3 / 1.15) = 0.1226.
TEST(AdaptiveSoftmaxTest, ACopyWhoseRoundingLeavesLessThanHalfOfEpsilonGetsTheExactAnswer) {
  const testing::ModelAndQueries coarse = testing::OcrHead(DType::kFloat32, DType::kBFloat16);
  const testing::ModelAndQueries fine = testing::OcrHead(DType::kFloat32, DType::kFloat16);
  ASSERT_GT(coarse.model->sampling_error_norm(), 2 * fine.model->sampling_error_norm());
  const AdaptiveSoftmax sample_coarse(coarse.model, {.sample_cost = 0});
  const AdaptiveSoftmax sample_fine(fine.model, {.sample_cost = 0});
  const ExactSoftmax exact(coarse.model);
  for (size_t q = 0; q < 3; ++q) {
    double norm_sq = 0;
    for (float v : coarse.query(q)) norm_sq += v * v;
    auto at_bias = [&](double bias) {
      const double temperature = bias / (std::sqrt(norm_sq) * coarse.model->sampling_error_norm());
      return Query{coarse.query(q), {.epsilon = 0.3, .temperature = temperature, .seed = 1}};
    };
    const Query far = at_bias(0.13);
    EXPECT_TRUE(SkipsAlone(sample_coarse, far)) << q;
    const TopKResult r = *sample_coarse.Answer(far);
    EXPECT_TRUE(r.exact) << q;
    const TopKResult want = *exact.Answer(far);
    EXPECT_EQ(r.indices, want.indices) << q;
    EXPECT_EQ(r.log_partition, want.log_partition) << q;
    EXPECT_FALSE(SkipsAlone(sample_fine, far)) << q;  // the same query, a finer copy
    EXPECT_FALSE(SkipsAlone(sample_coarse, at_bias(0.12))) << q;
  }
}

TEST(AdaptiveSoftmaxTest, QueriesStricterThanTheMultipliersHoldAtGetTheExactAnswer) {
  testing::ModelAndQueries head = HeavyHead();
  const AdaptiveSoftmax adaptive(head.model,
                                 {.sample_cost = 0, .min_epsilon = 0.3, .min_delta = 0.01});
  const ExactSoftmax exact(head.model);
  for (size_t q = 0; q < 3; ++q) {
    for (const QueryOptions& strict :
         {QueryOptions{.epsilon = 0.1, .seed = 1}, QueryOptions{.delta = 0.001, .seed = 1}}) {
      const Query query{head.query(q), strict};
      EXPECT_EQ(adaptive.SkipsSampling({&query, 1}), std::vector<bool>{true}) << q;
      const TopKResult r = *adaptive.Answer(query);
      EXPECT_TRUE(r.exact) << q;
      const TopKResult want = *exact.Answer(query);
      EXPECT_EQ(r.indices, want.indices) << q;
      EXPECT_EQ(r.log_partition, want.log_partition) << q;
    }
    for (const QueryOptions& covered : {QueryOptions{.epsilon = 0.3, .seed = 1},
                                        QueryOptions{.epsilon = 0.5, .delta = 0.05, .seed = 1}}) {
      EXPECT_FALSE(adaptive.Answer({head.query(q), covered})->exact) << q;
    }
  }
}

TEST(AdaptiveSoftmaxTest, AMeterPricesSamplesAndRunFeedsIt) {
  testing::ModelAndQueries head = HeavyHead();
  // A meter that has seen dear samples sends every query to the exact path; one that has seen
  // cheap samples lets them all sample.
  const AdaptiveSoftmax dear(head.model, {.sample_cost = 8}, WarmMeter(1, 1000));
  const AdaptiveSoftmax cheap(head.model, {.sample_cost = 8}, WarmMeter(1000, 1));
  EXPECT_EQ(dear.SampleCost(), SampleCostMeter::kMaxCost);
  EXPECT_EQ(cheap.SampleCost(), SampleCostMeter::kMinCost);
  for (size_t q = 0; q < 5; ++q) {
    const Query query{head.query(q), {.seed = 7 + q}};
    EXPECT_TRUE(dear.Answer(query)->exact) << q;
    EXPECT_FALSE(cheap.Answer(query)->exact) << q;
  }
  // Without a fallback the meter is not consulted.
  const AdaptiveSoftmax off(head.model, {.sample_cost = 0}, WarmMeter(1, 1000));
  EXPECT_EQ(off.SampleCost(), 0);

  // Run reports its sampled and its exact work: dense queries skip sampling (see
  // EvenlySpreadQueriesSkipSamplingAndGetTheExactAnswer), heavy-tailed ones sample.
  const SynthOptions options{.n = 4000, .d = 256, .queries = 8, .seed = 3};
  const testing::ModelAndQueries dense = testing::SynthHead(options);
  SynthOptions heavy_options = options;
  heavy_options.heavy_tailed = true;
  const testing::ModelAndQueries heavy = testing::SynthHead(heavy_options);
  auto meter = std::make_shared<SampleCostMeter>(4);
  const AdaptiveSoftmax measured(dense.model, {.sample_cost = 4}, meter);
  for (size_t q = 0; q < SampleCostMeter::kWarmup; ++q) {
    EXPECT_EQ(measured.SampleCost(), 4) << q;  // not yet warm
    measured.Answer({heavy.query(q % 8), {.seed = 9}}).IgnoreError();
  }
  EXPECT_EQ(meter->SampledObservations(), SampleCostMeter::kWarmup);
  // The exact path is timed in the first and then one in kTimeExactEvery of the batches that
  // sample nothing.
  const int timed_before = meter->ExactObservations();
  for (size_t q = 0; q < SampleCostMeter::kWarmup * AdaptiveSoftmax::kTimeExactEvery; ++q) {
    EXPECT_TRUE(measured.Answer({dense.query(q % 8), {.seed = 9}})->exact) << q;
    EXPECT_EQ(meter->ExactObservations() - timed_before,
              static_cast<int>(q / AdaptiveSoftmax::kTimeExactEvery) + 1)
        << q;
  }
  EXPECT_NE(meter->Cost(), 4);
  EXPECT_EQ(measured.SampleCost(), meter->Cost());
}

TEST(AdaptiveSoftmaxTest, AMeterStillSamplesOneInKProbeEverySkippedQueries) {
  // Dense queries skip sampling at cost 6 (see EvenlySpreadQueriesSkipSampling...), but not at
  // the first level, so a probe samples a little, and the meter, still cold, keeps cost 6.
  const testing::ModelAndQueries dense =
      testing::SynthHead({.n = 4000, .d = 256, .queries = 8, .seed = 3});
  auto meter = std::make_shared<SampleCostMeter>(6);
  const AdaptiveSoftmax adaptive(dense.model, {.sample_cost = 6}, meter);
  for (size_t q = 0; q < 2 * AdaptiveSoftmax::kProbeEvery; ++q) {
    const Query query{dense.query(q % dense.queries.rows()), {.seed = 1 + q}};
    ASSERT_TRUE(adaptive.SkipsSampling({&query, 1})[0]) << q;
    adaptive.Answer(query).IgnoreError();
    EXPECT_EQ(meter->SampledObservations(), (q + 1) / AdaptiveSoftmax::kProbeEvery) << q;
  }
  // Without a meter there are no probes.
  const AdaptiveSoftmax fixed(dense.model, {.sample_cost = 6});
  for (size_t q = 0; q < AdaptiveSoftmax::kProbeEvery; ++q) {
    const Query query{dense.query(q % dense.queries.rows()), {.seed = 1 + q}};
    EXPECT_TRUE(fixed.Answer(query)->exact) << q;
  }
}

TEST(AdaptiveSoftmaxTest, APrimedMeterPricesSamplesOnceTheSamplerWasTimed) {
  SynthOptions options{.n = 4000, .d = 256, .queries = SampleCostMeter::kWarmup, .seed = 3};
  options.heavy_tailed = true;
  const testing::ModelAndQueries heavy = testing::SynthHead(options);
  // Answers every query; true when all were sampled to the end (none timed the exact path).
  auto answer_all = [&](const AdaptiveSoftmax& adaptive) {
    bool sampled = true;
    for (size_t q = 0; q < heavy.queries.rows(); ++q) {
      sampled &= !adaptive.Answer({heavy.query(q), {.seed = 5 + q}})->exact;
    }
    return sampled;
  };
  auto cold = std::make_shared<SampleCostMeter>(1);
  ASSERT_TRUE(answer_all(AdaptiveSoftmax(heavy.model, {.sample_cost = 1}, cold)));
  EXPECT_EQ(cold->ExactObservations(), 0);
  EXPECT_EQ(cold->Cost(), 1);  // still the initial cost

  auto primed = std::make_shared<SampleCostMeter>(1);
  const AdaptiveSoftmax adaptive(heavy.model, {.sample_cost = 1}, primed);
  adaptive.PrimeMeter();
  EXPECT_EQ(primed->ExactObservations(), SampleCostMeter::kWarmup);
  EXPECT_EQ(primed->BatchObservations(), SampleCostMeter::kWarmup);
  EXPECT_TRUE(primed->ExtraQueryShare().has_value());
  EXPECT_EQ(primed->SampledObservations(), 0);
  ASSERT_TRUE(answer_all(adaptive));
  EXPECT_NE(primed->Cost(), 1);  // measured
  EXPECT_EQ(adaptive.SampleCost(), primed->Cost());
}

TEST(AdaptiveOptionsTest, InvalidOptionsAreRejected) {
  EXPECT_TRUE(ValidateAdaptiveOptions({}).ok());
  EXPECT_THAT(ValidateAdaptiveOptions({.topk_multiplier = 0}).message(),
              HasSubstr("topk_multiplier"));
  EXPECT_THAT(ValidateAdaptiveOptions({.normalizer_multiplier = NAN}).message(),
              HasSubstr("normalizer_multiplier"));
  EXPECT_THAT(ValidateAdaptiveOptions({.warmup_fraction = 1.5}).message(),
              HasSubstr("warmup_fraction"));
  EXPECT_THAT(ValidateAdaptiveOptions({.sample_cost = -1}).message(), HasSubstr("sample_cost"));
  for (double c : {-0.1, 1.5, double(NAN)}) {
    EXPECT_THAT(ValidateAdaptiveOptions({.lognormal_correction = c}).message(),
                HasSubstr("lognormal_correction"));
  }
  EXPECT_THAT(ValidateAdaptiveOptions({.max_sharing_loss = 0.99}).message(),
              HasSubstr("max_sharing_loss"));
  EXPECT_THAT(ValidateAdaptiveOptions({.max_sharing_loss = NAN}).message(),
              HasSubstr("max_sharing_loss"));
  EXPECT_TRUE(ValidateAdaptiveOptions({.max_sharing_loss = INFINITY}).ok());
  EXPECT_THAT(ValidateAdaptiveOptions({.sampling_memory_fraction = -0.1}).message(),
              HasSubstr("sampling_memory_fraction"));
  EXPECT_THAT(ValidateAdaptiveOptions({.sampling_memory_fraction = INFINITY}).message(),
              HasSubstr("sampling_memory_fraction"));
  EXPECT_THAT(ValidateAdaptiveOptions({.min_epsilon = -0.3}).message(), HasSubstr("min_epsilon"));
  EXPECT_THAT(ValidateAdaptiveOptions({.min_delta = NAN}).message(), HasSubstr("min_delta"));
}

}  // namespace
}  // namespace adasoftmax
