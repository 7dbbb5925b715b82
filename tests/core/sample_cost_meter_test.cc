#include "core/sample_cost_meter.h"

#include <optional>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace adasoftmax {
namespace {

// Feeds `count` observations: exact entries at `exact_ns` each, samples at `sample_ns` each,
// with half as many samples predicted as read.
void Feed(SampleCostMeter& meter, int count, double exact_ns, double sample_ns) {
  for (int i = 0; i < count; ++i) {
    meter.AddExact(1, 1e6, 1e6 * exact_ns * 1e-9);
    meter.AddSampled(1e5, 5e4, 1e5 * sample_ns * 1e-9, 0);
  }
}

TEST(SampleCostMeterTest, ReportsTheInitialCostUntilBothSidesAreWarm) {
  SampleCostMeter meter(8);
  EXPECT_EQ(meter.Cost(), 8);
  Feed(meter, SampleCostMeter::kWarmup - 1, 1, 3);
  EXPECT_EQ(meter.Cost(), 8);
  EXPECT_EQ(meter.CostOfPredicted(), 8);
  for (int i = 0; i < 20; ++i) meter.AddExact(1, 1e6, 1e-3);  // one side alone is not enough
  EXPECT_EQ(meter.Cost(), 8);
  meter.AddSampled(1e5, 5e4, 3e-4, 0);
  EXPECT_NEAR(meter.Cost(), 3, 1e-9);
  EXPECT_NEAR(meter.CostOfPredicted(), 6, 1e-9);  // twice as many samples read as predicted
}

TEST(SampleCostMeterTest, IsTheRatioOfTheTwoRatesAndFollowsAChange) {
  SampleCostMeter meter(8);
  Feed(meter, 50, 0.2, 1.0);  // a sample costs 5 streamed entries
  EXPECT_NEAR(meter.Cost(), 5, 1e-9);
  Feed(meter, 200, 0.4, 1.0);  // memory slows down: exact entries cost twice as much
  EXPECT_NEAR(meter.Cost(), 2.5, 0.01);
  Feed(meter, 1, 0.4, 100.0);  // one outlier moves it by about kWeight of its size
  EXPECT_GT(meter.Cost(), 2.5);
  EXPECT_LT(meter.Cost(), 2.5 * (1 + 100 * SampleCostMeter::kWeight));
}

TEST(SampleCostMeterTest, StaysWithinBoundsAndIgnoresEmptyObservations) {
  SampleCostMeter cheap(8), dear(8);
  Feed(cheap, 20, 1, 0.001);
  Feed(dear, 20, 0.001, 1);
  EXPECT_EQ(cheap.Cost(), SampleCostMeter::kMinCost);
  EXPECT_EQ(dear.Cost(), SampleCostMeter::kMaxCost);
  SampleCostMeter meter(8);
  for (int i = 0; i < 20; ++i) {
    meter.AddExact(1, 0, 1);
    meter.AddExact(0, 1e6, 1);
    meter.AddSampled(1e5, 1e5, 0, 1);
    meter.AddSampled(1e5, 0, 1, 1);
    meter.AddSampled(1e5, 1e5, 1, -1);
  }
  EXPECT_EQ(meter.Cost(), 8);
}

TEST(SampleCostMeterTest, FallbacksWeighOnTheCostOfPredictedEntriesOnly) {
  SampleCostMeter meter(8);
  for (int i = 0; i < SampleCostMeter::kWarmup; ++i) {
    meter.AddExact(1, 1e6, 1e-3);            // 1 ns an entry
    meter.AddSampled(1e5, 5e4, 1e-4, 1e-4);  // 1 ns a sample, then as long again falling back
  }
  EXPECT_NEAR(meter.Cost(), 1, 1e-9);
  EXPECT_NEAR(meter.CostOfPredicted(), 4, 1e-9);
}

TEST(SampleCostMeterTest, BatchesGiveTheShareEachFurtherQueryAdds) {
  SampleCostMeter meter(8);
  // Batches count only once single queries tell their first query's time.
  for (int i = 0; i < 20; ++i) meter.AddExact(16, 1e6, 2.5e-3);
  EXPECT_EQ(meter.BatchObservations(), 0);
  for (int i = 0; i < SampleCostMeter::kWarmup; ++i) meter.AddExact(1, 1e6, 1e-3);
  for (int i = 0; i < SampleCostMeter::kWarmup - 1; ++i) meter.AddExact(16, 1e6, 2.5e-3);
  EXPECT_EQ(meter.ExtraQueryShare(), std::nullopt);
  meter.AddExact(16, 1e6, 2.5e-3);  // 1 ms, then 15 x 0.1 ms
  EXPECT_NEAR(*meter.ExtraQueryShare(), 0.1, 1e-9);
  EXPECT_EQ(meter.ExactObservations(), SampleCostMeter::kWarmup);  // the single queries' rate
  EXPECT_EQ(meter.BatchObservations(), SampleCostMeter::kWarmup);
  // Batches slower than their queries alone count as one pass each at most; faster than their
  // first query, as free.
  for (int i = 0; i < 200; ++i) meter.AddExact(4, 1e6, 10e-3);
  EXPECT_EQ(*meter.ExtraQueryShare(), 1);
  for (int i = 0; i < 2000; ++i) meter.AddExact(4, 1e6, 0.5e-3);
  EXPECT_NEAR(*meter.ExtraQueryShare(), 0, 1e-9);
}

TEST(SampleCostMeterTest, ConcurrentObservationsKeepItConsistent) {
  SampleCostMeter meter(8);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) threads.emplace_back([&] { Feed(meter, 1000, 0.25, 1.0); });
  for (std::thread& t : threads) t.join();
  EXPECT_NEAR(meter.Cost(), 4, 1e-9);
}

}  // namespace
}  // namespace adasoftmax
