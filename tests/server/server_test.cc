// The server in-process on a loopback port chosen by the kernel, driven through the C++
// client: health transitions, answers against the exact path, every bad input, streaming,
// queue limits, deadlines.

#include "server/server.h"

#include <cmath>
#include <filesystem>
#include <limits>
#include <memory>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "client/grpc_client.h"
#include "core/calibration.h"
#include "core/exact_softmax.h"
#include "core/model.h"
#include "core/pac.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/text_serializer.h"
#include "tests/server/fake_clock.h"
#include "tests/server/test_util.h"

namespace adasoftmax::server {
namespace {

using ::adasoftmax::client::Client;
using ::adasoftmax::client::HealthStatus;
using ::adasoftmax::client::Result;
using ::adasoftmax::client::TopKOptions;
using ::adasoftmax::testing::QueryRow;
using ::adasoftmax::testing::TempDir;
using ::adasoftmax::testing::WriteModel;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr size_t kN = 600;
constexpr size_t kD = 48;

SynthOptions SmallModel(uint64_t seed = 3) {
  SynthOptions o;
  o.n = kN;
  o.d = kD;
  o.queries = 40;
  o.seed = seed;
  o.bias = true;
  return o;
}

std::string MetricsText(prometheus::Registry& registry) {
  return prometheus::TextSerializer().Serialize(registry.Collect());
}

class ServerTest : public ::testing::Test {
 protected:
  // Writes the repository: "small" (labels, bias) plus whatever `extra_models` adds.
  void SetUp() override { data_ = WriteModel(dir_.Sub("repo/small"), SmallModel()); }

  void StartServer(const Clock* clock = nullptr, int max_message_bytes = 64 << 10) {
    ServerOptions o;
    o.model_repository = dir_.Sub("repo");
    o.address = "127.0.0.1:0";
    o.metrics_address = "";
    o.threads = 2;
    o.max_message_bytes = max_message_bytes;
    o.repository.cache_dir = dir_.Sub("cache");
    o.repository.batching.batch_timeout = absl::Microseconds(200);
    o.require_every_model = require_every_model_;
    auto server = Server::Start(o, {}, clock);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    auto channel = client::MakeChannel(server_->address());
    ASSERT_TRUE(channel.ok());
    client_ = std::make_unique<Client>(*channel);
  }

  void StartAndLoad(const Clock* clock = nullptr) {
    StartServer(clock);
    ASSERT_TRUE(server_->LoadModels().ok());
  }

  absl::Span<const float> Row(size_t r) const { return QueryRow(data_.queries, r); }

