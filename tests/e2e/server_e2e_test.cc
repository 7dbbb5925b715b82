// End to end: the real adasoftmax-server binary on an ephemeral loopback port, driven by the
// C++ client and the `adasoftmax` CLI, with small synthetic models written by the test.

#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/grpc_client.h"
#include "core/adaptive_softmax.h"
#include "core/blas_kernels.h"
#include "core/exact_softmax.h"
#include "core/model.h"
#include "core/pac.h"
#include "core/version.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/e2e/server_process.h"
#include "tests/e2e/subprocess.h"
#include "tests/server/test_util.h"
#include "tests/test_cgroup.h"

namespace adasoftmax::testing {
namespace {

using ::adasoftmax::client::Client;
using ::adasoftmax::client::HealthStatus;
using ::adasoftmax::client::Result;
using ::adasoftmax::client::TopKOptions;
using ::testing::HasSubstr;

constexpr size_t kN = 2000;
constexpr size_t kD = 64;

SynthOptions SmallModel(uint64_t seed) {
  SynthOptions o;
  o.n = kN;
  o.d = kD;
  o.queries = 64;
  o.seed = seed;
  o.bias = true;
  return o;
}

std::unique_ptr<Client> Connect(const std::string& address) {
  auto channel = client::MakeChannel(address);
  EXPECT_TRUE(channel.ok()) << channel.status();
  return std::make_unique<Client>(*channel);
}

// One server for the suite: model "small" (theory multipliers), model "audit" (multipliers far
// too small, every request audited, so the audit really finds failures) and model "fallback"
// (sampling priced so high that every adaptive request is answered exactly). "small" and
// "audit" turn the exact fallback off: on heads this narrow it would answer everything exactly.
class ServerE2eTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ChooseBlasKernels();  // the server's kernels, so that local exact answers match its bits
    dir_ = new TempDir;
    data_ = new SynthData(
        WriteModel(dir_->Sub("repo/small"), SmallModel(11), "adaptive { sample_cost: 0 }\n"));
    WriteModel(dir_->Sub("repo/audit"), SmallModel(12),
               "adaptive { topk_multiplier: 1e-6 normalizer_multiplier: 1e-8 sample_cost: 0 }\n"
               "audit_fraction: 1\ndefault_epsilon: 0.02\n");
    WriteModel(dir_->Sub("repo/fallback"), SmallModel(13),
               "adaptive { sample_cost: 1e9 }\naudit_fraction: 1\n");
    server_ =
        new ServerProcess(StartServerProcess(dir_->Sub("repo"), dir_->Sub("cache"),
                                             {"--batch_timeout_us=3000", "--max_batch_size=16",
                                              "--max_message_bytes=65536", "--audit_fraction=0"}));
  }
  static void TearDownTestSuite() {
    delete server_;
    delete data_;
    delete dir_;
  }

  void SetUp() override {
    ASSERT_FALSE(server_->address.empty());
    client_ = Connect(server_->address);
  }

  static absl::Span<const float> Row(size_t r) { return QueryRow(data_->queries, r); }
  static std::vector<Sample> Scrape() {
    return ParseMetrics(HttpGet("http://" + server_->metrics_address + "/metrics"));
  }
  static std::string Cli() { return BinDir() + "/adasoftmax"; }

  static TempDir* dir_;
  static SynthData* data_;
  static ServerProcess* server_;
  std::unique_ptr<Client> client_;
};

TempDir* ServerE2eTest::dir_ = nullptr;
SynthData* ServerE2eTest::data_ = nullptr;
ServerProcess* ServerE2eTest::server_ = nullptr;

TEST_F(ServerE2eTest, AnswersMatchTheExactPath) {
  auto model =
      Model::Load({dir_->Sub("repo/small/weights.npy"), "", dir_->Sub("repo/small/bias.npy"), ""});
  ASSERT_TRUE(model.ok()) << model.status();
  ExactSoftmax exact(*model);
  for (size_t q = 0; q < 16; ++q) {
    adasoftmax::Query local{Row(q), {.k = 3}};
    const TopKResult want = exact.Run(absl::MakeConstSpan(&local, 1)).front();
    TopKOptions o;
    o.k = 3;
    o.mode = v1::MODE_EXACT;
    absl::StatusOr<Result> got = client_->TopKSoftmax("small", Row(q), o);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->indices, want.indices);
    EXPECT_NEAR(got->log_partition, want.log_partition, 1e-9);
    for (size_t i = 0; i < 3; ++i) {
      EXPECT_NEAR(got->probabilities[i], want.probabilities[i], 1e-9);
      EXPECT_EQ(got->labels[i], absl::StrCat("class", want.indices[i]));
    }

    o.mode = v1::MODE_ADAPTIVE;
    o.seed = 1000 + q;
    absl::StatusOr<Result> adaptive = client_->TopKSoftmax("small", Row(q), o);
    ASSERT_TRUE(adaptive.ok()) << adaptive.status();
    TopKResult r;
    r.indices = adaptive->indices;
    r.probabilities = adaptive->probabilities;
    EXPECT_TRUE(MeetsPac(r, ComputeReference(**model, Row(q), 1.0), 3, 0.3)) << "query " << q;
    EXPECT_GT(adaptive->samples, 0u);
    EXPECT_LE(adaptive->samples, kN * kD);
  }
}

