#ifndef ADASOFTMAX_CORE_WORKER_POOL_H_
#define ADASOFTMAX_CORE_WORKER_POOL_H_

#include <cstddef>

#include "absl/functional/function_ref.h"

namespace adasoftmax {

// Calls body(i) for every i in [0, count), on the calling thread and on the process's shared
// worker threads (one fewer than the hardware threads), and returns when every call has
// returned. Calls may run in any order and concurrently; bodies must not wait on each other.
// Safe to call from many threads at once: their items share the same workers.
void ParallelFor(size_t count, absl::FunctionRef<void(size_t)> body);

// Measures the core time of the work its thread does while it lives: the thread's CPU seconds
// plus those the workers spend on the items of its ParallelFor calls (theirs nested included).
// Under load this prices a piece of work where the wall clock would also count the time other
// work held the cores. (It includes the caller's up to 200 us of watching for a helper's last
// item when no other caller's items are waiting.) The workers read their CPU clock, a system
// call, only for items some timer waits on. Use on one thread; timers may nest.
class BusyTimer {
 public:
  BusyTimer();
  ~BusyTimer();
  BusyTimer(const BusyTimer&) = delete;
  BusyTimer& operator=(const BusyTimer&) = delete;

  // Core seconds since construction.
  double Seconds() const;

 private:
  const double start_;
};

// Gets sleeping workers ready for a ParallelFor that follows within ~200 us: waking a thread
// costs tens of microseconds, which this overlaps with the caller's own work until then.
void WakeWorkers();

// The number of threads ParallelFor runs on, the caller included: as set by SetParallelWidth,
// else UsableCpus().
size_t ParallelWidth();

// Sets ParallelWidth. Takes effect only before the first ParallelFor; returns whether it did.
// REQUIRES: width >= 1.
bool SetParallelWidth(size_t width);

// Passes over fewer matrix entries than this stay on the calling thread: they take
// microseconds, less than waking the workers costs.
inline constexpr size_t kParallelMinEntries = size_t{1} << 20;

}  // namespace adasoftmax

#endif  // ADASOFTMAX_CORE_WORKER_POOL_H_