  TempDir dir_;
  SynthData data_;
  bool require_every_model_ = true;
  FakeClock fake_clock_;  // outlives server_
  std::unique_ptr<Server> server_;
  std::unique_ptr<Client> client_;
};

TEST_F(ServerTest, HealthIsNotServingUntilEveryModelIsLoaded) {
  StartServer();
  EXPECT_EQ(*client_->Health(), HealthStatus::kNotServing);
  EXPECT_EQ(*client_->Health("adasoftmax.v1.SoftmaxService"), HealthStatus::kNotServing);
  EXPECT_EQ(client_->TopKSoftmax("small", Row(0)).status().code(),
            absl::StatusCode::kUnavailable);
  ASSERT_TRUE(server_->LoadModels().ok());
  EXPECT_EQ(*client_->Health(), HealthStatus::kServing);
  EXPECT_EQ(*client_->Health("adasoftmax.v1.SoftmaxService"), HealthStatus::kServing);
  EXPECT_TRUE(client_->TopKSoftmax("small", Row(0)).ok());
  server_->Shutdown(absl::Seconds(1));
  EXPECT_FALSE(client_->Health().ok());
}

// Each model's health under its name: unknown until served, SERVING while served, NOT_SERVING
// once a reload removed it.
TEST_F(ServerTest, EachModelHasItsOwnHealth) {
  WriteModel(dir_.Sub("repo/other"), SmallModel(5));
  StartServer();
  EXPECT_EQ(client_->Health("small").status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(server_->LoadModels().ok());
  EXPECT_EQ(*client_->Health("small"), HealthStatus::kServing);
  EXPECT_EQ(*client_->Health("other"), HealthStatus::kServing);
  EXPECT_EQ(client_->Health("nope").status().code(), absl::StatusCode::kNotFound);
  std::filesystem::remove_all(dir_.Sub("repo/other"));
  ASSERT_TRUE(server_->ReloadModels().ok());
  EXPECT_EQ(*client_->Health("other"), HealthStatus::kNotServing);
  EXPECT_EQ(*client_->Health("small"), HealthStatus::kServing);
  EXPECT_EQ(*client_->Health(), HealthStatus::kServing);
  WriteModel(dir_.Sub("repo/other"), SmallModel(5));
  ASSERT_TRUE(server_->ReloadModels().ok());
  EXPECT_EQ(*client_->Health("other"), HealthStatus::kServing);
  server_->Shutdown(absl::Seconds(1));
  EXPECT_FALSE(client_->Health("small").ok());
}

TEST_F(ServerTest, ModelThatFailsToLoadStopsStartUpAndStaysNotServing) {
  testing::WriteTextFile(dir_.Sub("repo/broken/model.pbtxt"), "weights: \"missing.npy\"\n");
  StartServer();
  const absl::Status s = server_->LoadModels();
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("broken"));
  EXPECT_THAT(s.message(), HasSubstr("missing.npy"));
  EXPECT_EQ(*client_->Health(), HealthStatus::kNotServing);
}

// Not requiring every model, the server starts with those that load and lists the others as
// reloads do; with none loaded it still fails.
TEST_F(ServerTest, WithoutRequiringEveryModelTheOthersServe) {
  testing::WriteTextFile(dir_.Sub("repo/broken/model.pbtxt"), "weights: \"missing.npy\"\n");
  require_every_model_ = false;
  StartServer();
  ASSERT_TRUE(server_->LoadModels().ok());
  EXPECT_EQ(*client_->Health(), HealthStatus::kServing);
  EXPECT_TRUE(client_->TopKSoftmax("small", Row(0)).ok());
  auto models = client_->ListModels();
  ASSERT_TRUE(models.ok()) << models.status();
  ASSERT_EQ(models->models_size(), 1);
  ASSERT_EQ(models->unavailable_size(), 1);
  EXPECT_EQ(models->unavailable(0).folder(), dir_.Sub("repo/broken"));
  EXPECT_THAT(models->unavailable(0).reason(), HasSubstr("missing.npy"));
  EXPECT_THAT(MetricsText(server_->registry()),
              HasSubstr("adasoftmax_repository_unavailable_models 1"));
  // Mended, a reload serves it.
  testing::WriteModel(dir_.Sub("repo/broken"), SmallModel(3), "name: \"mended\"\n");
  ASSERT_TRUE(server_->ReloadModels().ok());
  EXPECT_TRUE(client_->TopKSoftmax("mended", Row(0)).ok());
  server_.reset();

  std::filesystem::remove_all(dir_.Sub("repo/small"));
  std::filesystem::remove_all(dir_.Sub("repo/broken"));
  testing::WriteTextFile(dir_.Sub("repo/broken/model.pbtxt"), "weights: \"missing.npy\"\n");
  StartServer();
  EXPECT_THAT(server_->LoadModels().message(), HasSubstr("missing.npy"));
  EXPECT_EQ(*client_->Health(), HealthStatus::kNotServing);
}

// gRPC allows SO_REUSEPORT by default: a second server on a taken port would start and silently
// take half of the first one's new connections.
TEST_F(ServerTest, ASecondServerOnATakenAddressFailsToStart) {
  StartServer();
  ServerOptions o;
  o.model_repository = dir_.Sub("repo");
  o.address = server_->address();
  o.metrics_address = "";
  absl::StatusOr<std::unique_ptr<Server>> second = Server::Start(o, {}, nullptr);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(second.status().message(), HasSubstr("cannot listen on " + server_->address()));
}

TEST_F(ServerTest, AnswersMatchTheExactPath) {
  StartAndLoad();
  auto model = Model::Load({dir_.Sub("repo/small/weights.npy"), "", dir_.Sub("repo/small/bias.npy"), ""});
  ASSERT_TRUE(model.ok());
  ExactSoftmax exact(*model);
  for (size_t q = 0; q < 10; ++q) {
    adasoftmax::Query local{Row(q), {.k = 5}};
    const TopKResult want = exact.Run(absl::MakeConstSpan(&local, 1)).front();

    TopKOptions o;
    o.k = 5;
    o.mode = v1::MODE_EXACT;
    absl::StatusOr<Result> got = client_->TopKSoftmax("small", Row(q), o);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->indices, want.indices);
    EXPECT_EQ(got->mode, v1::MODE_EXACT);
    EXPECT_EQ(got->samples, kN * kD);
    for (size_t i = 0; i < 5; ++i) {
      EXPECT_NEAR(got->probabilities[i], want.probabilities[i], 1e-9);
      EXPECT_EQ(got->labels[i], absl::StrCat("class", want.indices[i]));
    }

    // Adaptive, seeded (reproducible): must meet the PAC criterion against the exact answer.
    o.mode = v1::MODE_ADAPTIVE;
    o.seed = 100 + q;
    o.epsilon = 0.1;
    absl::StatusOr<Result> adaptive = client_->TopKSoftmax("small", Row(q), o);
    ASSERT_TRUE(adaptive.ok()) << adaptive.status();
    EXPECT_EQ(adaptive->mode, v1::MODE_ADAPTIVE);
    EXPECT_EQ(adaptive->batch_size, 1u);
    TopKResult as_result;
    as_result.indices = adaptive->indices;
    as_result.probabilities = adaptive->probabilities;
    EXPECT_TRUE(MeetsPac(as_result, ComputeReference(**model, Row(q), 1.0), 5, 0.1)) << q;
  }
}

TEST_F(ServerTest, CalibratedModelAnswersStricterRequestsExactly) {
  WriteModel(dir_.Sub("repo/calibrated"), SmallModel(),
             "calibration: \"calibration.json\"\nadaptive { sample_cost: 0 }\n");
  Calibration cal;
  cal.epsilon = 0.3;
  cal.delta = 0.01;
  cal.calibration_queries = 300;
  ASSERT_TRUE(WriteCalibration(dir_.Sub("repo/calibrated/calibration.json"), cal).ok());
  StartAndLoad();
  for (size_t q = 0; q < 5; ++q) {
    TopKOptions o;
    o.seed = 1 + q;
    for (double epsilon : {0.1, 0.3}) {
      o.epsilon = epsilon;
      absl::StatusOr<Result> got = client_->TopKSoftmax("calibrated", Row(q), o);
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(got->mode, v1::MODE_ADAPTIVE);
      EXPECT_EQ(got->exact, epsilon < cal.epsilon) << q << " " << epsilon;
    }
  }
}

TEST_F(ServerTest, SeededRequestIsReproducible) {
  StartAndLoad();
  TopKOptions o;
  o.k = 3;
  o.seed = 42;
  absl::StatusOr<Result> a = client_->TopKSoftmax("small", Row(1), o);
  absl::StatusOr<Result> b = client_->TopKSoftmax("small", Row(1), o);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->indices, b->indices);
  EXPECT_EQ(a->probabilities, b->probabilities);
  EXPECT_EQ(a->log_partition, b->log_partition);
  EXPECT_EQ(a->samples, b->samples);
}