TEST_F(ServerE2eTest, MetricsEndpointParsesAndHasEveryName) {
  TopKOptions exact;
  exact.mode = v1::MODE_EXACT;
  ASSERT_TRUE(client_->TopKSoftmax("small", Row(0)).ok());
  ASSERT_TRUE(client_->TopKSoftmax("small", Row(1), exact).ok());
  const std::string text = HttpGet("http://" + server_->metrics_address + "/metrics");
  const std::vector<Sample> samples = ParseMetrics(text);
  std::set<std::string> names;
  for (const Sample& s : samples) names.insert(s.name);
  for (const char* name :
       {"adasoftmax_requests_total", "adasoftmax_samples_per_query_bucket",
        "adasoftmax_samples_per_query_sum", "adasoftmax_samples_per_query_count",
        "adasoftmax_sample_fraction_bucket", "adasoftmax_request_duration_seconds_bucket",
        "adasoftmax_queue_duration_seconds_bucket", "adasoftmax_batch_size_bucket",
        "adasoftmax_model_info", "adasoftmax_audit_queries_total",
        "adasoftmax_audit_failures_total", "adasoftmax_adaptive_exact_answers_total",
        "adasoftmax_sample_cost", "adasoftmax_exact_batch_share", "adasoftmax_build_info",
        "adasoftmax_repository_reloads_total", "adasoftmax_repository_unavailable_models",
        "process_resident_memory_bytes", "process_start_time_seconds"}) {
    EXPECT_TRUE(names.count(name)) << name << " missing from\n" << text;
  }
  EXPECT_THAT(text, HasSubstr("# TYPE adasoftmax_samples_per_query histogram"));
  EXPECT_THAT(text, HasSubstr("# TYPE adasoftmax_requests_total counter"));
  EXPECT_EQ(FindSample(samples, "adasoftmax_model_info",
                       {{"model", "small"}, {"n", "2000"}, {"d", "64"}, {"dtype", "float32"}}),
            1.0);
  EXPECT_EQ(FindSample(samples, "adasoftmax_build_info", {{"version", kVersion}}), 1.0);
  EXPECT_EQ(FindSample(samples, "adasoftmax_repository_reloads_total", {{"result", "failed"}}),
            0.0);
  EXPECT_EQ(FindSample(samples, "adasoftmax_repository_unavailable_models", {}), 0.0);
  EXPECT_GE(*FindSample(samples, "adasoftmax_requests_total",
                        {{"model", "small"}, {"mode", "exact"}, {"code", "OK"}}),
            1.0);
  // Sample buckets span 1e2..1e9; exact requests read n * d.
  EXPECT_TRUE(FindSample(samples, "adasoftmax_samples_per_query_bucket", {{"le", "100"}}));
  EXPECT_TRUE(FindSample(samples, "adasoftmax_samples_per_query_bucket", {{"le", "1000000000"}}));
  EXPECT_TRUE(FindSample(samples, "adasoftmax_sample_fraction_bucket", {{"le", "0.005"}}));
  EXPECT_TRUE(FindSample(samples, "adasoftmax_sample_fraction_bucket", {{"le", "1"}}));
  EXPECT_GE(*FindSample(samples, "adasoftmax_samples_per_query_sum",
                        {{"model", "small"}, {"mode", "exact"}}),
            static_cast<double>(kN * kD));
  EXPECT_GT(*FindSample(samples, "process_resident_memory_bytes"), 1e6);
}

TEST_F(ServerE2eTest, EveryBadInputIsRejectedByTheRealServer) {
  std::vector<float> good(Row(0).begin(), Row(0).end());
  std::vector<float> nan = good, inf = good, wrong(good.begin(), good.begin() + 10);
  nan[1] = std::numeric_limits<float>::quiet_NaN();
  inf[2] = std::numeric_limits<float>::infinity();
  auto expect = [&](const std::string& model, const std::vector<float>& q, TopKOptions o,
                    absl::StatusCode code, const std::string& field) {
    for (v1::Mode mode : {v1::MODE_ADAPTIVE, v1::MODE_EXACT}) {
      o.mode = mode;
      absl::Status s = client_->TopKSoftmax(model, q, o).status();
      EXPECT_EQ(s.code(), code) << field << ": " << s;
      if (!field.empty()) EXPECT_THAT(s.message(), HasSubstr(field + ":"));
    }
  };
  const auto k = [](uint32_t k) {
    TopKOptions o;
    o.k = k;
    return o;
  };
  TopKOptions eps0, eps1, delta0, delta1, temp0, tempneg;
  eps0.epsilon = 0;
  eps1.epsilon = 1;
  delta0.delta = 0;
  delta1.delta = 1;
  temp0.temperature = 0;
  tempneg.temperature = -2;
  const absl::StatusCode invalid = absl::StatusCode::kInvalidArgument;
  expect("small", wrong, {}, invalid, "query");
  expect("small", nan, {}, invalid, "query");
  expect("small", inf, {}, invalid, "query");
  expect("small", good, k(0), invalid, "k");
  expect("small", good, k(kN + 1), invalid, "k");
  expect("small", good, eps0, invalid, "epsilon");
  expect("small", good, eps1, invalid, "epsilon");
  expect("small", good, delta0, invalid, "delta");
  expect("small", good, delta1, invalid, "delta");
  expect("small", good, temp0, invalid, "temperature");
  expect("small", good, tempneg, invalid, "temperature");
  expect("no-such-model", good, {}, absl::StatusCode::kNotFound, "model");
  expect("small", std::vector<float>(50000, 0.5f), {}, absl::StatusCode::kResourceExhausted, "");
  // Nothing changed: good requests are answered and the server is healthy.
  EXPECT_TRUE(client_->TopKSoftmax("small", good).ok());
  EXPECT_EQ(*client_->Health(), HealthStatus::kServing);
}

