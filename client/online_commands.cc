// The commands that talk to a running adasoftmax-server: query, models, health, loadgen.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/commands.h"
#include "client/flags.h"
#include "client/grpc_client.h"
#include "core/matrix.h"
#include "core/tensor_io.h"
#include "nlohmann/json.hpp"

namespace adasoftmax::client {
namespace {

using nlohmann::json;

std::string DefaultTarget() {
  const char* target = std::getenv("ADASOFTMAX_TARGET");
  return target != nullptr && *target != '\0' ? target : "127.0.0.1:50051";
}

// Flags every online command has: where the server is and how to reach it.
struct ConnectionFlags {
  std::string target = DefaultTarget();
  std::string ca_cert;
  std::string cert;
  std::string key;
  bool tls = false;
  double timeout_s = 0;
};

void AddConnectionFlags(FlagSet& flags, ConnectionFlags* f, double default_timeout_s) {
  f->timeout_s = default_timeout_s;
  flags.AddString("target", &f->target, "server address (default: $ADASOFTMAX_TARGET if set)")
      .Placeholder("HOST:PORT");
  flags.AddBool("tls", &f->tls, "use TLS, verifying the server with the system's roots");
  flags.AddString("ca-cert", &f->ca_cert, "PEM CA bundle verifying the server (implies --tls)")
      .Placeholder("PATH");
  flags.AddString("cert", &f->cert, "PEM client certificate for mTLS").Placeholder("PATH");
  flags.AddString("key", &f->key, "PEM private key of --cert").Placeholder("PATH");
  flags.AddDouble("timeout-s", &f->timeout_s, "deadline of each call in seconds (0: none)").Min(0);
}

absl::StatusOr<Client> Connect(const ConnectionFlags& f) {
  ChannelOptions options;
  options.tls = f.tls;
  options.ca_cert = f.ca_cert;
  options.cert = f.cert;
  options.key = f.key;
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = MakeChannel(f.target, options);
  if (!channel.ok()) return channel.status();
  return Client(*std::move(channel));
}

absl::Duration Timeout(const ConnectionFlags& f) {
  return f.timeout_s > 0 ? absl::Seconds(f.timeout_s) : absl::InfiniteDuration();
}

// Flags of the commands that send queries.
struct RequestFlags {
  uint64_t k = 1;
  double epsilon = 0;
  double delta = 0;
  double temperature = 0;
  std::string mode;
  uint64_t seed = 0;
};

void AddRequestFlags(FlagSet& flags, RequestFlags* f) {
  flags.AddUint64("k", &f->k, "number of top classes returned");
  flags.AddDouble("epsilon", &f->epsilon, "relative error of each probability (default: model's)");
  flags.AddDouble("delta", &f->delta, "failure probability (default: the model's)");
  flags.AddDouble("temperature", &f->temperature, "multiplies the logits (default: the model's)");
  flags.AddString("mode", &f->mode, "adaptive or exact (default: the model's)").Placeholder("MODE");
  flags.AddUint64("seed", &f->seed, "sampling seed; 0: fresh (nonzero: reproducible)");
}

// Fills `options` from the flags; returns an exit code on a usage error.
std::optional<int> ToTopKOptions(const FlagSet& flags, const RequestFlags& f,
                                 TopKOptions* options) {
  // Out-of-range values go to the server, which names the field in its error.
  options->k = static_cast<uint32_t>(std::min<uint64_t>(f.k, UINT32_MAX));
  if (flags.Seen("epsilon")) options->epsilon = f.epsilon;
  if (flags.Seen("delta")) options->delta = f.delta;
  if (flags.Seen("temperature")) options->temperature = f.temperature;
  if (f.mode == "adaptive") {
    options->mode = v1::MODE_ADAPTIVE;
  } else if (f.mode == "exact") {
    options->mode = v1::MODE_EXACT;
  } else if (!f.mode.empty()) {
    return flags.UsageError(absl::StrCat("--mode: expected adaptive or exact, got '", f.mode, "'"));
  }
  options->seed = f.seed;
  return std::nullopt;
}

std::string_view ModeName(v1::Mode mode) {
  switch (mode) {
    case v1::MODE_ADAPTIVE:
      return "adaptive";
    case v1::MODE_EXACT:
      return "exact";
    default:
      return "unspecified";
  }
}

absl::Span<const float> Row(const Matrix& m, size_t r) {
  return absl::MakeConstSpan(m.data() + r * m.cols(), m.cols());
}

json ResultJson(size_t query, const Result& r) {
  return json{{"query", query},           {"model", r.model},
              {"mode", ModeName(r.mode)}, {"indices", r.indices},
              {"labels", r.labels},       {"probabilities", r.probabilities},
              {"logits", r.logits},       {"log_partition", r.log_partition},
              {"samples", r.samples},     {"sample_fraction", r.sample_fraction},
              {"exact", r.exact},         {"batch_size", r.batch_size}};
}

void PrintResult(size_t query, const Result& r) {
  std::printf("query %zu: model %s, %s%s, %llu samples (%.2f%% of n*d), batch of %u, log Z %.6g\n",
              query, r.model.c_str(), std::string(ModeName(r.mode)).c_str(),
              r.exact && r.mode == v1::MODE_ADAPTIVE ? " (answered exactly)" : "",
              static_cast<unsigned long long>(r.samples), 100 * r.sample_fraction, r.batch_size,
              r.log_partition);
  for (size_t i = 0; i < r.indices.size(); ++i) {
    const std::string label = i < r.labels.size() ? absl::StrCat("'", r.labels[i], "' ") : "";
    std::printf("  %2zu. %s#%-6u p=%.6g  logit=%.6g\n", i + 1, label.c_str(), r.indices[i],
                r.probabilities[i], r.logits[i]);
  }
}

// Nearest-rank percentile of ascending `sorted`; 0 when empty.
double Percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  const double rank = std::ceil(p * static_cast<double>(sorted.size()));
  return sorted[std::clamp<size_t>(static_cast<size_t>(rank), 1, sorted.size()) - 1];
}

// The answers to `rows`: one TopKSoftmax call for a single row, else one TopKSoftmaxBatch call.
absl::StatusOr<std::vector<absl::StatusOr<Result>>> Send(
    const Client& client, const std::string& model,
    const std::vector<absl::Span<const float>>& rows, const TopKOptions& options) {
  if (rows.size() == 1) {
    return std::vector<absl::StatusOr<Result>>{client.TopKSoftmax(model, rows[0], options)};
  }
  return client.TopKSoftmaxBatch(model, rows, options);
}

}  // namespace

