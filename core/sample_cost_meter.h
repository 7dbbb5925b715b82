#ifndef ADASOFTMAX_CORE_SAMPLE_COST_METER_H_
#define ADASOFTMAX_CORE_SAMPLE_COST_METER_H_

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace adasoftmax {

// Measures AdaptiveOptions::sample_cost while serving: the cost of one sampled entry of A in
// float32 entries streamed by the exact path, on this machine and model, now. AdaptiveSoftmax
// reports both paths' core time (see BusyTimer), which a server's concurrent batches do not
// stretch as they stretch the wall clock (unevenly: the sampler more than the SGEMMs). It keeps
// exponentially weighted sums of the exact path's seconds and entries and of the sampler's
// seconds, samples and predicted samples (each observation weighing kWeight against the past),
// and reports the ratio of the rates. The cost moves with the machine's memory speed, which
// paces the exact path more than the sampler (see the README's Performance section).
// Thread-safe.
class SampleCostMeter {
 public:
  static constexpr double kWeight = 1.0 / 32;
  // Until both sides have this many observations, the costs are the initial cost (unbounded).
  static constexpr int kWarmup = 8;
  // The costs stay within these bounds.
  static constexpr double kMinCost = 0.5;
  static constexpr double kMaxCost = 64;

  explicit SampleCostMeter(double initial_cost) : initial_cost_(initial_cost) {}

  // The exact path streamed `entries` float32 entries (or their equivalent) in `seconds`.
  void AddExact(double entries, double seconds);
  // The sampler read `samples` entries in `seconds`, where `predicted` were predicted before
  // it started (see AdaptiveSoftmax::Plan), and the queries that fell back to the exact path
  // then took `fallback_seconds` more. Observations with no sampling time are ignored.
  void AddSampled(double samples, double predicted, double seconds, double fallback_seconds);

  // Per entry sampled.
  double Cost() const;
  // Per entry predicted before sampling, fallbacks included: prices a prediction, whatever its
  // bias, at what sampling it ends up costing.
  double CostOfPredicted() const;
  // Observations of each side so far.
  int ExactObservations() const {
    absl::MutexLock lock(&mu_);
    return exact_observations_;
  }
  int SampledObservations() const {
    absl::MutexLock lock(&mu_);
    return sampled_observations_;
  }

 private:
  struct Sampled {
    double seconds = 0, samples = 0, predicted = 0, fallback_seconds = 0;
  };
  // (seconds / units) / (exact seconds / exact entries), or the initial cost while warming up.
  double Ratio(double seconds, double units) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const double initial_cost_;
  mutable absl::Mutex mu_;
  double exact_seconds_ ABSL_GUARDED_BY(mu_) = 0;
  double exact_entries_ ABSL_GUARDED_BY(mu_) = 0;
  int exact_observations_ ABSL_GUARDED_BY(mu_) = 0;
  Sampled sampled_ ABSL_GUARDED_BY(mu_);
  int sampled_observations_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace adasoftmax

#endif  // ADASOFTMAX_CORE_SAMPLE_COST_METER_H_