TEST_F(ServerE2eTest, ConcurrentClientsProduceBatchesLargerThanOne) {
  const auto before = FindSample(Scrape(), "adasoftmax_batch_size_count", {{"model", "small"}});
  std::atomic<uint32_t> largest{0};
  std::atomic<int> failures{0};
  std::vector<std::thread> callers;
  for (int t = 0; t < 16; ++t) {
    callers.emplace_back([&, t] {
      std::unique_ptr<Client> client = Connect(server_->address);
      for (int i = 0; i < 12; ++i) {
        absl::StatusOr<Result> r = client->TopKSoftmax("small", Row((t * 12 + i) % 64));
        if (!r.ok()) {
          ++failures;
          continue;
        }
        uint32_t seen = largest.load();
        while (r->batch_size > seen && !largest.compare_exchange_weak(seen, r->batch_size)) {
        }
      }
    });
  }
  for (auto& t : callers) t.join();
  EXPECT_EQ(failures, 0);
  EXPECT_GT(largest.load(), 1u);
  // The histogram saw batches of more than one request.
  const std::vector<Sample> after = Scrape();
  const double count = *FindSample(after, "adasoftmax_batch_size_count", {{"model", "small"}});
  const double sum = *FindSample(after, "adasoftmax_batch_size_sum", {{"model", "small"}});
  const double ones =
      *FindSample(after, "adasoftmax_batch_size_bucket", {{"model", "small"}, {"le", "1"}});
  EXPECT_LT(ones, count);
  EXPECT_GT(sum, count);
  EXPECT_GT(count, before.value_or(0));
}

TEST_F(ServerE2eTest, AuditFindsTheFailuresOfAnUnderSampledModel) {
  const int kQueries = 40;
  TopKOptions o;
  o.k = 2;
  for (int q = 0; q < kQueries; ++q) {
    ASSERT_TRUE(client_->TopKSoftmax("audit", QueryRow(data_->queries, q), o).ok());
  }
  const double audited = WaitForMetric(server_->metrics_address, "adasoftmax_audit_queries_total",
                                       {{"model", "audit"}}, kQueries);
  EXPECT_EQ(audited, kQueries);
  const std::vector<Sample> samples = Scrape();
  const double failures =
      *FindSample(samples, "adasoftmax_audit_failures_total", {{"model", "audit"}});
  EXPECT_GT(failures, 0) << "multipliers this small should break the guarantee";
  EXPECT_LE(failures, kQueries);
  // The model with the default fraction (0 here) is never audited.
  EXPECT_EQ(*FindSample(samples, "adasoftmax_audit_queries_total", {{"model", "small"}}), 0);
}

TEST_F(ServerE2eTest, ExpensiveSamplingIsAnsweredExactlyAndCounted) {
  const int kQueries = 5;
  for (int q = 0; q < kQueries; ++q) {
    absl::StatusOr<Result> r = client_->TopKSoftmax("fallback", QueryRow(data_->queries, q), {});
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE(r->exact);
    EXPECT_EQ(r->mode, v1::MODE_ADAPTIVE);
    EXPECT_EQ(r->sample_fraction, 1.0);
  }
  absl::StatusOr<Result> sampled = client_->TopKSoftmax("small", QueryRow(data_->queries, 0), {});
  ASSERT_TRUE(sampled.ok()) << sampled.status();
  EXPECT_FALSE(sampled->exact);
  const std::vector<Sample> samples = Scrape();
  EXPECT_EQ(
      *FindSample(samples, "adasoftmax_adaptive_exact_answers_total", {{"model", "fallback"}}),
      kQueries);
  // Exact answers are not audited, even at audit_fraction 1.
  EXPECT_EQ(*FindSample(samples, "adasoftmax_audit_queries_total", {{"model", "fallback"}}), 0);
  // The meter has seen no sampling on "fallback", so it keeps the configured cost; "small" has
  // the fallback off.
  EXPECT_EQ(*FindSample(samples, "adasoftmax_sample_cost", {{"model", "fallback"}}), 1e9);
  EXPECT_EQ(*FindSample(samples, "adasoftmax_sample_cost", {{"model", "small"}}), 0);
  // Its exact batches were timed at load (PrimeMeter): a measured share, not the prior's.
  const double share =
      *FindSample(samples, "adasoftmax_exact_batch_share", {{"model", "fallback"}});
  EXPECT_GE(share, 0);
  EXPECT_LE(share, 1);
  EXPECT_GT(std::abs(share - kBatchedExactQueryCost), 1e-9);
}

