#include "core/worker_pool.h"

#include <time.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <deque>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "core/resources.h"

namespace adasoftmax {
namespace {

// BusyTimers alive on this thread (a worker holds one while it runs a timed task's items).
thread_local int timing = 0;
// The workers' core seconds spent on the timed ParallelFor items of this thread so far.
thread_local double borrowed_seconds = 0;

double ThreadCpuSeconds() {
  timespec now;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
  return static_cast<double>(now.tv_sec) + 1e-9 * static_cast<double>(now.tv_nsec);
}

// This thread's core seconds so far, its timed ParallelFor items included.
double BusySeconds() { return ThreadCpuSeconds() + borrowed_seconds; }

}  // namespace

BusyTimer::BusyTimer() : start_(BusySeconds()) { ++timing; }
BusyTimer::~BusyTimer() { --timing; }
double BusyTimer::Seconds() const { return BusySeconds() - start_; }

namespace {

class WorkerPool {
 public:
  explicit WorkerPool(unsigned workers) {
    for (unsigned w = 0; w < workers; ++w) std::thread([this] { Work(); }).detach();
  }

  void Wake() {
    absl::MutexLock lock(&mu_);
    ++wakes_;
  }

  void ParallelFor(size_t count, absl::FunctionRef<void(size_t)> body) {
    Task task{body, count, /*timed=*/timing > 0};
    {
      absl::MutexLock lock(&mu_);
      tasks_.push_back(&task);
      queued_.store(tasks_.size(), std::memory_order_relaxed);
    }
    RunItems(task);
    bool alone;
    {
      absl::MutexLock lock(&mu_);
      // No worker may pick the task up once it is off the queue; wait for those that did.
      const auto it = std::find(tasks_.begin(), tasks_.end(), &task);
      if (it != tasks_.end()) tasks_.erase(it);
      queued_.store(tasks_.size(), std::memory_order_relaxed);
      alone = tasks_.empty();
    }
    // A helper's last item usually ends within microseconds, while being woken after it costs
    // tens: watch for it first, unless other callers' tasks are waiting for the cores.
    if (alone) SpinUntil([&] { return task.helpers.load() == 0; });
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](Task* t) { return t->helpers.load() == 0; }, &task));
    }
    if (task.timed) borrowed_seconds += task.helper_seconds.load();
  }

 private:
  struct Task {
    absl::FunctionRef<void(size_t)> body;
    size_t count;
    bool timed;  // its caller has a BusyTimer alive
    std::atomic<size_t> next{0};
    std::atomic<int> helpers{0};  // workers running items; they join under mu_
    std::atomic<double> helper_seconds{0};  // their core seconds on its items, when timed
  };

  static void RunItems(Task& task) {
    for (size_t i = task.next.fetch_add(1); i < task.count; i = task.next.fetch_add(1)) {
      task.body(i);
    }
  }

  void Work() {
    absl::MutexLock lock(&mu_);
    for (;;) {
      if (tasks_.empty()) {
        mu_.Unlock();
        SpinUntil([this] { return queued_.load(std::memory_order_relaxed) != 0; });
        mu_.Lock();
      }
      const uint64_t wakes = wakes_;
      auto woken = [&] { return !tasks_.empty() || wakes_ != wakes; };
      mu_.Await(absl::Condition(&woken));
      if (tasks_.empty()) continue;  // woken ahead of a task: spin for it
      Task* task = tasks_.front();
      if (task->next.load() >= task->count) {  // nothing left to take
        tasks_.pop_front();
        queued_.store(tasks_.size(), std::memory_order_relaxed);
        continue;
      }
      ++task->helpers;
      mu_.Unlock();
      if (task->timed) {
        const BusyTimer timer;
        RunItems(*task);
        task->helper_seconds.fetch_add(timer.Seconds());
      } else {
        RunItems(*task);
      }
      --task->helpers;  // the last use of the task: its caller may return now
      mu_.Lock();
    }
  }

  // Waking a sleeping thread costs 20-100 us, as much as a sampler phase on a small head, and
  // one query runs several parallel phases a few tens of microseconds apart: a thread about to
  // wait first watches for up to 200 us whether done() holds, then sleeps.
  template <typename Done>
  static void SpinUntil(Done done) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(200);
    while (!done()) {
      for (int i = 0; i < 64; ++i) {
#if defined(__x86_64__)
        __builtin_ia32_pause();
#endif
      }
      if (std::chrono::steady_clock::now() > deadline) return;
    }
  }

  absl::Mutex mu_;
  std::deque<Task*> tasks_;  // guarded by mu_
  std::atomic<size_t> queued_{0};  // tasks_.size(), readable without mu_
  uint64_t wakes_ = 0;             // Wake() calls; guarded by mu_
};

std::atomic<size_t> configured_width{0};  // 0: the hardware threads
std::atomic<bool> width_fixed{false};      // set once ParallelFor or WakeWorkers ran

}  // namespace

size_t ParallelWidth() {
  // UsableCpus() reads /proc and /sys (tens of microseconds on a VM): once only.
  static const size_t usable_cpus = UsableCpus();
  const size_t width = configured_width.load();
  return width > 0 ? width : usable_cpus;
}

bool SetParallelWidth(size_t width) {
  if (width_fixed.load()) return false;
  configured_width.store(std::max<size_t>(1, width));
  return true;
}

namespace {

// The process's pool, once the width is fixed. Never destroyed: its detached workers wait on it
// until the process exits. REQUIRES: ParallelWidth() > 1.
WorkerPool& Pool() {
  static WorkerPool* const pool = new WorkerPool(static_cast<unsigned>(ParallelWidth() - 1));
  return *pool;
}

// Fixes the width on first use; returns whether it is more than the calling thread.
bool Parallel() {
  if (!width_fixed.load(std::memory_order_relaxed)) width_fixed.store(true);
  return ParallelWidth() > 1;
}

}  // namespace

void WakeWorkers() {
  if (Parallel()) Pool().Wake();
}

void ParallelFor(size_t count, absl::FunctionRef<void(size_t)> body) {
  const bool parallel = Parallel();
  if (count <= 1 || !parallel) {
    for (size_t i = 0; i < count; ++i) body(i);
    return;
  }
  Pool().ParallelFor(count, body);
}

}  // namespace adasoftmax
