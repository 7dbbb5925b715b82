#include "core/sample_cost_meter.h"

#include <algorithm>

namespace adasoftmax {
namespace {

// sum <- (1 - kWeight) sum + kWeight value
void Decay(double& sum, double value) {
  sum = (1 - SampleCostMeter::kWeight) * sum + SampleCostMeter::kWeight * value;
}

}  // namespace

void SampleCostMeter::AddExact(size_t count, double pass_entries, double seconds) {
  if (!(count > 0 && pass_entries > 0 && seconds > 0)) return;
  absl::MutexLock lock(&mu_);
  if (count == 1) {
    Decay(exact_seconds_, seconds);
    Decay(exact_entries_, pass_entries);
    ++exact_observations_;
    return;
  }
  if (exact_observations_ < kWarmup) return;
  const double single_seconds = exact_seconds_ / exact_entries_ * pass_entries;
  Decay(batches_.extra_seconds, std::max(0.0, seconds - single_seconds));
  Decay(batches_.single_seconds, static_cast<double>(count - 1) * single_seconds);
  ++batch_observations_;
}

void SampleCostMeter::AddSampled(double samples, double predicted, double seconds,
                                 double fallback_seconds) {
  if (!(samples > 0 && predicted > 0 && seconds > 0 && fallback_seconds >= 0)) return;
  absl::MutexLock lock(&mu_);
  Decay(sampled_.seconds, seconds);
  Decay(sampled_.samples, samples);
  Decay(sampled_.predicted, predicted);
  Decay(sampled_.fallback_seconds, fallback_seconds);
  ++sampled_observations_;
}

double SampleCostMeter::Cost() const {
  absl::MutexLock lock(&mu_);
  return Ratio(sampled_.seconds, sampled_.samples);
}

double SampleCostMeter::CostOfPredicted() const {
  absl::MutexLock lock(&mu_);
  return Ratio(sampled_.seconds + sampled_.fallback_seconds, sampled_.predicted);
}

std::optional<double> SampleCostMeter::ExtraQueryShare() const {
  absl::MutexLock lock(&mu_);
  if (batch_observations_ < kWarmup) return std::nullopt;
  return std::min(1.0, batches_.extra_seconds / batches_.single_seconds);
}

double SampleCostMeter::Ratio(double seconds, double units) const {
  if (exact_observations_ < kWarmup || sampled_observations_ < kWarmup) return initial_cost_;
  const double cost = (seconds / units) / (exact_seconds_ / exact_entries_);
  return std::clamp(cost, kMinCost, kMaxCost);
}

}  // namespace adasoftmax
