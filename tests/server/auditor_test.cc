#include "server/auditor.h"

#include <memory>
#include <string>

#include "core/exact_softmax.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"
#include "server/metrics.h"
#include "tests/server/test_util.h"

namespace adasoftmax::server {
namespace {

using ::testing::HasSubstr;

TEST(AuditorTest, CountsQueriesAndFailuresPerModel) {
  SynthOptions o;
  o.n = 200;
  o.d = 16;
  o.queries = 2;
  o.seed = 4;
  SynthData data = *Synthesize(o);
  std::shared_ptr<const Model> model = *Model::Create(std::move(data.weights), {});
  prometheus::Registry registry;
  Metrics metrics(registry);
  ModelMetrics* m = metrics.AddModel("tiny", 200, 16, "float32");

  const auto x = testing::QueryRow(data.queries, 0);
  Query query{x, {.k = 2, .epsilon = 0.1}};
  const TopKResult exact = ExactSoftmax(model).Run(absl::MakeConstSpan(&query, 1)).front();
  TopKResult wrong = exact;
  wrong.probabilities[0] *= 1.5;  // outside (1 +- 0.1)

  Auditor auditor({.max_pending = 8, .seed = 1});
  for (const TopKResult& r : {exact, wrong, exact}) {
    AuditJob job{model, m, std::vector<float>(x.begin(), x.end()), query.options, r};
    EXPECT_TRUE(auditor.Submit(std::move(job)));
  }
  auditor.Flush();
  const std::string text = prometheus::TextSerializer().Serialize(registry.Collect());
  EXPECT_THAT(text, HasSubstr("adasoftmax_audit_queries_total{model=\"tiny\"} 3"));
  EXPECT_THAT(text, HasSubstr("adasoftmax_audit_failures_total{model=\"tiny\"} 1"));
  EXPECT_EQ(auditor.discarded(), 0u);
}

TEST(AuditorTest, SampleHonoursTheFraction) {
  Auditor auditor({.seed = 7});
  int hits = 0;
  for (int i = 0; i < 10000; ++i) hits += auditor.Sample(0.1);
  EXPECT_NEAR(hits, 1000, 150);  // > 4 standard deviations
  EXPECT_FALSE(auditor.Sample(0));
  EXPECT_TRUE(auditor.Sample(1));
}

TEST(MetricsTest, HistogramBucketsAreSortedAndCoverTheirRanges) {
  prometheus::Registry registry;
  Metrics metrics(registry);
  metrics.AddModel("a", 10, 4, "float32");  // throws if any bucket list were unsorted
  ModelMetrics* b = metrics.AddModel("b", 10, 4, "bfloat16");
  b->ObserveQuery(MetricMode::kAdaptive, 5e8, 0.004);
  b->CountRequest(MetricMode::kExact, absl::StatusCode::kResourceExhausted);
  metrics.CountUnknownModelRequest(MetricMode::kAdaptive, absl::StatusCode::kNotFound);
  const std::string text = prometheus::TextSerializer().Serialize(registry.Collect());
  EXPECT_THAT(text, HasSubstr("le=\"100\""));
  EXPECT_THAT(text, HasSubstr("le=\"178\""));
  EXPECT_THAT(text, HasSubstr("le=\"1000000000\""));
  EXPECT_THAT(text, HasSubstr("le=\"0.005\""));
  EXPECT_THAT(text,
              HasSubstr("adasoftmax_model_info{d=\"4\",dtype=\"bfloat16\",model=\"b\",n=\"10\"} 1"));
  EXPECT_THAT(text, HasSubstr("code=\"RESOURCE_EXHAUSTED\",mode=\"exact\",model=\"b\"} 1"));
  EXPECT_THAT(text, HasSubstr("code=\"NOT_FOUND\",mode=\"adaptive\",model=\"<unknown>\"} 1"));
  EXPECT_THAT(text, HasSubstr(
      "adasoftmax_samples_per_query_bucket{mode=\"adaptive\",model=\"b\",le=\"562000000\"} 1"));
}

TEST(MetricsTest, ProcessCollectorReportsMemoryAndStartTime) {
  ProcessCollector collector;
  bool rss = false, start = false;
  for (const auto& family : collector.Collect()) {
    const double v = family.metric.at(0).gauge.value + family.metric.at(0).counter.value;
    if (family.name == "process_resident_memory_bytes") rss = v > 1e5;
    if (family.name == "process_start_time_seconds") start = v > 1.5e9;
  }
  EXPECT_TRUE(rss);
  EXPECT_TRUE(start);
}

}  // namespace
}  // namespace adasoftmax::server