TEST_F(ServerE2eTest, CliQueryPrintsLabelsAndJson) {
  std::vector<std::string> values;
  for (float v : Row(5)) values.push_back(absl::StrCat(v));
  CommandResult r = RunCommand({Cli(), "query", "--target", server_->address, "--model", "small",
                                "--vector", absl::StrJoin(values, ","), "--k", "3"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("'class"));
  EXPECT_THAT(r.out, HasSubstr("samples"));

  CommandResult j =
      RunCommand({Cli(), "query", "--target", server_->address, "--model", "small", "--queries",
                  dir_->Sub("repo/small/queries.npy"), "--k", "2", "--mode", "exact", "--json"});
  ASSERT_EQ(j.exit_code, 0) << j.err;
  int lines = 0;
  for (absl::string_view line : absl::StrSplit(j.out, '\n', absl::SkipEmpty())) {
    const nlohmann::json answer = nlohmann::json::parse(line);
    EXPECT_EQ(answer["indices"].size(), 2u);
    EXPECT_EQ(answer["labels"].size(), 2u);
    EXPECT_EQ(answer["mode"], "exact");
    EXPECT_EQ(answer["samples"], kN * kD);
    ++lines;
  }
  EXPECT_EQ(lines, 64);
  // In calls of 10 queries (the last of 4), the same answers in the same order.
  CommandResult batched =
      RunCommand({Cli(), "query", "--target", server_->address, "--model", "small", "--queries",
                  dir_->Sub("repo/small/queries.npy"), "--k", "2", "--mode", "exact", "--json",
                  "--batch-size", "10"});
  ASSERT_EQ(batched.exit_code, 0) << batched.err;
  std::vector<nlohmann::json> one, ten;
  for (absl::string_view line : absl::StrSplit(j.out, '\n', absl::SkipEmpty())) {
    one.push_back(nlohmann::json::parse(line));
  }
  for (absl::string_view line : absl::StrSplit(batched.out, '\n', absl::SkipEmpty())) {
    ten.push_back(nlohmann::json::parse(line));
  }
  ASSERT_EQ(ten.size(), one.size());
  for (size_t q = 0; q < one.size(); ++q) {
    EXPECT_EQ(ten[q]["query"], q);
    EXPECT_EQ(ten[q]["indices"], one[q]["indices"]) << q;
  }

  CommandResult bad = RunCommand(
      {Cli(), "query", "--target", server_->address, "--model", "small", "--vector", "1,2,3"});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_THAT(bad.err, HasSubstr("query:"));
}

TEST_F(ServerE2eTest, CliModelsHealthAndLoadgen) {
  CommandResult models = RunCommand({Cli(), "models", "--target", server_->address, "--json"});
  ASSERT_EQ(models.exit_code, 0) << models.err;
  const nlohmann::json response = nlohmann::json::parse(models.out);
  EXPECT_EQ(response["unavailable"], nlohmann::json::array());
  const nlohmann::json& list = response["models"];
  ASSERT_EQ(list.size(), 3u);
  EXPECT_EQ(list[0]["name"], "audit");
  EXPECT_EQ(list[0]["calibration_mode"], "manual");
  EXPECT_EQ(list[1]["name"], "fallback");
  EXPECT_EQ(list[1]["sample_cost"], 1e9);
  EXPECT_EQ(list[2]["name"], "small");
  EXPECT_EQ(list[2]["n"], kN);
  EXPECT_EQ(list[2]["sample_cost"], 0);

  CommandResult health = RunCommand({Cli(), "health", "--target", server_->address});
  EXPECT_EQ(health.exit_code, 0) << health.err;
  EXPECT_THAT(health.out, HasSubstr("SERVING"));
  CommandResult nobody =
      RunCommand({Cli(), "health", "--target", "127.0.0.1:1", "--timeout-s", "2"});
  EXPECT_NE(nobody.exit_code, 0);

  CommandResult load =
      RunCommand({Cli(), "loadgen", "--target", server_->address, "--model", "small", "--queries",
                  dir_->Sub("repo/small/queries.npy"), "--concurrency", "4", "--duration-s", "1"});
  ASSERT_EQ(load.exit_code, 0) << load.err;
  const nlohmann::json report = nlohmann::json::parse(load.out);
  EXPECT_GT(report["qps"].get<double>(), 0);
  EXPECT_EQ(report["errors"], 0);
  EXPECT_GT(report["ok"].get<int>(), 0);
  for (const char* key : {"p50", "p90", "p99"}) {
    EXPECT_GT(report["latency_ms"][key].get<double>(), 0) << key;
  }
  EXPECT_GT(report["mean_samples_per_query"].get<double>(), 0);

  // Calls of 8 queries: every answer counts, and the calls' queries share batches.
  CommandResult batch_load =
      RunCommand({Cli(), "loadgen", "--target", server_->address, "--model", "small", "--queries",
                  dir_->Sub("repo/small/queries.npy"), "--concurrency", "2", "--duration-s", "1",
                  "--batch-size", "8"});
  ASSERT_EQ(batch_load.exit_code, 0) << batch_load.err;
  const nlohmann::json batch_report = nlohmann::json::parse(batch_load.out);
  EXPECT_EQ(batch_report["batch_size"], 8);
  EXPECT_EQ(batch_report["errors"], 0);
  EXPECT_EQ(batch_report["ok"].get<int>() % 8, 0);
  EXPECT_GT(batch_report["mean_batch_size"].get<double>(), 1);
}

// Health is NOT_SERVING while a model loads. The model's labels file is a FIFO: loading blocks
// on it until the test writes the labels, so the loading phase lasts exactly as long as the
// test wants.
TEST(ServerStartupTest, HealthIsNotServingUntilEveryModelIsLoaded) {
  TempDir dir;
  WriteModel(dir.Sub("repo/slow"), SmallModel(21));
  const std::string fifo = dir.Sub("repo/slow/labels.fifo");
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  WriteTextFile(dir.Sub("repo/slow/model.pbtxt"),
                "weights: \"weights.npy\"\nbias: \"bias.npy\"\nlabels: \"labels.fifo\"\n");
  ServerProcess server = StartServerProcess(dir.Sub("repo"), dir.Sub("cache"), {}, false);
  ASSERT_FALSE(server.address.empty());
  const std::string cli = BinDir() + "/adasoftmax";

  CommandResult loading = RunCommand({cli, "health", "--target", server.address});
  EXPECT_EQ(loading.exit_code, 1) << loading.err;
  EXPECT_THAT(loading.out, HasSubstr("NOT_SERVING"));
  std::unique_ptr<Client> client = Connect(server.address);
  std::vector<float> query(kD, 0.1f);
  EXPECT_EQ(client->TopKSoftmax("slow", query).status().code(), absl::StatusCode::kUnavailable);

  {
    std::ofstream labels(fifo);  // unblocks the loader
    for (size_t i = 0; i < kN; ++i) labels << "label" << i << "\n";
  }
  ASSERT_TRUE(server.process->WaitForLine("serving on", absl::Seconds(60)))
      << server.process->Stderr();
  CommandResult ready = RunCommand({cli, "health", "--target", server.address});
  EXPECT_EQ(ready.exit_code, 0) << ready.err;
  EXPECT_THAT(ready.out, HasSubstr("SERVING"));
  absl::StatusOr<Result> r = client->TopKSoftmax("slow", query);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(r->labels[0], HasSubstr("label"));

  client.reset();  // an open idle connection would make gRPC's shutdown wait for it
  server.process->Signal(SIGTERM);
  EXPECT_EQ(server.process->Wait(), 0);
  CommandResult gone = RunCommand({cli, "health", "--target", server.address, "--timeout-s", "2"});
  EXPECT_NE(gone.exit_code, 0);
}

TEST(ServerStartupTest, ModelThatFailsToLoadStopsStartUpWithAClearMessage) {
  TempDir dir;
  WriteModel(dir.Sub("repo/good"), SmallModel(22));
  WriteTextFile(dir.Sub("repo/bad/model.pbtxt"), "weights: \"weights.npy\"\nbogus_field: 1\n");
  ServerProcess server = StartServerProcess(dir.Sub("repo"), dir.Sub("cache"), {}, false);
  ASSERT_NE(server.process, nullptr);
  EXPECT_EQ(server.process->Wait(), 1);
  const std::string log = server.process->Stderr();
  EXPECT_THAT(log, HasSubstr("bad"));
  EXPECT_THAT(log, HasSubstr("bogus_field"));
  EXPECT_THAT(log, ::testing::Not(HasSubstr("serving on")));
}

// --batch_threads sets how many batches run at once apart from --threads, which each batch
// splits its work over (and which the batch threads follow by default).
TEST(ServerStartupTest, BatchThreadsAreSetApartFromTheThreadsOfABatch) {
  TempDir dir;
  const SynthData data = WriteModel(dir.Sub("repo/small"), SmallModel(24));
  for (const auto& [flags, line] : std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"--threads=2", "--batch_threads=1"}, "threads 2 a batch, 1 batch threads"},
           {{"--threads=3"}, "threads 3 a batch, 3 batch threads"}}) {
    ServerProcess server = StartServerProcess(dir.Sub("repo"), dir.Sub("cache"), flags);
    ASSERT_FALSE(server.address.empty());
    EXPECT_THAT(server.process->Stderr(), HasSubstr(line));
    EXPECT_TRUE(Connect(server.address)->TopKSoftmax("small", QueryRow(data.queries, 0)).ok());
    server.process->Signal(SIGTERM);
    EXPECT_EQ(server.process->Wait(), 0);
  }
  const CommandResult bad = RunCommand({BinDir() + "/adasoftmax-server", "--batch_threads=-1"});
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_THAT(bad.err, HasSubstr("--batch_threads must be >= 0"));
}