// One bad request per rule; each gets INVALID_ARGUMENT naming its field (or the code given),
// and the server keeps answering good requests.
TEST_F(ServerTest, EveryBadInputGetsAClearErrorAndChangesNothing) {
  StartAndLoad();
  std::vector<float> good(Row(0).begin(), Row(0).end());
  std::vector<float> nan = good, inf = good, short_query(good.begin(), good.end() - 1);
  nan[3] = std::numeric_limits<float>::quiet_NaN();
  inf[7] = -std::numeric_limits<float>::infinity();
  struct Case {
    std::string name;
    std::string model = "small";
    std::vector<float> query;
    TopKOptions options;
    absl::StatusCode code = absl::StatusCode::kInvalidArgument;
    std::string field;
  };
  auto with = [&](auto set) {
    TopKOptions o;
    set(o);
    return o;
  };
  const std::vector<Case> cases = {
      {"wrong length", "small", short_query, {}, absl::StatusCode::kInvalidArgument, "query"},
      {"empty query", "small", {}, {}, absl::StatusCode::kInvalidArgument, "query"},
      {"NaN", "small", nan, {}, absl::StatusCode::kInvalidArgument, "query"},
      {"Inf", "small", inf, {}, absl::StatusCode::kInvalidArgument, "query"},
      {"k = 0", "small", good, with([](TopKOptions& o) { o.k = 0; }),
       absl::StatusCode::kInvalidArgument, "k"},
      {"k > n", "small", good, with([](TopKOptions& o) { o.k = kN + 1; }),
       absl::StatusCode::kInvalidArgument, "k"},
      {"epsilon 0", "small", good, with([](TopKOptions& o) { o.epsilon = 0; }),
       absl::StatusCode::kInvalidArgument, "epsilon"},
      {"epsilon 1", "small", good, with([](TopKOptions& o) { o.epsilon = 1; }),
       absl::StatusCode::kInvalidArgument, "epsilon"},
      {"epsilon NaN", "small", good,
       with([](TopKOptions& o) { o.epsilon = std::numeric_limits<double>::quiet_NaN(); }),
       absl::StatusCode::kInvalidArgument, "epsilon"},
      {"delta 0", "small", good, with([](TopKOptions& o) { o.delta = 0; }),
       absl::StatusCode::kInvalidArgument, "delta"},
      {"delta 1.5", "small", good, with([](TopKOptions& o) { o.delta = 1.5; }),
       absl::StatusCode::kInvalidArgument, "delta"},
      {"temperature 0", "small", good, with([](TopKOptions& o) { o.temperature = 0; }),
       absl::StatusCode::kInvalidArgument, "temperature"},
      {"temperature -1", "small", good, with([](TopKOptions& o) { o.temperature = -1; }),
       absl::StatusCode::kInvalidArgument, "temperature"},
      {"mode 7", "small", good, with([](TopKOptions& o) { o.mode = static_cast<v1::Mode>(7); }),
       absl::StatusCode::kInvalidArgument, "mode"},
      {"unknown model", "nope", good, {}, absl::StatusCode::kNotFound, "model"},
      {"oversized message", "small", std::vector<float>(100000, 1.0f), {},
       absl::StatusCode::kResourceExhausted, ""},
  };
  for (const Case& c : cases) {
    for (v1::Mode mode : {v1::MODE_ADAPTIVE, v1::MODE_EXACT}) {
      TopKOptions o = c.options;
      if (o.mode == v1::MODE_UNSPECIFIED) o.mode = mode;
      absl::StatusOr<Result> r = client_->TopKSoftmax(c.model, c.query, o);
      EXPECT_EQ(r.status().code(), c.code) << c.name << ": " << r.status();
      if (!c.field.empty()) {
        EXPECT_THAT(r.status().message(), HasSubstr(c.field + ":")) << c.name;
      }
    }
  }
  TopKOptions k2;
  k2.k = 2;
  absl::StatusOr<Result> ok = client_->TopKSoftmax("small", good, k2);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->indices.size(), 2u);
  EXPECT_EQ(*client_->Health(), HealthStatus::kServing);
  const std::string metrics = MetricsText(server_->registry());
  EXPECT_THAT(metrics, HasSubstr("code=\"INVALID_ARGUMENT\""));
  EXPECT_THAT(metrics, HasSubstr("model=\"<unknown>\""));
}