int QueryCommand(int argc, char** argv) {
  ConnectionFlags conn;
  RequestFlags req;
  std::string model, queries_path;
  std::vector<double> vector;
  bool as_json = false;
  uint64_t limit = 0;
  uint64_t batch_size = 1;
  FlagSet flags("query", "--model NAME (--vector V1,V2,... | --queries Q.npy) [flags]",
                "Asks a running server for the top-k softmax of each query and prints the "
                "classes (with their labels when the model has them), probabilities and samples "
                "read.");
  AddConnectionFlags(flags, &conn, 30);
  flags.AddString("model", &model, "model name (see `adasoftmax models`)").Required();
  flags.AddDoubleList("vector", &vector, "one query, d comma-separated numbers");
  flags.AddString("queries", &queries_path, ".npy matrix with one query a row").Placeholder("PATH");
  flags.AddUint64("limit", &limit, "answer only the first N rows of --queries (0: all)");
  flags.AddUint64("batch-size", &batch_size, "queries sent in one call (TopKSoftmaxBatch when > 1)")
      .Min(1);
  AddRequestFlags(flags, &req);
  flags.AddBool("json", &as_json, "print one JSON object per query");
  if (std::optional<int> code = flags.Parse(argc, argv)) return *code;
  if (flags.Seen("vector") == flags.Seen("queries")) {
    return flags.UsageError("give exactly one of --vector and --queries");
  }
  TopKOptions options;
  if (std::optional<int> code = ToTopKOptions(flags, req, &options)) return *code;
  options.timeout = Timeout(conn);

  Matrix queries;
  if (flags.Seen("vector")) {
    queries = Matrix::Owned(1, vector.size(), Layout::kRowMajor);
    std::copy(vector.begin(), vector.end(), queries.mutable_data());
  } else {
    absl::StatusOr<Matrix> read = ReadQueries(queries_path);
    if (!read.ok()) return flags.Error(read.status());
    queries = *std::move(read);
  }
  absl::StatusOr<Client> client = Connect(conn);
  if (!client.ok()) return flags.Error(client.status());
  const size_t rows = limit > 0 ? std::min<size_t>(limit, queries.rows()) : queries.rows();
  for (size_t first = 0; first < rows; first += batch_size) {
    const size_t end = std::min<size_t>(rows, first + batch_size);
    std::vector<absl::Span<const float>> call;
    for (size_t q = first; q < end; ++q) call.push_back(Row(queries, q));
    absl::StatusOr<std::vector<absl::StatusOr<Result>>> results =
        Send(*client, model, call, options);
    if (!results.ok()) return flags.Error(results.status());
    for (size_t q = first; q < end; ++q) {
      const absl::StatusOr<Result>& result = (*results)[q - first];
      if (!result.ok()) {
        return flags.Error(absl::Status(
            result.status().code(), absl::StrCat("query ", q, ": ", result.status().message())));
      }
      if (as_json) {
        std::printf("%s\n", ResultJson(q, *result).dump().c_str());
      } else {
        PrintResult(q, *result);
      }
    }
  }
  return 0;
}