TEST(ServerStartupTest, TheReleaseIsPrintedByVersionAndLoggedAtStart) {
  const CommandResult version = RunCommand({BinDir() + "/adasoftmax-server", "--version"});
  EXPECT_EQ(version.exit_code, 0);
  EXPECT_EQ(version.out, absl::StrCat("adasoftmax-server ", kVersion, "\n"));
  TempDir dir;
  WriteModel(dir.Sub("repo/small"), SmallModel(26));
  ServerProcess server = StartServerProcess(dir.Sub("repo"), dir.Sub("cache"), {});
  ASSERT_FALSE(server.address.empty());
  EXPECT_THAT(server.process->Stderr(), HasSubstr(absl::StrCat("version ", kVersion, "\n")));
  server.process->Signal(SIGTERM);
  EXPECT_EQ(server.process->Wait(), 0) << server.process->Stderr();
}

// Without --threads, a server started with one CPU in its affinity mask (as by taskset, or a
// container's cpuset) runs one thread a batch, not one per online CPU.
TEST(ServerStartupTest, ThreadsDefaultToTheCpusTheProcessMayUse) {
  cpu_set_t saved, one;
  ASSERT_EQ(sched_getaffinity(0, sizeof(saved), &saved), 0);
  CPU_ZERO(&one);
  for (int cpu = 0; cpu < CPU_SETSIZE && CPU_COUNT(&one) == 0; ++cpu) {
    if (CPU_ISSET(cpu, &saved)) CPU_SET(cpu, &one);
  }
  ASSERT_EQ(sched_setaffinity(0, sizeof(one), &one), 0);  // the server inherits it
  TempDir dir;
  const SynthData data = WriteModel(dir.Sub("repo/small"), SmallModel(25));
  ServerProcess server = StartServerProcess(dir.Sub("repo"), dir.Sub("cache"), {});
  sched_setaffinity(0, sizeof(saved), &saved);
  ASSERT_FALSE(server.address.empty());
  EXPECT_THAT(server.process->Stderr(),
              HasSubstr("threads 1 a batch, 1 batch threads (CPUs: 1 usable"));
  EXPECT_TRUE(Connect(server.address)->TopKSoftmax("small", QueryRow(data.queries, 0)).ok());
  server.process->Signal(SIGTERM);
  EXPECT_EQ(server.process->Wait(), 0);
}

