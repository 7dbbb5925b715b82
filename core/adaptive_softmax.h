#ifndef ADASOFTMAX_CORE_ADAPTIVE_SOFTMAX_H_
#define ADASOFTMAX_CORE_ADAPTIVE_SOFTMAX_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "core/panel_order.h"
#include "core/sample_cost_meter.h"
#include "core/topk_softmax.h"

namespace adasoftmax {

// Measured through the server, 32 callers, calibrated heads sampled without the exact fallback,
// on a 2-core Emerald Rapids host (the server's peak RSS over the weight bytes, queries/s; the
// server holds 2.15x and 2.05x when ready): 50257 x 768, 32 queries sampled together 4.28x,
// 494; in groups of 1 (what 0.05 gives) 2.24x, 476. 32000 x 4096, together 2.35x, 96; in groups
// of 9, 2.16x, 117.
inline constexpr double kDefaultSamplingMemoryFraction = 0.05;

// Measured through the server on the same host, 32 callers, a calibrated 32000 x 4096 head
// sampled without the exact fallback in groups of up to 9 (queries/s, two alternated rounds):
// heavy-tailed queries, whose groups' sharing losses (see SharingLosses) have a median of 1.77,
// read 1.94x the entries together and ran at 139-142 shared against 207-228 alone; perturbed
// copies of one query (loss 1.002) ran at 404-466 shared against 343-354 alone.
inline constexpr double kDefaultMaxSharingLoss = 1.2;

struct AdaptiveOptions {
  // Multiplies the variance estimates of the top-k search (elimination radii and pull
  // targets). 1 is the paper's constant ("theory" mode); calibration may pick others.
  // REQUIRES: finite, > 0. Default: 1.
  double topk_multiplier = 1.0;
  // The same for the warm-up and the normaliser. REQUIRES: finite, > 0. Default: 1.
  double normalizer_multiplier = 1.0;
  // The warm-up reads at most this fraction of the query's nonzero columns (at least the
  // first 16). REQUIRES: in (0, 1]. Default: 0.1.
  double warmup_fraction = 0.1;
  // The partition function sums exp(estimate_i - lognormal_correction x variance_i / 2) over
  // the arms: with an about normal error, exp(estimate_i) overestimates exp(logit_i) by a factor
  // exp(variance_i / 2) on average, which 1 removes. But the arms the search stopped pulling
  // early are those whose estimates fell low, so 1 overcorrects and 0 (the paper's estimator)
  // leaves Z high where many arms stay at the warm-up (W2 at epsilon 0.3, multipliers 0.3 and 5:
  // log Z 0.33 high at the median, 0.08 with 0.3, 0.02 low with 0.5). Calibrate chooses it
  // with the multipliers (see CalibrationOptions::correction_grid). REQUIRES: in [0, 1].
  // Default: 0.
  double lognormal_correction = 0;
  // Importance weights of the column order. Default: atom and query weights.
  ImportanceOptions importance;
  // Exact fallback: the time one sampled entry of A costs, in units of one float32 entry
  // streamed by the exact path (RawProducts; a meter measures both in core time). A query whose
  // sampling is predicted to cost more than the whole exact pass (sample_cost x predicted entries >
  // n x d x ElementBytes(dtype) / 4: a half-precision pass streams twice as fast, while the
  // sampler's cost is mostly bookkeeping) is answered by the exact path instead, so the guarantee
  // holds a fortiori. It is predicted twice: before sampling, from the spread of its importance
  // weights alone (see kSpreadFraction), and between rounds, from its arms' estimates. 0 disables
  // the fallback. REQUIRES: finite, >= 0. Default: 0 (the library samples as told; the CLI and the
  // server turn it on).
  double sample_cost = 0;
  // A batch's sampled queries are sampled together, sharing one column order and each read of
  // a block of columns, in groups whose sampling state (about 80 bytes per arm and query; see
  // SamplingGroupSize) stays within this fraction of the model's weight bytes, one query at
  // least. It bounds what a batch adds to the model's memory, ParallelWidth() groups at a time
  // (see Run): unbounded, 32 queries sampled together held a 50257 x 768 head's weight bytes
  // again. 0: one query a group.
  // REQUIRES: finite, >= 0. Default: kDefaultSamplingMemoryFraction.
  double sampling_memory_fraction = kDefaultSamplingMemoryFraction;
  // A query joins its group's shared order only when that costs it at most this sharing loss
  // (see SharingLosses: the order is drawn from the weights of the whole group); the others are
  // sampled alone. 1: only queries whose weights are proportional share; infinity: all do.
  // REQUIRES: >= 1 (infinity allowed). Default: kDefaultMaxSharingLoss.
  double max_sharing_loss = kDefaultMaxSharingLoss;
  // The smallest epsilon and delta the multipliers are known to hold at, such as those they were
  // calibrated for: a query asking for a smaller epsilon or delta is answered by the exact path,
  // whatever sample_cost. Multipliers do not carry over to stricter queries: W1's, calibrated at
  // epsilon 0.3, held at 0.5 and 0.2 but failed 10% of its held-out queries at 0.1. 0: no bound.
  // REQUIRES: finite, >= 0. Default: 0.
  double min_epsilon = 0;
  double min_delta = 0;
};

// The sample_cost the CLI and the server use unless told otherwise (the server then measures
// it). Measured with `adasoftmax bench` on the README's 2-core machine, a sampled entry costs
// 2-4 entries streamed by the exact path on W1-W3, half precision included, but 10-12 on the
// 3 MB OCR head (W5), whose exact pass runs from cache. At 6, W5's queries that start sampling
// fall back and cost 2% more than exact; at 4, half of them sample to the end and W5 runs at
// 0.54x. At 8, W2 float16 sends 90 of 200 queries exact (1.4-1.6x against 1.8x at 6).
inline constexpr double kDefaultSampleCost = 6;

// The min_epsilon the CLI and the server give the theory's multipliers (1 and 1). On the
// README's workloads at delta 0.01, theory mode held its guarantee at epsilon 0.1 (W1: 99.5% of
// 200 queries) and failed below (W1 97.5% at 0.03 and 86% at 0.01, W2 87% and W4 96% at 0.01),
// where sampling also read more than the exact fallback lets pass (W1 0.31 of A at 0.03).
inline constexpr double kTheoryMinEpsilon = 0.1;

// Before sampling, a query is predicted to read kSpreadFraction x share x
// min(1, topk_multiplier) of its panels per arm, with share = SpreadOfWeights(...).share: the
// search's cost is proportional to the variance of one importance sample and to its radius.
// Measured in theory mode, W1 to W5 of the README read 0.8 to 1.6 x share; half the lower end
// keeps the prediction below the real cost, so only the clear losers (evenly spread weights,
// such as dense Gaussian queries) skip sampling. The others are judged between rounds.
inline constexpr double kSpreadFraction = 0.5;

// The exact path answers a batch's queries together by blocked SGEMMs (see exact_softmax.cc):
// the first costs one pass over A, each further one about this fraction of n x d float32
// entries, until a meter has measured it (see SampleCostMeter::ExtraQueryShare). Measured with
// BM_ExactBatch against the bare SGEMV (BM_Products/sgemv) on the README's 2-core machine: 0.06
// to 0.13 per query for batches of 2 to 32 on a slow-memory stretch; faster memory makes a pass
// cheaper against the compute, hence 0.2. Compute-bound, so the same for half precision.
inline constexpr double kBatchedExactQueryCost = 0.2;

absl::Status ValidateAdaptiveOptions(const AdaptiveOptions& options);

// Adaptive top-k softmax (Baharav et al., NeurIPS 2024): each class is a bandit arm whose
// mean A_i . x is estimated from a shared, importance-sampled column order. Warm-up, top-k
// search by elimination, exact winners, and a two-round normaliser. With probability at least
// 1 - delta, the returned set is the true top-k and every returned probability is within a
// factor (1 +- epsilon) of the truth (when the multipliers are 1, or when calibrated).
//
// The search computes the best few warm-up estimates exactly and eliminates every other arm as
// soon as its upper confidence bound falls below the k-th best of those exact logits; an arm
// that is never eliminated is computed exactly too, and the winners are the k best exact arms.
//
// The sampled queries of a batch are sampled in groups (see SamplingGroupSize and
// AdaptiveOptions::max_sharing_loss); a group shares one column order drawn from the weights
// of all its queries. Arms are processed in chunks of rows; within a chunk each block of columns
// is read once for every query of the group that still needs it, and each query keeps its own
// arms, targets and stopping rules. The groups run on the process's worker threads (see
// ParallelFor): as many whole rounds of ParallelWidth() groups as the batch has run side by side,
// one a thread, and the rest one at a time, each over all the threads, chunks in parallel. (So
// no thread waits at the end of each of a sampler's phases for another: through the server, 32
// callers, W1 and W2 of the README ran 1.24x and 1.19x the queries/s of chunks in parallel only,
// medians of three alternated rounds.) Queries sent to the exact path (see
// AdaptiveOptions::sample_cost and SkipsSampling), before or during sampling, are answered
// together by the exact path; so are, whatever sample_cost, queries stricter than the options'
// min_epsilon or min_delta, and queries whose logits may be too large for the sampler's float
// estimates to resolve at their epsilon: temperature x (max_i |b_i| + |x| max_i |A_i|) > epsilon x
// 2^19 (on the OCR head, PAC success fell to 53% at temperature 1e6).
//
// The sweeps read the model's sampling copy (see Model): they estimate its logits, each within
// bias = temperature x |x| x Model::sampling_error_norm() of the weights'. So the search drops an
// arm once its upper bound is below the k-th best exact logit less the bias, and the normaliser
// aims at the epsilon' with (1 + epsilon') exp(bias) <= 1 + epsilon and (1 - epsilon')
// exp(-bias) >= 1 - epsilon; a query whose epsilon' would be below epsilon / 2 goes exact too.
// Thread-safe.
class AdaptiveSoftmax : public TopKSoftmax {
 public:
  static constexpr uint64_t kProbeEvery = 100;
  // With a meter, Run times the exact path in every batch that sampled (the meter charges its
  // fallbacks' share to sampling) and in the first and then one in kTimeExactEvery of the
  // others: a thread's CPU clock is a system call, and two a query cost W5's 0.15 ms exact
  // queries 1.5-2% (0.956x against 0.972x exact untimed, three alternated `bench` runs).
  static constexpr uint64_t kTimeExactEvery = 8;
  // The batch size PrimeMeter times: the mean batch of a server under 32 callers was 14-18.
  static constexpr size_t kPrimeBatch = 16;