int ModelsCommand(int argc, char** argv) {
  ConnectionFlags conn;
  bool as_json = false;
  FlagSet flags("models", "[--target HOST:PORT] [--json]",
                "Lists the models a running server serves, with their shapes and defaults, and "
                "the model folders that do not load, with the reason.");
  AddConnectionFlags(flags, &conn, 10);
  flags.AddBool("json", &as_json,
                "print a JSON object: {\"models\": [...], \"unavailable\": [...]}");
  if (std::optional<int> code = flags.Parse(argc, argv)) return *code;
  absl::StatusOr<Client> client = Connect(conn);
  if (!client.ok()) return flags.Error(client.status());
  absl::StatusOr<v1::ListModelsResponse> list = client->ListModels(Timeout(conn));
  if (!list.ok()) return flags.Error(list.status());
  if (as_json) {
    json models = json::array();
    for (const v1::ModelInfo& m : list->models()) {
      models.push_back(json{{"name", m.name()},
                            {"n", m.n()},
                            {"d", m.d()},
                            {"dtype", m.dtype()},
                            {"sampling_dtype", m.sampling_dtype()},
                            {"has_bias", m.has_bias()},
                            {"has_labels", m.has_labels()},
                            {"default_epsilon", m.default_epsilon()},
                            {"default_delta", m.default_delta()},
                            {"default_temperature", m.default_temperature()},
                            {"default_mode", ModeName(m.default_mode())},
                            {"calibration_mode", m.calibration_mode()},
                            {"topk_multiplier", m.topk_multiplier()},
                            {"normalizer_multiplier", m.normalizer_multiplier()},
                            {"lognormal_correction", m.lognormal_correction()},
                            {"warmup_fraction", m.warmup_fraction()},
                            {"max_batch_size", m.max_batch_size()},
                            {"batch_timeout_us", m.batch_timeout_us()},
                            {"audit_fraction", m.audit_fraction()},
                            {"memory_bytes", m.memory_bytes()},
                            {"sample_cost", m.sample_cost()}});
    }
    json unavailable = json::array();
    for (const v1::UnavailableModel& u : list->unavailable()) {
      unavailable.push_back(
          json{{"folder", u.folder()}, {"reason", u.reason()}, {"serving", u.serving()}});
    }
    const json out = {{"models", models}, {"unavailable", unavailable}};
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  std::printf("%-12s %8s %6s %-8s %-4s %-6s %-8s %-10s %7s %7s %5s %6s\n", "MODEL", "N", "D",
              "DTYPE", "BIAS", "LABELS", "MODE", "CALIBR.", "EPSILON", "DELTA", "TEMP", "BATCH");
  for (const v1::ModelInfo& m : list->models()) {
    std::printf("%-12s %8llu %6llu %-8s %-4s %-6s %-8s %-10s %7g %7g %5g %6u\n", m.name().c_str(),
                static_cast<unsigned long long>(m.n()), static_cast<unsigned long long>(m.d()),
                m.dtype().c_str(), m.has_bias() ? "yes" : "no", m.has_labels() ? "yes" : "no",
                std::string(ModeName(m.default_mode())).c_str(), m.calibration_mode().c_str(),
                m.default_epsilon(), m.default_delta(), m.default_temperature(),
                m.max_batch_size());
  }
  for (const v1::UnavailableModel& u : list->unavailable()) {
    std::printf("unavailable: %s%s\n", u.reason().c_str(),
                u.serving().empty()
                    ? ""
                    : absl::StrCat(" (its previous version serves as ", u.serving(), ")").c_str());
  }
  return 0;
}

int HealthCommand(int argc, char** argv) {
  ConnectionFlags conn;
  std::string service;
  FlagSet flags("health", "[--target HOST:PORT] [--service NAME]",
                "Prints the server's grpc.health.v1 status. Exit status 0 only when SERVING "
                "(usable as a container probe).");
  AddConnectionFlags(flags, &conn, 5);
  flags.AddString("service", &service, "a model's name, to check that model (default: the server)");
  if (std::optional<int> code = flags.Parse(argc, argv)) return *code;
  absl::StatusOr<Client> client = Connect(conn);
  if (!client.ok()) return flags.Error(client.status());
  absl::StatusOr<HealthStatus> status = client->Health(service, Timeout(conn));
  if (!status.ok()) return flags.Error(status.status());
  std::printf("%s\n", std::string(HealthStatusName(*status)).c_str());
  return *status == HealthStatus::kServing ? 0 : 1;
}

int LoadgenCommand(int argc, char** argv) {
  ConnectionFlags conn;
  RequestFlags req;
  std::string model, queries_path;
  uint64_t concurrency = 1;
  uint64_t batch_size = 1;
  double duration_s = 10;
  FlagSet flags("loadgen", "--model NAME --queries Q.npy [--concurrency C] [--duration-s S]",
                "Closed-loop load: C callers each send the next query (or the next B, with "
                "--batch-size B) as soon as the previous answer arrives, cycling through the rows "
                "of Q.npy, for S seconds. Prints QPS (queries answered a second), call latency "
                "percentiles, mean samples per query and error counts as JSON.");
  AddConnectionFlags(flags, &conn, 30);
  flags.AddString("model", &model, "model name").Required();
  flags.AddString("queries", &queries_path, ".npy matrix with one query a row")
      .Placeholder("PATH")
      .Required();
  flags.AddUint64("concurrency", &concurrency, "concurrent callers").Min(1).Max(4096);
  flags.AddDouble("duration-s", &duration_s, "how long to send, in seconds").Min(0, true);
  flags.AddUint64("batch-size", &batch_size, "queries a call (TopKSoftmaxBatch when > 1)").Min(1);
  AddRequestFlags(flags, &req);
  if (std::optional<int> code = flags.Parse(argc, argv)) return *code;
  TopKOptions options;
  if (std::optional<int> code = ToTopKOptions(flags, req, &options)) return *code;
  options.timeout = Timeout(conn);
  absl::StatusOr<Matrix> queries = ReadQueries(queries_path);
  if (!queries.ok()) return flags.Error(queries.status());
  absl::StatusOr<Client> client = Connect(conn);
  if (!client.ok()) return flags.Error(client.status());

  struct Stats {
    std::vector<double> latency_ms;  // a call's
    uint64_t answered = 0;
    double samples = 0;
    double fraction = 0;
    uint64_t exact = 0;  // answers computed exactly (exact mode or the exact fallback)
    double batch_size = 0;
    std::map<std::string, uint64_t> errors;
    std::string first_error;
  };
  std::vector<Stats> stats(concurrency);
  const absl::Time start = absl::Now();
  const absl::Time end = start + absl::Seconds(duration_s);
  std::vector<std::thread> callers;
  for (size_t t = 0; t < concurrency; ++t) {
    callers.emplace_back([&, t] {
      Stats& s = stats[t];
      auto count_error = [&s](const absl::Status& status) {
        ++s.errors[std::string(absl::StatusCodeToString(status.code()))];
        if (s.first_error.empty()) s.first_error = std::string(status.message());
      };
      for (size_t call = t; absl::Now() < end; call += concurrency) {
        // The call's rows, cycling through the file.
        std::vector<absl::Span<const float>> rows;
        for (size_t b = 0; b < batch_size; ++b) {
          rows.push_back(Row(*queries, (call * batch_size + b) % queries->rows()));
        }
        const absl::Time sent = absl::Now();
        absl::StatusOr<std::vector<absl::StatusOr<Result>>> answers =
            Send(*client, model, rows, options);
        const double latency_ms = absl::ToDoubleMilliseconds(absl::Now() - sent);
        if (!answers.ok()) {
          count_error(answers.status());
          continue;
        }
        bool any = false;
        for (const absl::StatusOr<Result>& r : *answers) {
          if (!r.ok()) {
            count_error(r.status());
            continue;
          }
          any = true;
          ++s.answered;
          s.samples += static_cast<double>(r->samples);
          s.fraction += r->sample_fraction;
          s.exact += r->exact;
          s.batch_size += r->batch_size;
        }
        if (any) s.latency_ms.push_back(latency_ms);
      }
    });
  }
  for (std::thread& t : callers) t.join();
  const double elapsed = absl::ToDoubleSeconds(absl::Now() - start);

  Stats all;
  for (Stats& s : stats) {
    all.latency_ms.insert(all.latency_ms.end(), s.latency_ms.begin(), s.latency_ms.end());
    all.answered += s.answered;
    all.samples += s.samples;
    all.fraction += s.fraction;
    all.exact += s.exact;
    all.batch_size += s.batch_size;
    for (const auto& [code, count] : s.errors) all.errors[code] += count;
    if (all.first_error.empty()) all.first_error = s.first_error;
  }
  std::sort(all.latency_ms.begin(), all.latency_ms.end());
  const double ok = static_cast<double>(all.answered);
  uint64_t error_count = 0;
  for (const auto& [code, count] : all.errors) error_count += count;
  double mean_ms = 0;
  for (double l : all.latency_ms) mean_ms += l;
  const double calls = static_cast<double>(all.latency_ms.size());  // with an answer
  json out = {
      {"target", conn.target},
      {"model", model},
      {"concurrency", concurrency},
      {"batch_size", batch_size},
      {"duration_s", elapsed},
      {"requests", all.answered + error_count},
      {"ok", all.answered},
      {"errors", error_count},
      {"errors_by_code", all.errors},
      {"qps", ok / elapsed},
      {"latency_ms",
       {{"p50", Percentile(all.latency_ms, 0.5)},
        {"p90", Percentile(all.latency_ms, 0.9)},
        {"p99", Percentile(all.latency_ms, 0.99)},
        {"mean", calls > 0 ? mean_ms / calls : 0},
        {"max", all.latency_ms.empty() ? 0 : all.latency_ms.back()}}},
      {"mean_samples_per_query", ok > 0 ? all.samples / ok : 0},
      {"mean_sample_fraction", ok > 0 ? all.fraction / ok : 0},
      {"exact_answers", all.exact},
      {"mean_batch_size", ok > 0 ? all.batch_size / ok : 0},
  };
  if (!all.first_error.empty()) out["first_error"] = all.first_error;
  std::printf("%s\n", out.dump(2).c_str());
  return ok > 0 ? 0 : 1;
}

}  // namespace adasoftmax::client
