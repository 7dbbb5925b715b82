#ifndef ADASOFTMAX_CORE_SAMPLE_COST_METER_H_
#define ADASOFTMAX_CORE_SAMPLE_COST_METER_H_

#include <cstddef>
#include <optional>

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
// paces the exact path more than the sampler (see the README's Performance section). The exact
// rate is that of single queries; batches of several give the share of a single query's time
// that each query after the first adds (a batch is one blocked SGEMM, compute-bound where a
// single query is bandwidth-bound, so the share moves with the machine too). Thread-safe.
class SampleCostMeter {
 public:
  static constexpr double kWeight = 1.0 / 32;
  // Until both sides have this many observations, the costs are the initial cost (unbounded).
  static constexpr int kWarmup = 8;
  // The costs stay within these bounds.
  static constexpr double kMinCost = 0.5;
  static constexpr double kMaxCost = 64;

  explicit SampleCostMeter(double initial_cost) : initial_cost_(initial_cost) {}

  // The exact path answered `count` queries together in `seconds`, one query alone streaming
  // `pass_entries` float32 entries (or their equivalent). Batches of several are ignored until
  // kWarmup single queries were seen, which tell their first query's time.
  void AddExact(size_t count, double pass_entries, double seconds);
  // The sampler read `samples` entries in `seconds`, where `predicted` were predicted before
  // it started (see AdaptiveSoftmax::Plan), and the queries that fell back to the exact path
  // then took `fallback_seconds` more. Observations with no sampling time are ignored.
  void AddSampled(double samples, double predicted, double seconds, double fallback_seconds);

  // Per entry sampled.
  double Cost() const;
  // Per entry predicted before sampling, fallbacks included: prices a prediction, whatever its
  // bias, at what sampling it ends up costing.
  double CostOfPredicted() const;
  // What each query after the first of an exact batch adds to its time, as a share of a single
  // query's (clamped to [0, 1]); nullopt until kWarmup batches of several were seen.
  std::optional<double> ExtraQueryShare() const;

  // Observations of each side so far: exact single queries, exact batches of several, sampling.
  int ExactObservations() const {
    absl::MutexLock lock(&mu_);
    return exact_observations_;
  }
  int BatchObservations() const {
    absl::MutexLock lock(&mu_);
    return batch_observations_;
  }
  int SampledObservations() const {
    absl::MutexLock lock(&mu_);
    return sampled_observations_;
  }

 private:
  struct Batches {
    double extra_seconds = 0, single_seconds = 0;  // beyond a first query; a single query each
  };
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
  Batches batches_ ABSL_GUARDED_BY(mu_);
  int batch_observations_ ABSL_GUARDED_BY(mu_) = 0;
  Sampled sampled_ ABSL_GUARDED_BY(mu_);
  int sampled_observations_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace adasoftmax

#endif  // ADASOFTMAX_CORE_SAMPLE_COST_METER_H_
