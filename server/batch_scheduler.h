#ifndef ADASOFTMAX_SERVER_BATCH_SCHEDULER_H_
#define ADASOFTMAX_SERVER_BATCH_SCHEDULER_H_

// Dynamic batching: tasks for the same model wait in a queue until max_batch_size of them are
// waiting or the oldest has waited batch_timeout; the batch then runs on one of a fixed set of
// worker threads shared by all queues. Modelled on TensorFlow Serving's batch schedulers
// (Options + static Create, an injected clock, Schedule taking ownership only on OK).

#include <algorithm>
#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/clock.h"

namespace adasoftmax::server {

// Batching parameters of one queue.
struct BatchingOptions {
  // A batch runs as soon as this many tasks wait. 1 disables batching. REQUIRES: >= 1.
  // Default: 32.
  size_t max_batch_size = 32;
  // ... or once the oldest waiting task has waited this long. REQUIRES: >= 0. Default: 500 us.
  absl::Duration batch_timeout = absl::Microseconds(500);
  // Schedule fails with RESOURCE_EXHAUSTED while this many tasks wait. REQUIRES: >= 1.
  // Default: 1024.
  size_t max_queue_size = 1024;
};

inline absl::Status ValidateBatchingOptions(const BatchingOptions& o) {
  if (o.max_batch_size < 1) return absl::InvalidArgumentError("max_batch_size: must be >= 1");
  if (o.batch_timeout < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("batch_timeout_us: must be >= 0");
  }
  if (o.max_queue_size < 1) return absl::InvalidArgumentError("max_queue_size: must be >= 1");
  return absl::OkStatus();
}

// TaskT must provide:
//   absl::Time deadline() const;  // the task is dropped, unrun, once the clock passes it
//   bool cancelled() const;       // the task is dropped, unrun, once this turns true
//   bool runs_alone() const;      // the task must run in a batch of its own
// Dropped tasks go to the queue's DropFn with DEADLINE_EXCEEDED or CANCELLED; every task that
// Schedule accepted reaches exactly one of ProcessFn and DropFn.
//
// Thread-safe. With Options::num_threads == 0 no thread is started and batches run only when
// the owner calls ProcessReadyBatch (deterministic tests with a fake clock).
template <typename TaskT>
class BatchScheduler {
 public:
  using Batch = std::vector<std::unique_ptr<TaskT>>;
  // Runs one batch, in scheduling order. Called without the scheduler's lock held.
  using ProcessFn = std::function<void(Batch batch)>;
  // Receives a task that will not run, and why. Called without the scheduler's lock held.
  using DropFn = std::function<void(std::unique_ptr<TaskT> task, absl::Status why)>;
  using QueueId = size_t;

  struct Options {
    // Worker threads running batches of every queue. 0: the owner drives the scheduler with
    // ProcessReadyBatch. REQUIRES: >= 0. Default: 1.
    int num_threads = 1;
  };

  // REQUIRES: `clock` outlives the scheduler.
  static absl::StatusOr<std::unique_ptr<BatchScheduler>> Create(const Options& options,
                                                               const Clock* clock) {
    if (options.num_threads < 0) return absl::InvalidArgumentError("threads: must be >= 0");
    std::unique_ptr<BatchScheduler> s(new BatchScheduler(clock));
    for (int i = 0; i < options.num_threads; ++i) {
      s->threads_.emplace_back([p = s.get()] { p->WorkerLoop(); });
    }
    return s;
  }

  // Shuts down (see Shutdown) and joins the workers.
  ~BatchScheduler() { Shutdown(); }

  BatchScheduler(const BatchScheduler&) = delete;
  BatchScheduler& operator=(const BatchScheduler&) = delete;

  // Adds a queue with its own batching options and callbacks.
  absl::StatusOr<QueueId> AddQueue(const BatchingOptions& options, ProcessFn process,
                                   DropFn drop) {
    if (absl::Status s = ValidateBatchingOptions(options); !s.ok()) return s;
    absl::MutexLock lock(&mu_);
    queues_.push_back(std::make_unique<Queue>(options, std::move(process), std::move(drop)));
    return queues_.size() - 1;
  }

  // Takes ownership of *task and returns OK, or leaves *task untouched and returns
  // RESOURCE_EXHAUSTED (queue full) or UNAVAILABLE (shutting down).
  // REQUIRES: `queue` came from AddQueue.
  absl::Status Schedule(QueueId queue, std::unique_ptr<TaskT>* task) {
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return absl::UnavailableError("the server is shutting down");
      Queue& q = *queues_[queue];
      if (q.tasks.size() >= q.options.max_queue_size) {
        return absl::ResourceExhaustedError(absl::StrFormat(
            "the queue is full: %d requests are waiting (--max_queue_size)", q.tasks.size()));
      }
      q.tasks.push_back(Entry{std::move(*task), clock_->Now()});
      if (!q.tasks.back().task->runs_alone()) ++q.shared;
    }
    wakeup_.Signal();
    return absl::OkStatus();
  }

  // Runs at most one ready batch (and hands over the tasks dropped so far) on the calling
  // thread. Returns false when there was nothing to do. A queue is ready when it holds
  // max_batch_size tasks that may share a batch, its oldest task has waited batch_timeout, a
  // task that runs alone waits, or the scheduler is shutting down.
  bool ProcessReadyBatch() {
    Work work;
    {
      absl::MutexLock lock(&mu_);
      work = TakeWorkLocked();
    }
    if (work.empty()) return false;
    RunWork(std::move(work));
    return true;
  }