// Bad requests mixed into the same batches as good ones disturb nothing.
TEST_F(ServerTest, BadRequestsDoNotDisturbGoodOnesInTheSameBatch) {
  StartAndLoad();
  std::vector<std::thread> callers;
  std::atomic<int> good_ok{0}, bad_rejected{0};
  for (int t = 0; t < 8; ++t) {
    callers.emplace_back([&, t] {
      for (int i = 0; i < 10; ++i) {
        TopKOptions o;
        o.k = 2;
        if (t % 2 == 1) {
          o.epsilon = 2;  // bad
          if (client_->TopKSoftmax("small", Row(i), o).status().code() ==
              absl::StatusCode::kInvalidArgument) {
            ++bad_rejected;
          }
        } else if (client_->TopKSoftmax("small", Row(i), o).ok()) {
          ++good_ok;
        }
      }
    });
  }
  for (auto& t : callers) t.join();
  EXPECT_EQ(good_ok, 40);
  EXPECT_EQ(bad_rejected, 40);
}

TEST_F(ServerTest, StreamAnswersEveryRequestAndReportsErrorsPerRequest) {
  StartAndLoad();
  std::vector<absl::Span<const float>> queries;
  for (size_t q = 0; q < 30; ++q) queries.push_back(Row(q));
  std::vector<float> bad(kD - 1, 0.5f);
  queries.push_back(bad);
  TopKOptions o;
  o.k = 3;
  o.mode = v1::MODE_EXACT;
  auto results = client_->TopKSoftmaxStream("small", queries, o);
  ASSERT_TRUE(results.ok()) << results.status();
  ASSERT_EQ(results->size(), 31u);
  for (size_t q = 0; q < 30; ++q) {
    ASSERT_TRUE((*results)[q].ok()) << q << ": " << (*results)[q].status();
    absl::StatusOr<Result> single = client_->TopKSoftmax("small", Row(q), o);
    EXPECT_EQ((*results)[q]->indices, single->indices);
  }
  EXPECT_EQ((*results)[30].status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT((*results)[30].status().message(), HasSubstr("query:"));
}

// A batch call answers each request as its own call would, in order, and a bad request gets
// its own error while the others are answered.
TEST_F(ServerTest, BatchCallAnswersEachRequestInOrderAndErrorsPerRequest) {
  StartAndLoad();
  auto channel = client::MakeChannel(server_->address());
  auto stub = v1::SoftmaxService::NewStub(*channel);
  auto add = [](v1::TopKSoftmaxBatchRequest& batch, const std::string& model,
                absl::Span<const float> query, uint32_t k, v1::Mode mode, uint64_t seed) {
    v1::TopKSoftmaxRequest* r = batch.add_requests();
    r->set_model(model);
    r->mutable_query()->Assign(query.begin(), query.end());
    r->set_k(k);
    r->set_mode(mode);
    r->set_seed(seed);
    r->set_id(absl::StrCat("id", batch.requests_size() - 1));
  };
  const std::vector<float> short_query(kD - 1, 0.5f);
  v1::TopKSoftmaxBatchRequest batch;
  for (size_t q = 0; q < 12; ++q) add(batch, "small", Row(q), 3, v1::MODE_EXACT, 0);
  add(batch, "small", short_query, 3, v1::MODE_EXACT, 0);  // 12
  add(batch, "nope", Row(0), 3, v1::MODE_EXACT, 0);        // 13
  add(batch, "small", Row(1), 0, v1::MODE_EXACT, 0);       // 14
  for (size_t q = 0; q < 4; ++q) add(batch, "small", Row(q), 2, v1::MODE_ADAPTIVE, 11 + q);
  v1::TopKSoftmaxBatchResponse response;
  grpc::ClientContext context;
  ASSERT_TRUE(stub->TopKSoftmaxBatch(&context, batch, &response).ok());
  ASSERT_EQ(response.results_size(), batch.requests_size());
  for (int i = 0; i < response.results_size(); ++i) {
    EXPECT_EQ(response.results(i).id(), absl::StrCat("id", i));
  }
  auto expect_error = [&](int i, grpc::StatusCode code, const std::string& field) {
    ASSERT_TRUE(response.results(i).has_error()) << i;
    EXPECT_EQ(response.results(i).error().code(), code) << i;
    EXPECT_THAT(response.results(i).error().message(), HasSubstr(field)) << i;
  };
  expect_error(12, grpc::StatusCode::INVALID_ARGUMENT, "query:");
  expect_error(13, grpc::StatusCode::NOT_FOUND, "nope");
  expect_error(14, grpc::StatusCode::INVALID_ARGUMENT, "k:");
  // The others, against single calls: exact answers, and seeded adaptive ones bit for bit.
  for (int i : {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 15, 16, 17, 18}) {
    const v1::TopKSoftmaxRequest& r = batch.requests(i);
    ASSERT_TRUE(response.results(i).has_response())
        << i << ": " << response.results(i).error().message();
    const v1::TopKSoftmaxResponse& answer = response.results(i).response();
    TopKOptions o;
    o.k = r.k();
    o.mode = r.mode();
    o.seed = r.seed();
    absl::StatusOr<Result> single =
        client_->TopKSoftmax("small", absl::MakeConstSpan(r.query().data(), r.query().size()), o);
    ASSERT_TRUE(single.ok()) << single.status();
    EXPECT_THAT(answer.indices(), ::testing::ElementsAreArray(single->indices)) << i;
    // Exact answers may round differently in a batch's SGEMM than in a single query's pass.
    const double tolerance = r.mode() == v1::MODE_EXACT ? 1e-6 : 0;
    EXPECT_THAT(answer.probabilities(),
                ::testing::Pointwise(::testing::DoubleNear(tolerance), single->probabilities))
        << i;
    EXPECT_EQ(answer.mode(), r.mode()) << i;
  }
  // An empty batch is answered with no results.
  grpc::ClientContext empty_context;
  v1::TopKSoftmaxBatchResponse empty;
  ASSERT_TRUE(stub->TopKSoftmaxBatch(&empty_context, v1::TopKSoftmaxBatchRequest(), &empty).ok());
  EXPECT_EQ(empty.results_size(), 0);
  // A call beyond the message limit (64 KiB here) fails as a whole.
  const std::vector<absl::Span<const float>> many(400, Row(0));
  EXPECT_EQ(client_->TopKSoftmaxBatch("small", many).status().code(),
            absl::StatusCode::kResourceExhausted);
}

// The requests of a batch call join the model's batches together: under a frozen fake clock no
// batch times out, so the call is answered only because its 16 requests formed a full batch.
TEST_F(ServerTest, BatchCallRequestsShareTheModelsBatches) {
  testing::WriteTextFile(dir_.Sub("repo/small/model.pbtxt"),
                         "weights: \"weights.npy\"\nbias: \"bias.npy\"\n"
                         "batching { max_batch_size: 16 batch_timeout_us: 1000 }\n");
  StartAndLoad(&fake_clock_);
  std::vector<absl::Span<const float>> queries;
  for (size_t q = 0; q < 16; ++q) queries.push_back(Row(q));
  TopKOptions o;
  o.timeout = absl::Seconds(30);
  auto results = client_->TopKSoftmaxBatch("small", queries, o);
  ASSERT_TRUE(results.ok()) << results.status();
  ASSERT_EQ(results->size(), 16u);
  for (const absl::StatusOr<Result>& r : *results) {
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->batch_size, 16u);
    EXPECT_EQ(r->model, "small");
  }
}

