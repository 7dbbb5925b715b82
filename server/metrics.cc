#include "server/metrics.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cmath>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/version.h"
#include "prometheus/client_metric.h"
#include "prometheus/metric_family.h"
#include "prometheus/metric_type.h"

namespace adasoftmax::server {
namespace {

// The result label of each Metrics::ReloadResult, in its order.
constexpr const char* kReloadResults[] = {"ok", "failed", "unreadable"};

using prometheus::Histogram;

// `count` buckets from `start`, each `factor` times the previous one.
Histogram::BucketBoundaries Exponential(double start, double factor, int count) {
  Histogram::BucketBoundaries b;
  for (int i = 0; i < count; ++i) b.push_back(start * std::pow(factor, i));
  return b;
}

// Quarter decades from 1e2 to 1e9, rounded to three digits (100, 178, 316, 562, 1000, ...).
const Histogram::BucketBoundaries& SampleBuckets() {
  static const auto* b = [] {
    auto* bounds = new Histogram::BucketBoundaries;
    for (double decade = 1; decade <= 1e6; decade *= 10) {
      for (double mantissa : {100.0, 178.0, 316.0, 562.0}) bounds->push_back(mantissa * decade);
    }
    bounds->push_back(1e9);
    return bounds;
  }();
  return *b;
}
const Histogram::BucketBoundaries& FractionBuckets() {
  static const auto* b = new Histogram::BucketBoundaries{
      0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3,
      0.4,   0.5,  0.6,  0.7,  0.8,  0.9,   0.95, 1.0};
  return *b;
}
// 25 us .. ~13 s, factor 2.
const Histogram::BucketBoundaries& DurationBuckets() {
  static const auto* b = new Histogram::BucketBoundaries(Exponential(25e-6, 2, 20));
  return *b;
}
// 1 us .. ~1 s, factor 2.
const Histogram::BucketBoundaries& QueueBuckets() {
  static const auto* b = new Histogram::BucketBoundaries(Exponential(1e-6, 2, 21));
  return *b;
}
const Histogram::BucketBoundaries& BatchBuckets() {
  static const auto* b = new Histogram::BucketBoundaries{1,  2,  3,  4,   6,   8,   12,  16,
                                                         24, 32, 48, 64, 96, 128, 256, 512};
  return *b;
}

constexpr MetricMode kModes[] = {MetricMode::kAdaptive, MetricMode::kExact};

}  // namespace

std::string_view MetricModeName(MetricMode mode) {
  return mode == MetricMode::kAdaptive ? "adaptive" : "exact";
}

std::string_view StatusCodeName(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk: return "OK";
    case absl::StatusCode::kCancelled: return "CANCELLED";
    case absl::StatusCode::kUnknown: return "UNKNOWN";
    case absl::StatusCode::kInvalidArgument: return "INVALID_ARGUMENT";
    case absl::StatusCode::kDeadlineExceeded: return "DEADLINE_EXCEEDED";
    case absl::StatusCode::kNotFound: return "NOT_FOUND";
    case absl::StatusCode::kAlreadyExists: return "ALREADY_EXISTS";
    case absl::StatusCode::kPermissionDenied: return "PERMISSION_DENIED";
    case absl::StatusCode::kResourceExhausted: return "RESOURCE_EXHAUSTED";
    case absl::StatusCode::kFailedPrecondition: return "FAILED_PRECONDITION";
    case absl::StatusCode::kAborted: return "ABORTED";
    case absl::StatusCode::kOutOfRange: return "OUT_OF_RANGE";
    case absl::StatusCode::kUnimplemented: return "UNIMPLEMENTED";
    case absl::StatusCode::kInternal: return "INTERNAL";
    case absl::StatusCode::kUnavailable: return "UNAVAILABLE";
    case absl::StatusCode::kDataLoss: return "DATA_LOSS";
    case absl::StatusCode::kUnauthenticated: return "UNAUTHENTICATED";
    default: return "UNKNOWN";
  }
}

void ModelMetrics::CountRequest(MetricMode mode, absl::StatusCode code) {
  requests_
      ->Add({{"model", name_},
             {"mode", std::string(MetricModeName(mode))},
             {"code", std::string(StatusCodeName(code))}})
      .Increment();
}

void ModelMetrics::ObserveQuery(MetricMode mode, uint64_t samples, double sample_fraction,
                                bool exact) {
  samples_[static_cast<int>(mode)]->Observe(static_cast<double>(samples));
  fraction_[static_cast<int>(mode)]->Observe(sample_fraction);
  if (mode == MetricMode::kAdaptive && exact) exact_answers_->Increment();
}

void ModelMetrics::ObserveRequestDuration(MetricMode mode, absl::Duration d) {
  duration_[static_cast<int>(mode)]->Observe(absl::ToDoubleSeconds(d));
}

void ModelMetrics::ObserveQueueDuration(absl::Duration d) {
  queue_duration_->Observe(absl::ToDoubleSeconds(d));
}