  // With a meter (and options.sample_cost > 0), the exact fallback prices a sample at
  // meter->Cost() instead of options.sample_cost, and Run reports its timings to the meter. So
  // that the meter keeps seeing the sampler, Run then samples one in kProbeEvery of the queries
  // SkipsSampling sends to the exact path (each still ends exact or within the guarantee).
  // REQUIRES: ValidateAdaptiveOptions(options).ok().
  explicit AdaptiveSoftmax(std::shared_ptr<const Model> model, AdaptiveOptions options = {},
                           std::shared_ptr<SampleCostMeter> meter = nullptr)
      : model_(std::move(model)), options_(options), meter_(std::move(meter)) {}

  std::vector<TopKResult> Run(absl::Span<const Query> queries) const override;

  // Run's answers, and in log_partitions[q][l] the log partition queries[q] gets with
  // lognormal_correction corrections[l] in place of options().lognormal_correction. The
  // correction moves nothing but the partition function, so calibration scores several from one
  // sampling run. A query answered exactly gets its exact log partition for each; one stopped,
  // none. REQUIRES: as Run's; every correction in [0, 1].
  std::vector<TopKResult> RunWithCorrections(
      absl::Span<const Query> queries, absl::Span<const double> corrections,
      std::vector<std::vector<double>>& log_partitions) const;

