#ifndef ADASOFTMAX_SERVER_AUDITOR_H_
#define ADASOFTMAX_SERVER_AUDITOR_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <thread>
#include <vector>

#include "absl/random/random.h"
#include "absl/synchronization/mutex.h"
#include "core/model.h"
#include "core/topk_softmax.h"
#include "server/metrics.h"

namespace adasoftmax::server {

// One adaptive answer to re-check.
struct AuditJob {
  std::shared_ptr<const Model> model;
  ModelMetrics* metrics = nullptr;  // where the outcome is counted
  std::vector<float> query;         // a copy: the request is gone by the time the audit runs
  QueryOptions options;
  TopKResult result;                // the adaptive answer the caller received
};

// Checks a sample of live adaptive answers against the exact double-precision answer
// (ComputeReference + MeetsPac) on one low-priority background thread, off the requests'
// critical path, and counts queries and PAC failures per model. When `max_pending` jobs wait,
// new ones are discarded rather than slowing the service. Thread-safe.
class Auditor {
 public:
  struct Options {
    // Jobs waiting beyond this many are discarded. REQUIRES: >= 1. Default: 64.
    size_t max_pending = 64;
    // Seed of the sampling draws; 0 draws a fresh one. Default: 0.
    uint64_t seed = 0;
  };

  explicit Auditor(const Options& options);
  // Finishes the running job, discards the waiting ones and joins the thread.
  ~Auditor();

  Auditor(const Auditor&) = delete;
  Auditor& operator=(const Auditor&) = delete;

  // True with probability `fraction`: whether to audit the next answer.
  bool Sample(double fraction);
  // Queues a job; returns false when it was discarded (too many pending).
  bool Submit(AuditJob job);
  // Blocks until every job submitted so far has been checked.
  void Flush();
  // Jobs discarded so far.
  uint64_t discarded() const;

 private:
  void Loop();
  bool IdleLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return pending_.empty() && running_ == 0;
  }
  bool WakeLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !pending_.empty() || stopping_; }

  const Options options_;
  mutable absl::Mutex mu_;
  absl::BitGen gen_ ABSL_GUARDED_BY(mu_);
  std::deque<AuditJob> pending_ ABSL_GUARDED_BY(mu_);
  size_t running_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t discarded_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread thread_;
};

}  // namespace adasoftmax::server

#endif  // ADASOFTMAX_SERVER_AUDITOR_H_
