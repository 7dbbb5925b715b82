#ifndef ADASOFTMAX_SERVER_INFERENCE_SERVICE_H_
#define ADASOFTMAX_SERVER_INFERENCE_SERVICE_H_

// The business logic behind the RPCs, free of any transport: request validation, defaults,
// batching per model, running batches (adaptive batches share one column order, exact batches
// one blocked SGEMM), filling responses, metrics and the live guarantee audit.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "adasoftmax/v1/adasoftmax.pb.h"
#include "core/topk_softmax.h"
#include "server/auditor.h"
#include "server/batch_scheduler.h"
#include "server/clock.h"
#include "server/metrics.h"
#include "server/model_repository.h"

namespace adasoftmax::server {

// What the transport knows about one call.
struct CallContext {
  // The request is dropped with DEADLINE_EXCEEDED, unrun, once the clock passes this.
  absl::Time deadline = absl::InfiniteFuture();
  // Returns true once the caller has gone away; the request is then dropped, unrun. Polled
  // from worker threads while the request waits. May be empty (never cancelled).
  std::function<bool()> cancelled;
};

// Thread-safe.
class InferenceService {
 public:
  // Called exactly once per request with its final status; after it returns the service no
  // longer touches the request or the response.
  using DoneFn = std::function<void(absl::Status)>;

  struct Options {
    // Worker threads running batches (shared by all models). REQUIRES: >= 0; 0 only for tests
    // that drive the scheduler themselves. Default: 2.
    int threads = 2;
    Auditor::Options audit;
  };

  // REQUIRES: `clock` and `metrics` outlive the service; model names are distinct.
  static absl::StatusOr<std::unique_ptr<InferenceService>> Create(
      std::vector<std::shared_ptr<const ServedModel>> models, const Options& options,
      const Clock* clock, Metrics* metrics);

  // Runs what is queued, then stops.
  ~InferenceService();

  // Answers `request` into `*response`, then calls `done`: inline for requests rejected on
  // entry (INVALID_ARGUMENT naming the field, NOT_FOUND, RESOURCE_EXHAUSTED, UNAVAILABLE), else
  // on a worker thread. `request` and `response` must stay valid until `done` runs.
  void TopKSoftmax(const v1::TopKSoftmaxRequest* request, v1::TopKSoftmaxResponse* response,
                   CallContext call, DoneFn done);

  v1::ListModelsResponse ListModels() const;

  // Tells the service that some caller went away, so that its queued request is dropped now
  // rather than at the next batch timeout.
  void NotifyCancelled();

  // Requests of `model` waiting for a batch; 0 for an unknown model.
  size_t queued(const std::string& model) const;

  // Stops accepting requests (UNAVAILABLE), answers every queued one and waits for running
  // batches. Idempotent.
  void Shutdown();

  // Drives the scheduler when Options::threads == 0: runs at most one ready batch.
  bool ProcessReadyBatch();
  Auditor& auditor() { return auditor_; }

 private:
  struct Entry;
  struct Task;
  using Scheduler = BatchScheduler<Task>;

  InferenceService(const Options& options, const Clock* clock, Metrics* metrics);

  void ProcessBatch(Entry& entry, Scheduler::Batch batch);
  // Runs one group of tasks that share a solver; `batch_size` is reported in every response.
  void RunGroup(Entry& entry, std::vector<std::unique_ptr<Task>>& group, bool adaptive);
  // The one place a request ends: counts it and calls its done callback.
  void Finish(Task& task, absl::Status status);

  const Clock* const clock_;
  Metrics* const metrics_;
  std::vector<std::unique_ptr<Entry>> entries_;
  absl::flat_hash_map<std::string, Entry*> by_name_;
  Auditor auditor_;
  std::unique_ptr<Scheduler> scheduler_;  // last: its workers use the members above
};

}  // namespace adasoftmax::server

#endif  // ADASOFTMAX_SERVER_INFERENCE_SERVICE_H_
