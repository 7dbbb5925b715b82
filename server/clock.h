#ifndef ADASOFTMAX_SERVER_CLOCK_H_
#define ADASOFTMAX_SERVER_CLOCK_H_

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace adasoftmax::server {

// The time source of the server's time-based decisions (batch timeouts, deadlines, durations),
// injected so that tests can use a fake. Implementations are thread-safe.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;
};

// The system clock. Thread-safe.
class RealClock final : public Clock {
 public:
  absl::Time Now() const override { return absl::Now(); }
};

}  // namespace adasoftmax::server

#endif  // ADASOFTMAX_SERVER_CLOCK_H_