// A SIGTERM while the models load (Kubernetes stopping a Pod that is still starting) ends the
// process cleanly once they are loaded, whichever of its threads the kernel hands the signal to.
TEST(ServerShutdownTest, SigtermWhileLoadingExitsZero) {
  TempDir dir;
  WriteTextFile(dir.Sub("repo/big/model.pbtxt"),
                "synthetic { n: 50257 d: 768 seed: 7 queries: 4 heavy_tailed: true }\n");
  ServerProcess server = StartServerProcess(dir.Sub("repo"), dir.Sub("cache"), {}, false);
  ASSERT_NE(server.process, nullptr);
  ASSERT_THAT(server.process->Stderr(), ::testing::Not(HasSubstr("serving on")));  // loading
  server.process->Signal(SIGTERM);
  EXPECT_EQ(server.process->Wait(), 0) << server.process->Stderr();
  EXPECT_THAT(server.process->Stderr(), HasSubstr("received SIGTERM"));
}

// SIGTERM while requests wait in the queue (the batch timeout is far away): they are all
// answered, and the process exits 0 long before the timeout would have fired.
TEST(ServerShutdownTest, SigtermDrainsInFlightCallsAndExitsZero) {
  TempDir dir;
  const SynthData data = WriteModel(dir.Sub("repo/small"), SmallModel(23));
  ServerProcess server = StartServerProcess(
      dir.Sub("repo"), dir.Sub("cache"),
      {"--batch_timeout_us=60000000", "--max_batch_size=64", "--shutdown_grace_s=30"});
  ASSERT_FALSE(server.address.empty());
  constexpr int kCalls = 6;
  std::atomic<int> answered{0};
  std::vector<std::thread> callers;
  for (int i = 0; i < kCalls; ++i) {
    callers.emplace_back([&, i] {
      std::unique_ptr<Client> client = Connect(server.address);
      absl::StatusOr<Result> r = client->TopKSoftmax("small", QueryRow(data.queries, i));
      if (r.ok()) ++answered;
    });
  }
  ASSERT_EQ(
      WaitForMetric(server.metrics_address, "adasoftmax_queue_size", {{"model", "small"}}, kCalls),
      kCalls);
  const absl::Time signalled = absl::Now();
  server.process->Signal(SIGTERM);
  EXPECT_EQ(server.process->Wait(), 0) << server.process->Stderr();
  for (auto& t : callers) t.join();
  EXPECT_EQ(answered, kCalls);
  EXPECT_LT(absl::Now() - signalled, absl::Seconds(20));
  EXPECT_THAT(server.process->Stderr(), HasSubstr("draining"));
}