  // Stops accepting tasks, runs every waiting task without waiting for timeouts (on the
  // workers, or on the caller when there are none) and joins the workers. Idempotent; not to be
  // called concurrently with itself.
  void Shutdown() {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
    }
    wakeup_.SignalAll();
    for (std::thread& t : threads_) t.join();
    threads_.clear();
    while (ProcessReadyBatch()) {
    }
  }

  // Makes the workers look at the queues now, e.g. after a task was cancelled, so that it is
  // dropped at once rather than at the next timeout.
  void Wake() {
    absl::MutexLock lock(&mu_);  // a worker between its check and its wait cannot miss this
    wakeup_.SignalAll();
  }

  // Tasks waiting in `queue`.
  size_t queued(QueueId queue) const {
    absl::MutexLock lock(&mu_);
    return queues_[queue]->tasks.size();
  }

 private:
  struct Entry {
    std::unique_ptr<TaskT> task;
    absl::Time enqueued;
  };
  struct Queue {
    Queue(const BatchingOptions& o, ProcessFn p, DropFn d)
        : options(o), process(std::move(p)), drop(std::move(d)) {}
    const BatchingOptions options;
    const ProcessFn process;
    const DropFn drop;
    std::deque<Entry> tasks;
    size_t shared = 0;  // tasks that may share a batch (!runs_alone())
  };
  // What one step hands over: dropped tasks, then at most one batch.
  struct Work {
    std::vector<std::pair<Queue*, std::pair<std::unique_ptr<TaskT>, absl::Status>>> dropped;
    Queue* queue = nullptr;
    Batch batch;
    bool empty() const { return dropped.empty() && queue == nullptr; }
  };

  explicit BatchScheduler(const Clock* clock) : clock_(clock) {}

  void WorkerLoop() {
    while (true) {
      Work work;
      {
        absl::MutexLock lock(&mu_);
        while (true) {
          work = TakeWorkLocked();
          if (!work.empty()) break;
          if (stopping_ && AllEmptyLocked()) return;
          const absl::Time wake = NextTimeoutLocked();
          if (wake == absl::InfiniteFuture()) {
            wakeup_.Wait(&mu_);
          } else {
            wakeup_.WaitWithTimeout(&mu_, wake - clock_->Now());
          }
        }
        // Another batch may be ready: let an idle worker look.
        if (work.queue != nullptr) wakeup_.Signal();
      }
      RunWork(std::move(work));
    }
  }

  void RunWork(Work work) {
    for (auto& [queue, dropped] : work.dropped) {
      queue->drop(std::move(dropped.first), std::move(dropped.second));
    }
    if (work.queue != nullptr) work.queue->process(std::move(work.batch));
  }

  bool AllEmptyLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (const auto& q : queues_) {
      if (!q->tasks.empty()) return false;
    }
    return true;
  }

  // When the next queue times out or the next task deadline passes; InfiniteFuture when every
  // queue is empty.
  absl::Time NextTimeoutLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    absl::Time wake = absl::InfiniteFuture();
    for (const auto& q : queues_) {
      if (q->tasks.empty()) continue;
      wake = std::min(wake, q->tasks.front().enqueued + q->options.batch_timeout);
      for (const Entry& e : q->tasks) wake = std::min(wake, e.task->deadline());
    }
    return wake;
  }

  Work TakeWorkLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Work work;
    const absl::Time now = clock_->Now();
    // Drop expired and cancelled tasks of every queue.
    for (const auto& q : queues_) {
      for (auto it = q->tasks.begin(); it != q->tasks.end();) {
        absl::Status why;
        if (it->task->cancelled()) {
          why = absl::CancelledError("the call was cancelled while queued");
        } else if (it->task->deadline() <= now) {
          why = absl::DeadlineExceededError("the deadline passed while the request was queued");
        } else {
          ++it;
          continue;
        }
        if (!it->task->runs_alone()) --q->shared;
        work.dropped.emplace_back(q.get(), std::make_pair(std::move(it->task), std::move(why)));
        it = q->tasks.erase(it);
      }
    }
    // Then take one batch, visiting queues round-robin so that none starves.
    for (size_t step = 0; step < queues_.size(); ++step) {
      const size_t index = (next_queue_ + step) % queues_.size();
      Queue& q = *queues_[index];
      if (q.tasks.empty()) continue;
      const bool full = q.shared >= q.options.max_batch_size;
      const bool timed_out = q.tasks.front().enqueued + q.options.batch_timeout <= now;
      const bool alone_waiting = q.shared < q.tasks.size();
      if (!(full || timed_out || alone_waiting || stopping_)) continue;
      next_queue_ = index + 1;
      work.queue = &q;
      if (q.tasks.front().task->runs_alone() || !(full || timed_out || stopping_)) {
        // The oldest task that runs alone, as a batch of one.
        auto it = q.tasks.begin();
        while (!it->task->runs_alone()) ++it;
        work.batch.push_back(std::move(it->task));
        q.tasks.erase(it);
        return work;
      }
      // Up to max_batch_size tasks that may share, oldest first; alone-runners keep their place.
      for (auto it = q.tasks.begin();
           it != q.tasks.end() && work.batch.size() < q.options.max_batch_size;) {
        if (it->task->runs_alone()) {
          ++it;
          continue;
        }
        work.batch.push_back(std::move(it->task));
        it = q.tasks.erase(it);
        --q.shared;
      }
      return work;
    }
    return work;
  }

  const Clock* const clock_;
  mutable absl::Mutex mu_;
  absl::CondVar wakeup_;
  std::vector<std::unique_ptr<Queue>> queues_ ABSL_GUARDED_BY(mu_);
  size_t next_queue_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;  // written only by Create and Shutdown
};

}  // namespace adasoftmax::server

#endif  // ADASOFTMAX_SERVER_BATCH_SCHEDULER_H_