// A batch call keeps at most 64 of its requests unanswered at a time (as a stream does), so a
// call larger than the model's queue is answered whole instead of overflowing it.
TEST_F(ServerTest, BatchCallLargerThanTheQueueIsAnsweredWhole) {
  testing::WriteTextFile(dir_.Sub("repo/small/model.pbtxt"),
                         "weights: \"weights.npy\"\nbias: \"bias.npy\"\n"
                         "batching { max_batch_size: 8 max_queue_size: 64 }\n");
  StartAndLoad();
  std::vector<absl::Span<const float>> queries;
  for (size_t q = 0; q < 250; ++q) queries.push_back(Row(q % 20));  // 52 KB
  TopKOptions o;
  o.mode = v1::MODE_EXACT;
  auto results = client_->TopKSoftmaxBatch("small", queries, o);
  ASSERT_TRUE(results.ok()) << results.status();
  ASSERT_EQ(results->size(), queries.size());
  for (size_t q = 0; q < queries.size(); ++q) {
    ASSERT_TRUE((*results)[q].ok()) << q << ": " << (*results)[q].status();
    EXPECT_EQ((*results)[q]->indices, (*results)[q % 20]->indices) << q;
  }
}

TEST_F(ServerTest, ListModelsDescribesTheModels) {
  testing::WriteModel(dir_.Sub("repo/tuned"), SmallModel(9),
                      "name: \"tuned\"\ndefault_epsilon: 0.2\ndefault_mode: MODE_EXACT\n"
                      "adaptive { topk_multiplier: 0.5 lognormal_correction: 0.2 "
                      "warmup_fraction: 0.3 }\nbatching { max_batch_size: 4 }\n"
                      "audit_fraction: 0.5\n");
  StartAndLoad();
  auto models = client_->ListModels();
  ASSERT_TRUE(models.ok()) << models.status();
  ASSERT_EQ(models->models_size(), 2);
  const v1::ModelInfo& small = models->models(0);
  EXPECT_EQ(small.name(), "small");
  EXPECT_EQ(small.n(), kN);
  EXPECT_EQ(small.d(), kD);
  EXPECT_EQ(small.dtype(), "float32");
  EXPECT_EQ(small.sampling_dtype(), "float16");
  EXPECT_TRUE(small.has_bias());
  EXPECT_TRUE(small.has_labels());
  EXPECT_EQ(small.default_epsilon(), 0.3);
  EXPECT_EQ(small.default_delta(), 0.01);
  EXPECT_EQ(small.default_mode(), v1::MODE_ADAPTIVE);
  EXPECT_EQ(small.calibration_mode(), "theory");
  EXPECT_EQ(small.lognormal_correction(), 0);
  EXPECT_EQ(small.warmup_fraction(), 0.1);
  const v1::ModelInfo& tuned = models->models(1);
  EXPECT_EQ(tuned.name(), "tuned");
  EXPECT_EQ(tuned.default_epsilon(), 0.2);
  EXPECT_EQ(tuned.default_mode(), v1::MODE_EXACT);
  EXPECT_EQ(tuned.calibration_mode(), "manual");
  EXPECT_EQ(tuned.topk_multiplier(), 0.5);
  EXPECT_EQ(tuned.lognormal_correction(), 0.2);
  EXPECT_EQ(tuned.warmup_fraction(), 0.3);
  EXPECT_EQ(tuned.max_batch_size(), 4u);
  EXPECT_EQ(tuned.audit_fraction(), 0.5);
  // The default mode applies to requests that leave it unset.
  absl::StatusOr<Result> r = client_->TopKSoftmax("tuned", Row(0));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->mode, v1::MODE_EXACT);
}