// SIGHUP reloads the repository: an added model is served, a removed one no longer is, and a
// config that does not load is reported while its previous version keeps serving.
TEST(ServerReloadTest, SighupLoadsAddedModelsAndUnloadsRemovedOnes) {
  TempDir dir;
  const SynthData data = WriteModel(dir.Sub("repo/small"), SmallModel(23));
  WriteModel(dir.Sub("repo/old"), SmallModel(24));
  ServerProcess server = StartServerProcess(dir.Sub("repo"), dir.Sub("cache"));
  ASSERT_FALSE(server.address.empty());
  std::unique_ptr<Client> client = Connect(server.address);
  ASSERT_TRUE(client->TopKSoftmax("old", QueryRow(data.queries, 0)).ok());

  WriteModel(dir.Sub("repo/added"), SmallModel(25));
  std::filesystem::remove_all(dir.Sub("repo/old"));
  server.process->Signal(SIGHUP);
  ASSERT_TRUE(server.process->WaitForLine("serving models added, small", absl::Seconds(60)))
      << server.process->Stderr();
  EXPECT_THAT(server.process->Stderr(), HasSubstr("unloaded model old"));
  EXPECT_TRUE(client->TopKSoftmax("added", QueryRow(data.queries, 0)).ok());
  EXPECT_EQ(client->TopKSoftmax("old", QueryRow(data.queries, 0)).status().code(),
            absl::StatusCode::kNotFound);

  WriteTextFile(dir.Sub("repo/small/model.pbtxt"), "weights: \"gone.npy\"\n");
  server.process->Signal(SIGHUP);
  ASSERT_TRUE(server.process->WaitForLine("gone.npy", absl::Seconds(60)))
      << server.process->Stderr();
  EXPECT_TRUE(client->TopKSoftmax("small", QueryRow(data.queries, 0)).ok());
  EXPECT_EQ(*client->Health(), HealthStatus::kServing);
  // `adasoftmax models` shows the folder that does not load, and why.
  const CommandResult text =
      RunCommand({BinDir() + "/adasoftmax", "models", "--target", server.address});
  ASSERT_EQ(text.exit_code, 0) << text.err;
  EXPECT_THAT(text.out, HasSubstr("unavailable: model " + dir.Sub("repo/small")));
  EXPECT_THAT(text.out, HasSubstr("gone.npy"));
  EXPECT_THAT(text.out, HasSubstr("(its previous version serves as small)"));
  const CommandResult json =
      RunCommand({BinDir() + "/adasoftmax", "models", "--target", server.address, "--json"});
  ASSERT_EQ(json.exit_code, 0) << json.err;
  const nlohmann::json unavailable = nlohmann::json::parse(json.out)["unavailable"];
  ASSERT_EQ(unavailable.size(), 1u);
  EXPECT_EQ(unavailable[0]["folder"], dir.Sub("repo/small"));
  EXPECT_EQ(unavailable[0]["serving"], "small");
  EXPECT_EQ(
      WaitForMetric(server.metrics_address, "adasoftmax_repository_unavailable_models", {}, 1), 1);
  // An idle C++ channel acks the server's shutdown GOAWAY ping only at its 5-s backup poll.
  client.reset();
  server.process->Signal(SIGTERM);
  EXPECT_EQ(server.process->Wait(), 0) << server.process->Stderr();
}

// Weights copied over in place (truncated, then written, as `cp` does) while the server polls:
// a load that reads a file mid-copy fails and is retried, and the server never crashes (a
// memory-mapped file truncated under a load used to end it with SIGBUS).
TEST(ServerReloadTest, WeightsCopiedOverWhileItPollsNeverCrashTheServer) {
  TempDir dir;
  std::string versions[2];
  for (int v = 0; v < 2; ++v) {
    Matrix weights = Matrix::Owned(4096, 2048, Layout::kRowMajor);  // 32 MiB
    weights.mutable_data()[0] = static_cast<float>(v);
    ASSERT_TRUE(WriteNpy(dir.Sub("v.npy"), weights).ok());
    versions[v] = ReadTextFile(dir.Sub("v.npy"));
  }
  WriteTextFile(dir.Sub("repo/m/model.pbtxt"), "weights: \"weights.npy\"\n");
  WriteTextFile(dir.Sub("repo/m/weights.npy"), versions[0]);
  ServerProcess server =
      StartServerProcess(dir.Sub("repo"), dir.Sub("cache"), {"--repository_poll_s=0.01"});
  ASSERT_FALSE(server.address.empty()) << server.process->Stderr();
  for (int i = 0; i < 60; ++i) {
    WriteTextFile(dir.Sub("repo/m/weights.npy"), versions[i % 2]);
    absl::SleepFor(absl::Milliseconds(20 + 10 * (i % 4)));
  }
  std::unique_ptr<Client> client = Connect(server.address);
  const absl::StatusOr<HealthStatus> health = client->Health();
  ASSERT_TRUE(health.ok()) << health.status() << "\n" << server.process->Stderr();
  EXPECT_EQ(*health, HealthStatus::kServing);
  EXPECT_TRUE(client->TopKSoftmax("m", std::vector<float>(2048, 1.0f)).ok());
  client.reset();
  server.process->Signal(SIGTERM);
  EXPECT_EQ(server.process->Wait(), 0) << server.process->Stderr();
}