void ModelMetrics::ObserveBatchSize(size_t size) {
  batch_size_->Observe(static_cast<double>(size));
}

void ModelMetrics::CountAudit(bool failed) {
  audit_queries_->Increment();
  if (failed) audit_failures_->Increment();
}

Metrics::Metrics(prometheus::Registry& registry)
    : requests_(prometheus::BuildCounter()
                    .Name("adasoftmax_requests_total")
                    .Help("TopKSoftmax requests by model, mode and gRPC status code.")
                    .Register(registry)),
      samples_(prometheus::BuildHistogram()
                   .Name("adasoftmax_samples_per_query")
                   .Help("Entries of the weight matrix read to answer one query.")
                   .Register(registry)),
      fraction_(prometheus::BuildHistogram()
                    .Name("adasoftmax_sample_fraction")
                    .Help("Samples of one query divided by n * d.")
                    .Register(registry)),
      duration_(prometheus::BuildHistogram()
                    .Name("adasoftmax_request_duration_seconds")
                    .Help("Time from a request's arrival to its answer, queueing included.")
                    .Register(registry)),
      queue_duration_(prometheus::BuildHistogram()
                          .Name("adasoftmax_queue_duration_seconds")
                          .Help("Time a request waited for its batch to start.")
                          .Register(registry)),
      batch_size_(prometheus::BuildHistogram()
                      .Name("adasoftmax_batch_size")
                      .Help("Requests per batch (requests sharing sampling rounds or one SGEMM).")
                      .Register(registry)),
      model_info_(prometheus::BuildGauge()
                      .Name("adasoftmax_model_info")
                      .Help("Served models (value 1), with their shape and weight dtype.")
                      .Register(registry)),
      queue_size_(prometheus::BuildGauge()
                      .Name("adasoftmax_queue_size")
                      .Help("Requests waiting for a batch to start.")
                      .Register(registry)),
      sample_cost_(prometheus::BuildGauge()
                       .Name("adasoftmax_sample_cost")
                       .Help("What the exact fallback prices one sampled entry at, in entries "
                             "streamed by the exact path (measured while serving unless "
                             "measure_sample_cost is false; 0: fallback off).")
                       .Register(registry)),
      exact_batch_share_(prometheus::BuildGauge()
                             .Name("adasoftmax_exact_batch_share")
                             .Help("What the exact fallback prices each query after the first "
                                   "of an exact batch (one SGEMM) at, as a share of a single "
                                   "exact query (measured while serving unless "
                                   "measure_sample_cost is false).")
                             .Register(registry)),
      audit_queries_(prometheus::BuildCounter()
                         .Name("adasoftmax_audit_queries_total")
                         .Help("Adaptive answers re-checked against the exact answer.")
                         .Register(registry)),
      audit_failures_(prometheus::BuildCounter()
                          .Name("adasoftmax_audit_failures_total")
                          .Help("Audited adaptive answers that missed the (epsilon, delta) PAC "
                                "criterion.")
                          .Register(registry)),
      exact_answers_(prometheus::BuildCounter()
                         .Name("adasoftmax_adaptive_exact_answers_total")
                         .Help("Adaptive queries answered exactly: sampling was predicted, before "
                               "or during it, to cost more than the exact path, or read every "
                               "entry.")
                         .Register(registry)),
      reloads_(prometheus::BuildCounter()
                   .Name("adasoftmax_repository_reloads_total")
                   .Help("Reloads of the model repository that changed a model (result "
                         "\"ok\"), failed to load one (\"failed\": it keeps its previous "
                         "version) or could not read the repository (\"unreadable\").")
                   .Register(registry)),
      unavailable_(prometheus::BuildGauge()
                       .Name("adasoftmax_repository_unavailable_models")
                       .Help("Model folders whose current files do not load (each keeps its "
                             "previous version, if any, until they do; see ListModels).")
                       .Register(registry)
                       .Add({})) {
  prometheus::BuildGauge()
      .Name("adasoftmax_build_info")
      .Help("The server's release (value 1).")
      .Register(registry)
      .Add({{"version", kVersion}})
      .Set(1);
  for (const char* result : kReloadResults) reloads_.Add({{"result", result}});
}

