#ifndef ADASOFTMAX_SERVER_METRICS_H_
#define ADASOFTMAX_SERVER_METRICS_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "prometheus/collectable.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace adasoftmax::server {

// Label value of the `mode` label.
enum class MetricMode { kAdaptive = 0, kExact = 1 };
std::string_view MetricModeName(MetricMode mode);

// The handles of one model's metrics, resolved once so that recording takes no label lookups.
// Thread-safe (prometheus-cpp metrics are).
class ModelMetrics {
 public:
  // Counts one finished request with its gRPC status code name (e.g. "OK", "NOT_FOUND").
  void CountRequest(MetricMode mode, absl::StatusCode code);
  // Records one answered query. `exact`: an adaptive query answered by the exact path.
  void ObserveQuery(MetricMode mode, uint64_t samples, double sample_fraction, bool exact = false);
  // Time from arrival to answer of a request that reached the model's queue.
  void ObserveRequestDuration(MetricMode mode, absl::Duration d);
  void ObserveQueueDuration(absl::Duration d);
  void ObserveBatchSize(size_t size);
  // Requests waiting for a batch: +1 before a request is queued, -1 when it leaves the queue.
  void AddQueued(double delta) { queued_->Increment(delta); }
  void CountAudit(bool failed);
  // The sample cost the model's exact fallback uses now.
  void SetSampleCost(double cost) { sample_cost_->Set(cost); }
  // What the model's fallback prices each query after the first of an exact batch at.
  void SetExactBatchShare(double share) { exact_batch_share_->Set(share); }

 private:
  friend class Metrics;
  std::string name_;
  prometheus::Family<prometheus::Counter>* requests_ = nullptr;
  prometheus::Histogram* samples_[2] = {};
  prometheus::Histogram* fraction_[2] = {};
  prometheus::Histogram* duration_[2] = {};
  prometheus::Histogram* queue_duration_ = nullptr;
  prometheus::Histogram* batch_size_ = nullptr;
  prometheus::Gauge* queued_ = nullptr;
  prometheus::Gauge* sample_cost_ = nullptr;
  prometheus::Gauge* exact_batch_share_ = nullptr;
  prometheus::Counter* audit_queries_ = nullptr;
  prometheus::Counter* audit_failures_ = nullptr;
  prometheus::Counter* exact_answers_ = nullptr;
  prometheus::Gauge* info_ = nullptr;  // null while the model is not served
};

// The service's metrics, registered in a caller-owned registry:
//   adasoftmax_build_info{version}                        gauge = 1
//   adasoftmax_requests_total{model,mode,code}            counter
//   adasoftmax_samples_per_query{model,mode}              histogram, 1e2..1e9
//   adasoftmax_sample_fraction{model,mode}                histogram, 0.005..1
//   adasoftmax_request_duration_seconds{model,mode}       histogram
//   adasoftmax_queue_duration_seconds{model}              histogram
//   adasoftmax_batch_size{model}                          histogram
//   adasoftmax_model_info{model,n,d,dtype}                gauge = 1 (served models only)
//   adasoftmax_queue_size{model}                          gauge: requests waiting for a batch
//   adasoftmax_sample_cost{model}                         gauge: the exact fallback's price of
//                                                         a sample, in streamed exact entries
//   adasoftmax_exact_batch_share{model}                   gauge: its price of each query after
//                                                         the first of an exact batch, in passes
//   adasoftmax_audit_queries_total{model}                 counter
//   adasoftmax_audit_failures_total{model}                counter
//   adasoftmax_adaptive_exact_answers_total{model}        counter: adaptive queries answered
//                                                         exactly (fallback, or every entry read)
//   adasoftmax_repository_reloads_total{result}           counter: reloads that changed a
//                                                         model ("ok"), failed to load one
//                                                         ("failed") or could not read the
//                                                         repository ("unreadable")
//   adasoftmax_repository_unavailable_models              gauge: model folders whose current
//                                                         files do not load
// Thread-safe.
class Metrics {
 public:
  // The model label of requests naming no served model (keeps client-chosen names out of the
  // label set).
  static constexpr std::string_view kUnknownModel = "<unknown>";

  // REQUIRES: `registry` outlives this object.
  explicit Metrics(prometheus::Registry& registry);

  // Registers a model's series (all at 0) and its info gauge, and returns their handle, which
  // lives as long as this object. A name seen before gets the same handle (its series keep
  // counting) with the info gauge labelled by the new shape and dtype.
  ModelMetrics* AddModel(const std::string& name, uint64_t n, uint64_t d,
                         const std::string& dtype);
  // Drops the info gauge of a model no longer served; its other series keep their values.
  void RemoveModel(const std::string& name);
  enum class ReloadResult { kOk, kFailed, kUnreadable };
  // Counts a reload of the repository.
  void CountReload(ReloadResult result);
  // Sets the number of model folders whose current files do not load.
  void SetUnavailableModels(size_t count);

  // Counts a request for a model that is not served.
  void CountUnknownModelRequest(MetricMode mode, absl::StatusCode code);

 private:
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Histogram>& samples_;
  prometheus::Family<prometheus::Histogram>& fraction_;
  prometheus::Family<prometheus::Histogram>& duration_;
  prometheus::Family<prometheus::Histogram>& queue_duration_;
  prometheus::Family<prometheus::Histogram>& batch_size_;
  prometheus::Family<prometheus::Gauge>& model_info_;
  prometheus::Family<prometheus::Gauge>& queue_size_;
  prometheus::Family<prometheus::Gauge>& sample_cost_;
  prometheus::Family<prometheus::Gauge>& exact_batch_share_;
  prometheus::Family<prometheus::Counter>& audit_queries_;
  prometheus::Family<prometheus::Counter>& audit_failures_;
  prometheus::Family<prometheus::Counter>& exact_answers_;
  prometheus::Family<prometheus::Counter>& reloads_;
  prometheus::Gauge& unavailable_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::unique_ptr<ModelMetrics>> models_ ABSL_GUARDED_BY(mu_);
};

// The standard process metrics, read from /proc at scrape time: process_resident_memory_bytes,
// process_virtual_memory_bytes, process_start_time_seconds, process_cpu_seconds_total,
// process_open_fds, process_max_fds. Thread-safe.
class ProcessCollector final : public prometheus::Collectable {
 public:
  ProcessCollector();
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  double start_time_seconds_ = 0;
};

// "OK", "INVALID_ARGUMENT", ...: the gRPC spelling of a status code.
std::string_view StatusCodeName(absl::StatusCode code);

}  // namespace adasoftmax::server

#endif  // ADASOFTMAX_SERVER_METRICS_H_