// A frozen fake clock: batches never time out, so requests stay queued until the queue is
// full or the server shuts down.
TEST_F(ServerTest, FullQueueAnswersResourceExhaustedAtOnce) {
  testing::WriteTextFile(dir_.Sub("repo/small/model.pbtxt"),
                         "weights: \"weights.npy\"\nbias: \"bias.npy\"\n"
                         "batching { max_batch_size: 8 max_queue_size: 2 batch_timeout_us: 1000 }\n");
  StartAndLoad(&fake_clock_);
  std::vector<std::thread> waiting;
  std::atomic<int> answered{0};
  for (int i = 0; i < 2; ++i) {
    waiting.emplace_back([&, i] {
      if (client_->TopKSoftmax("small", Row(i)).ok()) ++answered;
    });
  }
  while (server_->service().queued("small") < 2) std::this_thread::yield();
  const absl::Status full = client_->TopKSoftmax("small", Row(2)).status();
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted) << full;
  EXPECT_THAT(full.message(), HasSubstr("queue"));
  server_->Shutdown(absl::Seconds(5));  // drains: the two queued requests are answered
  for (auto& t : waiting) t.join();
  EXPECT_EQ(answered, 2);
}

TEST_F(ServerTest, DeadlineWhileQueuedIsDeadlineExceededAndTheWorkIsDropped) {
  testing::WriteTextFile(dir_.Sub("repo/small/model.pbtxt"),
                         "weights: \"weights.npy\"\nbias: \"bias.npy\"\n"
                         "batching { max_batch_size: 64 batch_timeout_us: 60000000 }\n");
  StartAndLoad();
  TopKOptions o;
  o.timeout = absl::Milliseconds(300);
  EXPECT_EQ(client_->TopKSoftmax("small", Row(0), o).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  // The server drops the request at its deadline (or at the cancellation that the deadline
  // causes), without running it.
  const std::string dropped =
      "adasoftmax_requests_total\\{code=\"(DEADLINE_EXCEEDED|CANCELLED)\",mode=\"adaptive\","
      "model=\"small\"\\} 1";
  std::string metrics;
  for (absl::Time end = absl::Now() + absl::Seconds(10); absl::Now() < end;) {
    metrics = MetricsText(server_->registry());
    if (std::regex_search(metrics, std::regex(dropped))) break;
    std::this_thread::yield();
  }
  EXPECT_THAT(metrics, ::testing::ContainsRegex(dropped));
  EXPECT_EQ(server_->service().queued("small"), 0u);
  EXPECT_THAT(metrics, HasSubstr("adasoftmax_samples_per_query_count{mode=\"adaptive\",model=\"small\"} 0"));
}

// A cancelled call leaves the queue at once (not at the batch timeout, a minute away) and is
// never computed.
TEST_F(ServerTest, CancelledCallIsDroppedWithoutComputing) {
  testing::WriteTextFile(dir_.Sub("repo/small/model.pbtxt"),
                         "weights: \"weights.npy\"\nbias: \"bias.npy\"\n"
                         "batching { max_batch_size: 64 batch_timeout_us: 60000000 }\n");
  StartAndLoad();
  auto channel = client::MakeChannel(server_->address());
  auto stub = v1::SoftmaxService::NewStub(*channel);
  grpc::ClientContext context;
  v1::TopKSoftmaxRequest request;
  request.set_model("small");
  request.set_k(1);
  request.mutable_query()->Assign(Row(0).begin(), Row(0).end());
  v1::TopKSoftmaxResponse response;
  grpc::Status status;
  std::thread call([&] { status = stub->TopKSoftmax(&context, request, &response); });
  while (server_->service().queued("small") < 1) std::this_thread::yield();
  context.TryCancel();
  call.join();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED);
  const absl::Time start = absl::Now();
  while (server_->service().queued("small") > 0 && absl::Now() - start < absl::Seconds(10)) {
    std::this_thread::yield();
  }
  EXPECT_EQ(server_->service().queued("small"), 0u);
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  EXPECT_THAT(MetricsText(server_->registry()),
              HasSubstr("adasoftmax_samples_per_query_count{mode=\"adaptive\",model=\"small\"} 0"));
}

TEST_F(ServerTest, ConcurrentCallersShareBatches) {
  StartAndLoad();
  std::vector<std::thread> callers;
  std::atomic<uint32_t> largest{0};
  for (int t = 0; t < 8; ++t) {
    callers.emplace_back([&, t] {
      for (int i = 0; i < 15; ++i) {
        absl::StatusOr<Result> r = client_->TopKSoftmax("small", Row((t * 15 + i) % 40));
        ASSERT_TRUE(r.ok()) << r.status();
        uint32_t seen = largest.load();
        while (r->batch_size > seen && !largest.compare_exchange_weak(seen, r->batch_size)) {
        }
      }
    });
  }
  for (auto& t : callers) t.join();
  EXPECT_GT(largest.load(), 1u);
}