  // With a meter, times SampleCostMeter::kWarmup exact passes over a placeholder query (after
  // one untimed), then as many batches of kPrimeBatch of them, and reports them to it. Otherwise
  // the exact path is timed only when queries skip sampling or fall back, and until it was timed
  // kWarmup times the meter prices samples at its initial cost: a server holding a calibrated
  // 50257 x 768 head sampled nearly every query of its first 5 s under load (mean fraction
  // 0.12-0.14, against 0.96 once settled). For a server to call at load; takes about
  // 1 + kWarmup x (2 + (kPrimeBatch - 1) x kBatchedExactQueryCost) exact queries' time.
  void PrimeMeter() const;
  const Model& model() const override { return *model_; }
  const AdaptiveOptions& options() const { return options_; }

  // Which queries of `batch` Run sends to the exact path before any sampling: those stricter
  // than the multipliers hold at and those whose logits floats cannot resolve (see above),
  // whatever sample_cost. Then, unless sample_cost is 0, a query's sampling is priced at
  // sample_cost x its predicted entries (see kSpreadFraction), and the exact path's batch at one
  // pass plus ExtraExactQueryShare() of one per further query: the queries whose sampling costs
  // more than a further exact query go when others must, and otherwise when all of them together
  // cost more than an exact batch of them. With a meter, a predicted entry is priced at
  // meter->CostOfPredicted(). REQUIRES: ValidateQuery(q).ok() for every q in batch.
  std::vector<bool> SkipsSampling(absl::Span<const Query> batch) const {
    return Plan(batch).skips;
  }