ModelMetrics* Metrics::AddModel(const std::string& name, uint64_t n, uint64_t d,
                                const std::string& dtype) {
  absl::MutexLock lock(&mu_);
  std::unique_ptr<ModelMetrics>& m = models_[name];
  if (m == nullptr) {
    m = std::make_unique<ModelMetrics>();
    m->name_ = name;
    m->requests_ = &requests_;
    for (MetricMode mode : kModes) {
      const prometheus::Labels labels = {{"model", name},
                                         {"mode", std::string(MetricModeName(mode))}};
      const int i = static_cast<int>(mode);
      m->samples_[i] = &samples_.Add(labels, SampleBuckets());
      m->fraction_[i] = &fraction_.Add(labels, FractionBuckets());
      m->duration_[i] = &duration_.Add(labels, DurationBuckets());
    }
    m->queue_duration_ = &queue_duration_.Add({{"model", name}}, QueueBuckets());
    m->batch_size_ = &batch_size_.Add({{"model", name}}, BatchBuckets());
    m->queued_ = &queue_size_.Add({{"model", name}});
    m->sample_cost_ = &sample_cost_.Add({{"model", name}});
    m->exact_batch_share_ = &exact_batch_share_.Add({{"model", name}});
    m->audit_queries_ = &audit_queries_.Add({{"model", name}});
    m->audit_failures_ = &audit_failures_.Add({{"model", name}});
    m->exact_answers_ = &exact_answers_.Add({{"model", name}});
  }
  // The same labels give the same gauge: a scrape never misses a model that stays.
  prometheus::Gauge* info = &model_info_.Add(
      {{"model", name}, {"n", absl::StrCat(n)}, {"d", absl::StrCat(d)}, {"dtype", dtype}});
  if (m->info_ != nullptr && m->info_ != info) model_info_.Remove(m->info_);
  m->info_ = info;
  m->info_->Set(1);
  return m.get();
}

void Metrics::RemoveModel(const std::string& name) {
  absl::MutexLock lock(&mu_);
  auto it = models_.find(name);
  if (it == models_.end() || it->second->info_ == nullptr) return;
  model_info_.Remove(it->second->info_);
  it->second->info_ = nullptr;
}

void Metrics::CountReload(ReloadResult result) {
  reloads_.Add({{"result", kReloadResults[static_cast<int>(result)]}}).Increment();
}

void Metrics::SetUnavailableModels(size_t count) { unavailable_.Set(static_cast<double>(count)); }

void Metrics::CountUnknownModelRequest(MetricMode mode, absl::StatusCode code) {
  requests_
      .Add({{"model", std::string(kUnknownModel)},
            {"mode", std::string(MetricModeName(mode))},
            {"code", std::string(StatusCodeName(code))}})
      .Increment();
}

namespace {

// Fields of /proc/self/stat after the command name; field(3) is the state.
std::vector<std::string> ProcStatFields() {
  std::ifstream in("/proc/self/stat");
  std::string line;
  std::getline(in, line);
  const size_t close = line.rfind(')');
  if (close == std::string::npos) return {};
  std::vector<std::string> fields = absl::StrSplit(line.substr(close + 2), ' ');
  return fields;
}

// Field `index` (1-based, as in proc(5)) of /proc/self/stat, or 0.
double StatField(const std::vector<std::string>& fields, size_t index) {
  const size_t i = index - 3;
  return i < fields.size() ? std::strtod(fields[i].c_str(), nullptr) : 0.0;
}

prometheus::MetricFamily Single(const std::string& name, const std::string& help,
                                prometheus::MetricType type, double value) {
  prometheus::MetricFamily f;
  f.name = name;
  f.help = help;
  f.type = type;
  prometheus::ClientMetric m;
  if (type == prometheus::MetricType::Counter) {
    m.counter.value = value;
  } else {
    m.gauge.value = value;
  }
  f.metric.push_back(m);
  return f;
}

}  // namespace

ProcessCollector::ProcessCollector() {
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  double boot_time = 0;
  std::ifstream stat("/proc/stat");
  std::string key;
  while (stat >> key) {
    if (key == "btime") {
      stat >> boot_time;
      break;
    }
  }
  start_time_seconds_ = boot_time + StatField(ProcStatFields(), 22) / ticks;
}

std::vector<prometheus::MetricFamily> ProcessCollector::Collect() const {
  using prometheus::MetricType;
  const std::vector<std::string> fields = ProcStatFields();
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
  size_t open_fds = 0;
  if (DIR* dir = opendir("/proc/self/fd")) {
    while (readdir(dir) != nullptr) ++open_fds;
    closedir(dir);
    open_fds -= 3;  // ".", ".." and the descriptor of `dir` itself
  }
  rlimit limit{};
  getrlimit(RLIMIT_NOFILE, &limit);
  return {
      Single("process_resident_memory_bytes", "Resident memory size in bytes.", MetricType::Gauge,
             StatField(fields, 24) * page),
      Single("process_virtual_memory_bytes", "Virtual memory size in bytes.", MetricType::Gauge,
             StatField(fields, 23)),
      Single("process_start_time_seconds", "Start time of the process since the Unix epoch.",
             MetricType::Gauge, start_time_seconds_),
      Single("process_cpu_seconds_total", "User and system CPU time spent, in seconds.",
             MetricType::Counter, (StatField(fields, 14) + StatField(fields, 15)) / ticks),
      Single("process_open_fds", "Open file descriptors.", MetricType::Gauge,
             static_cast<double>(open_fds)),
      Single("process_max_fds", "Maximum number of open file descriptors.", MetricType::Gauge,
             static_cast<double>(limit.rlim_cur)),
  };
}

}  // namespace adasoftmax::server