// Frozen fake clock: requests stay queued until their service shuts down. A reload answers
// what the previous models queued (with those models) and sends what comes next, on open
// streams too, to the new ones.
TEST_F(ServerTest, ReloadAnswersQueuedRequestsWithTheOldModelsAndNewOnesWithTheNew) {
  const std::string batching = "batching { max_batch_size: 8 batch_timeout_us: 1000 }\n";
  const std::string files = "weights: \"weights.npy\"\nbias: \"bias.npy\"\n";
  testing::WriteTextFile(dir_.Sub("repo/small/model.pbtxt"), files + batching);
  StartAndLoad(&fake_clock_);
  auto channel = client::MakeChannel(server_->address());
  auto stub = v1::SoftmaxService::NewStub(*channel);
  grpc::ClientContext stream_context;
  auto stream = stub->TopKSoftmaxStream(&stream_context);
  v1::TopKSoftmaxRequest request;
  request.set_model("small");
  request.set_k(1);
  request.mutable_query()->Assign(Row(0).begin(), Row(0).end());
  request.set_id("first");
  ASSERT_TRUE(stream->Write(request));
  absl::StatusOr<Result> unary_before, unary_after;
  std::thread before([&] { unary_before = client_->TopKSoftmax("small", Row(1)); });
  while (server_->service().queued("small") < 2) std::this_thread::yield();

  testing::WriteTextFile(dir_.Sub("repo/small/model.pbtxt"),
                         files + batching + "default_mode: MODE_EXACT\n");
  ASSERT_TRUE(server_->ReloadModels().ok());
  before.join();  // answered by the old model, whose default mode was adaptive
  ASSERT_TRUE(unary_before.ok()) << unary_before.status();
  EXPECT_EQ(unary_before->mode, v1::MODE_ADAPTIVE);
  v1::TopKSoftmaxStreamResponse answer;
  ASSERT_TRUE(stream->Read(&answer));
  EXPECT_EQ(answer.id(), "first");
  EXPECT_EQ(answer.response().mode(), v1::MODE_ADAPTIVE);

  request.set_id("second");
  ASSERT_TRUE(stream->Write(request));
  std::thread after([&] { unary_after = client_->TopKSoftmax("small", Row(1)); });
  while (server_->service().queued("small") < 2) std::this_thread::yield();
  stream->WritesDone();
  server_->Shutdown(absl::Seconds(5));  // drains the new models' queue
  after.join();
  ASSERT_TRUE(unary_after.ok()) << unary_after.status();
  EXPECT_EQ(unary_after->mode, v1::MODE_EXACT);
  ASSERT_TRUE(stream->Read(&answer));
  EXPECT_EQ(answer.id(), "second");
  EXPECT_EQ(answer.response().mode(), v1::MODE_EXACT);
  EXPECT_TRUE(stream->Finish().ok());
}

// Reloads while callers keep asking, unary and streaming: no call fails, and each reload's
// changes show in ListModels, the answers and the metrics.
TEST_F(ServerTest, ReloadsUnderLoadDropNoCall) {
  StartAndLoad();
  std::atomic<bool> stop{false};
  std::atomic<int> answered{0};  // requests answered OK
  absl::Mutex mu;
  std::vector<std::string> failures;
  auto record = [&](const absl::Status& s) {
    if (s.ok()) return;
    absl::MutexLock lock(&mu);
    failures.push_back(s.ToString());
  };
  std::vector<std::thread> callers;
  for (int t = 0; t < 3; ++t) {
    callers.emplace_back([&, t] {
      for (int i = 0; !stop; ++i) {
        const absl::Status s = client_->TopKSoftmax("small", Row((t + 3 * i) % 40)).status();
        record(s);
        answered += s.ok();
      }
    });
  }
  callers.emplace_back([&] {
    std::vector<absl::Span<const float>> queries;
    for (size_t q = 0; q < 40; ++q) queries.push_back(Row(q));
    while (!stop) {
      auto results = client_->TopKSoftmaxStream("small", queries);
      record(results.status());
      if (!results.ok()) continue;
      for (const auto& r : *results) {
        record(r.status());
        answered += r.ok();
      }
    }
  });

  const std::string files =
      "weights: \"weights.npy\"\nbias: \"bias.npy\"\nlabels: \"labels.txt\"\n";
  for (int reload = 0; reload < 6; ++reload) {
    const int before = answered;
    while (answered < before + 20) std::this_thread::yield();  // calls in flight
    const double epsilon = reload % 2 == 0 ? 0.2 : 0.25;
    testing::WriteTextFile(dir_.Sub("repo/small/model.pbtxt"),
                           absl::StrCat(files, "default_epsilon: ", epsilon, "\n"));
    if (reload == 2) testing::WriteModel(dir_.Sub("repo/second"), SmallModel(5));
    if (reload == 4) std::filesystem::remove_all(dir_.Sub("repo/second"));
    ASSERT_TRUE(server_->ReloadModels().ok()) << reload;
    auto models = client_->ListModels();
    ASSERT_TRUE(models.ok()) << models.status();
    ASSERT_EQ(models->models_size(), reload == 2 || reload == 3 ? 2 : 1) << reload;
    const v1::ModelInfo& small = *models->models().rbegin();  // after "second"
    EXPECT_EQ(small.name(), "small");
    EXPECT_EQ(small.default_epsilon(), epsilon) << reload;
    EXPECT_THAT(models->unavailable(), ::testing::IsEmpty());
    if (reload == 2) EXPECT_TRUE(client_->TopKSoftmax("second", Row(0)).ok());
  }
  const int before = answered;
  while (answered < before + 20) std::this_thread::yield();
  stop = true;
  for (auto& t : callers) t.join();
  EXPECT_THAT(failures, ::testing::IsEmpty());
  EXPECT_EQ(client_->TopKSoftmax("second", Row(0)).status().code(), absl::StatusCode::kNotFound);

  const std::string metrics = MetricsText(server_->registry());
  EXPECT_THAT(metrics, HasSubstr("adasoftmax_repository_reloads_total{result=\"ok\"} 6"));
  EXPECT_THAT(metrics, HasSubstr("adasoftmax_model_info{d=\"48\",dtype=\"float32\","
                                 "model=\"small\",n=\"600\"} 1"));
  EXPECT_THAT(metrics, Not(HasSubstr("model_info{d=\"48\",dtype=\"float32\",model=\"second\"")));
  // The counters of a model carry on across reloads.
  EXPECT_THAT(metrics, ::testing::ContainsRegex(
                           absl::StrCat("adasoftmax_requests_total\\{code=\"OK\",mode=\"adaptive\","
                                        "model=\"small\"\\} ",
                                        answered.load())));
}