// --exit_on_model_error=false: a model that does not load at start-up is listed, the others
// serve; the variable sets it too.
TEST(ServerReloadTest, WithoutExitOnModelErrorTheOthersServe) {
  TempDir dir;
  const SynthData data = WriteModel(dir.Sub("repo/small"), SmallModel(23));
  WriteTextFile(dir.Sub("repo/broken/model.pbtxt"), "weights: \"missing.npy\"\n");
  ServerProcess server =
      StartServerProcess(dir.Sub("repo"), dir.Sub("cache"), {"--exit_on_model_error=false"});
  ASSERT_FALSE(server.address.empty());
  EXPECT_THAT(server.process->Stderr(),
              HasSubstr("serving without: model " + dir.Sub("repo/broken")));
  std::unique_ptr<Client> client = Connect(server.address);
  EXPECT_TRUE(client->TopKSoftmax("small", QueryRow(data.queries, 0)).ok());
  const absl::StatusOr<v1::ListModelsResponse> models = client->ListModels();
  ASSERT_TRUE(models.ok()) << models.status();
  ASSERT_EQ(models->unavailable_size(), 1);
  EXPECT_THAT(models->unavailable(0).reason(), HasSubstr("missing.npy"));
  client.reset();
  server.process->Signal(SIGTERM);
  EXPECT_EQ(server.process->Wait(), 0) << server.process->Stderr();

  // By default the model stops start-up.
  const CommandResult strict =
      RunCommand({BinDir() + "/adasoftmax-server", "--model_repository=" + dir.Sub("repo"),
                  "--address=127.0.0.1:0", "--metrics_address="});
  EXPECT_EQ(strict.exit_code, 1);
  EXPECT_THAT(strict.err, HasSubstr("start-up failed: model " + dir.Sub("repo/broken")));
}

TEST(ServerReloadTest, RepositoryPollLoadsChangesWithoutASignal) {
  TempDir dir;
  const SynthData data = WriteModel(dir.Sub("repo/small"), SmallModel(23));
  ServerProcess server =
      StartServerProcess(dir.Sub("repo"), dir.Sub("cache"), {"--repository_poll_s=0.2"});
  ASSERT_FALSE(server.address.empty());
  EXPECT_THAT(server.process->Stderr(), HasSubstr("reloaded on SIGHUP and every 0.2 s"));
  WriteModel(dir.Sub("repo/added"), SmallModel(25));
  EXPECT_EQ(WaitForMetric(server.metrics_address, "adasoftmax_repository_reloads_total",
                          {{"result", "ok"}}, 1),
            1);
  std::unique_ptr<Client> client = Connect(server.address);
  EXPECT_TRUE(client->TopKSoftmax("added", QueryRow(data.queries, 0)).ok());
  client.reset();
  server.process->Signal(SIGTERM);
  EXPECT_EQ(server.process->Wait(), 0) << server.process->Stderr();

  for (const char* flag : {"--repository_poll_s=-1", "--repository_poll_s=nan"}) {
    const CommandResult bad = RunCommand({BinDir() + "/adasoftmax-server", flag});
    EXPECT_EQ(bad.exit_code, 2) << flag;
    EXPECT_THAT(bad.err, HasSubstr("--repository_poll_s must be >= 0")) << flag;
  }
}

// A repository whose one model (4096 x 4096 float32: 128 MiB to load) does not fit under a
// memory limit: start-up fails naming the model, its size and the limit, and exits 1.
class ServerMemoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::filesystem::create_directories(dir_.Sub("repo/big"));
    ASSERT_TRUE(
        WriteNpy(dir_.Sub("repo/big/weights.npy"), Matrix::Owned(4096, 4096, Layout::kRowMajor))
            .ok());
    WriteTextFile(dir_.Sub("repo/big/model.pbtxt"), "weights: \"weights.npy\"\n");
  }
  CommandResult Start(const std::string& memory_flag) {
    return RunCommand({BinDir() + "/adasoftmax-server", "--model_repository=" + dir_.Sub("repo"),
                       "--address=127.0.0.1:0", "--metrics_address=", memory_flag});
  }
  TempDir dir_;
};

TEST_F(ServerMemoryTest, AModelBeyondTheMemoryLimitStopsStartUp) {
  const CommandResult small = Start("--memory_limit_mb=16");
  EXPECT_EQ(small.exit_code, 1) << small.err;
  EXPECT_THAT(small.err, HasSubstr("memory limit 16 MiB"));
  EXPECT_THAT(small.err, HasSubstr("repo/big"));
  EXPECT_THAT(small.err, HasSubstr("4096 x 4096 x (4 + 4) bytes"));
  EXPECT_THAT(small.err, HasSubstr("the memory limit is 16.0 MiB"));
  const CommandResult negative = Start("--memory_limit_mb=-2");
  EXPECT_EQ(negative.exit_code, 2) << negative.err;
  EXPECT_THAT(negative.err, HasSubstr("--memory_limit_mb must be -1"));
}

// The limit defaults to the cgroup's: the server started in a cgroup v1 limited to 64 MiB (when
// this process may make one: root and a writable memory hierarchy, as on the CI machine) reads
// it and refuses the model instead of being killed loading it.
TEST_F(ServerMemoryTest, TheLimitIsTheCgroupsByDefault) {
  std::unique_ptr<TestCgroup> cgroup = TestCgroup::Make("memory");
  if (cgroup == nullptr) GTEST_SKIP() << "needs root and a writable cgroup v1 memory hierarchy";
  cgroup->Set("memory.limit_in_bytes", 64 << 20);
  cgroup->Enter();  // the server inherits it
  const CommandResult r = Start("--memory_limit_mb=-1");
  cgroup->Leave();
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_THAT(r.err, HasSubstr("memory limit 64.0 MiB (the cgroup's)"));
  EXPECT_THAT(r.err, HasSubstr("4096 x 4096 x (4 + 4) bytes"));
  EXPECT_THAT(r.err, HasSubstr("the memory limit is 64.0 MiB"));
}

}  // namespace
}  // namespace adasoftmax::testing