  // The price of a sampled entry the exact fallback uses during sampling now: the meter's, else
  // options().sample_cost.
  double SampleCost() const;

  // What SkipsSampling prices each query after the first of an exact batch at, as a share of an
  // exact pass: the meter's measure once it has one (see SampleCostMeter::ExtraQueryShare),
  // else kBatchedExactQueryCost x n x d float32 entries.
  double ExtraExactQueryShare() const;

  // How many of a batch's sampled queries Run samples together at most: the most whose sampling
  // state fits in options().sampling_memory_fraction x the model's weight bytes, and at least 1.
  size_t SamplingGroupSize() const;

 private:
  struct SamplingPlan {
    std::vector<bool> skips;
    std::vector<bool> forced;       // skipped whatever sample_cost (see Run): never probed
    std::vector<double> predicted;  // entries each query is predicted to sample
  };
  SamplingPlan Plan(absl::Span<const Query> batch) const;
  // The exact path's costs, in float32 entries streamed (see sample_cost): a pass for a batch's
  // first query, `extra` (ExtraExactQueryShare() of a pass) for each further one. Read once per
  // Plan or Run, so that a batch is priced with one measure of the share.
  struct ExactCosts {
    double pass, extra;
    double Batch(size_t count) const {
      return count == 0 ? 0 : pass + extra * static_cast<double>(count - 1);
    }
  };
  ExactCosts ExactCostsNow() const;
  // The queries `sampled` (indices into batch) in the groups Run samples together, each with
  // one order: runs of SamplingGroupSize() consecutive queries, less those that sharing the
  // run's order would cost more than options().max_sharing_loss, which go alone.
  std::vector<std::vector<size_t>> SamplingGroups(absl::Span<const Query> batch,
                                                  absl::Span<const size_t> sampled) const;
  // The exact path's answers to `queries`. When `timed`, its core time (see BusyTimer) is
  // reported to the meter and returned in `seconds`; otherwise `seconds` is 0.
  // REQUIRES: meter_ != nullptr when timed.
  std::vector<TopKResult> RunExact(absl::Span<const Query> queries, bool timed,
                                   double& seconds) const;

  std::shared_ptr<const Model> model_;
  AdaptiveOptions options_;
  std::shared_ptr<SampleCostMeter> meter_;
  mutable std::atomic<uint64_t> skipped_{0};  // queries skipped with a meter, for the probes
  mutable std::atomic<uint64_t> exact_batches_{0};  // batches that sampled none, with a meter
};

}  // namespace adasoftmax

#endif  // ADASOFTMAX_CORE_ADAPTIVE_SOFTMAX_H_