TEST_F(ServerTest, ReloadThatFailsKeepsThePreviousModelServing) {
  StartAndLoad();
  const std::string config = testing::ReadTextFile(dir_.Sub("repo/small/model.pbtxt"));
  testing::WriteTextFile(dir_.Sub("repo/small/model.pbtxt"), "weights: \"gone.npy\"\n");
  testing::WriteTextFile(dir_.Sub("repo/broken/model.pbtxt"), "weights: \"none.npy\"\n");
  const absl::Status s = server_->ReloadModels();
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("repo/small"));
  EXPECT_THAT(s.message(), HasSubstr("gone.npy"));
  EXPECT_THAT(s.message(), HasSubstr("none.npy"));
  EXPECT_EQ(*client_->Health(), HealthStatus::kServing);
  absl::StatusOr<Result> r = client_->TopKSoftmax("small", Row(0));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->labels.size(), 1u);  // the previous version, with its labels
  std::string metrics = MetricsText(server_->registry());
  EXPECT_THAT(metrics, HasSubstr("adasoftmax_repository_reloads_total{result=\"failed\"} 1"));
  EXPECT_THAT(metrics, HasSubstr("adasoftmax_repository_unavailable_models 2"));

  // ListModels names both folders, why they do not load and what each still serves.
  auto models = client_->ListModels();
  ASSERT_TRUE(models.ok()) << models.status();
  ASSERT_EQ(models->models_size(), 1);
  ASSERT_EQ(models->unavailable_size(), 2);
  EXPECT_EQ(models->unavailable(0).folder(), dir_.Sub("repo/broken"));
  EXPECT_THAT(models->unavailable(0).reason(), HasSubstr("none.npy"));
  EXPECT_EQ(models->unavailable(0).serving(), "");
  EXPECT_EQ(models->unavailable(1).folder(), dir_.Sub("repo/small"));
  EXPECT_THAT(models->unavailable(1).reason(), HasSubstr("gone.npy"));
  EXPECT_EQ(models->unavailable(1).serving(), "small");

  // Mended, and the broken folder gone: the list empties.
  testing::WriteTextFile(dir_.Sub("repo/small/model.pbtxt"), config + "default_epsilon: 0.2\n");
  std::filesystem::remove_all(dir_.Sub("repo/broken"));
  ASSERT_TRUE(server_->ReloadModels().ok());
  models = client_->ListModels();
  ASSERT_TRUE(models.ok()) << models.status();
  ASSERT_EQ(models->models_size(), 1);
  EXPECT_EQ(models->models(0).default_epsilon(), 0.2);
  EXPECT_THAT(models->unavailable(), ::testing::IsEmpty());
  metrics = MetricsText(server_->registry());
  EXPECT_THAT(metrics, HasSubstr("adasoftmax_repository_unavailable_models 0"));
  EXPECT_THAT(metrics, HasSubstr("adasoftmax_repository_reloads_total{result=\"ok\"} 1"));

  std::filesystem::remove_all(dir_.Sub("repo"));
  EXPECT_EQ(server_->ReloadModels().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(client_->TopKSoftmax("small", Row(0)).ok());
  metrics = MetricsText(server_->registry());
  EXPECT_THAT(metrics, HasSubstr("adasoftmax_repository_reloads_total{result=\"unreadable\"} 1"));
  EXPECT_THAT(metrics, HasSubstr("adasoftmax_repository_reloads_total{result=\"failed\"} 1"));
}

}  // namespace
}  // namespace adasoftmax::server
