#ifndef ADASOFTMAX_TESTS_SERVER_FAKE_CLOCK_H_
#define ADASOFTMAX_TESTS_SERVER_FAKE_CLOCK_H_

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/clock.h"

namespace adasoftmax::server {

// A clock that moves only when told to. Thread-safe.
class FakeClock final : public Clock {
 public:
  explicit FakeClock(absl::Time start = absl::FromUnixSeconds(1'700'000'000)) : now_(start) {}

  absl::Time Now() const override {
    absl::MutexLock lock(&mu_);
    return now_;
  }
  void Advance(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    now_ += d;
  }

 private:
  mutable absl::Mutex mu_;
  absl::Time now_;
};

}  // namespace adasoftmax::server

#endif  // ADASOFTMAX_TESTS_SERVER_FAKE_CLOCK_H_
