#include "core/adaptive_softmax.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <utility>

#include "absl/functional/function_ref.h"
#include "absl/random/random.h"
#include "absl/strings/str_format.h"
#include "core/arm_kernels.h"
#include "core/exact_softmax.h"
#include "core/panel_kernels.h"
#include "core/softmax_kernels.h"
#include "core/worker_pool.h"

namespace adasoftmax {
namespace {

static_assert(kBins == PanelOrder::kBins);
// Arms are pulled in chunks of kChunk rows so a block of columns stays in cache while every
// query of the batch uses it, and the chunk's bookkeeping stays in cache while its arms climb.
// A level's block of columns reaches the arms that need it in one of three ways, priced in
// streamed entries: a sweep of the chunk's slices of the block (1 per arm of the chunk and
// column, wanted or not), a gather of each arm's columns from its row (a cache line per column,
// latency-bound: kGatherCost), or a read of each arm's whole row (kRowCost per entry; the arm
// is then exact and done). Measured on calibrated W1 and W2, interleaved A/B runs.
constexpr double kGatherCost = 64;
constexpr double kRowCost = 1.5;
constexpr uint64_t kCacheLineBytes = 64;  // what a gathered entry reads
// The search computes this many arms beyond the k best warm-up estimates exactly before it
// starts: the better the k-th best of them, the sooner every other arm is eliminated. 32 rows
// are under 0.1% of the entries of a 50257-row head.
constexpr uint32_t kExtraReferences = 32;

// RankBest over the arms of all `lists`.
std::vector<uint32_t> BestOf(const std::vector<std::vector<uint32_t>>& lists, const float* values,
                             size_t count) {
  std::vector<uint32_t> arms;
  for (const std::vector<uint32_t>& list : lists) arms.insert(arms.end(), list.begin(), list.end());
  return RankBest(std::move(arms), values, count);
}

// The bytes of A in one layout: n x d x ElementBytes.
double WeightBytes(const Model& model) {
  return static_cast<double>(model.n()) * static_cast<double>(model.d()) *
         static_cast<double>(ElementBytes(model.dtype()));
}

// The exact path's cost in float32 entries streamed: WeightBytes / 4 (a half-precision pass
// streams twice as fast; the sampler's cost is mostly bookkeeping).
double ExactPassCost(const Model& model) { return WeightBytes(model) / sizeof(float); }

double Norm(absl::Span<const float> x) {
  double norm_sq = 0;
  for (float v : x) norm_sq += static_cast<double>(v) * v;
  return std::sqrt(norm_sq);
}

// How far the logits the sampler estimates, those of the model's sampling copy C, may be from
// the weights' own: temperature x |x| x max_i |C_i - A_i| (Cauchy-Schwarz). With float16 copies
// of W1 and W2 of the README, 0.013 and 0.029 at the median query (the largest real difference:
// 0.002).
double CopyBias(const Model& model, const Query& query) {
  return query.options.temperature * Norm(query.x) * model.sampling_error_norm();
}

// The epsilon the sampler reaches on the copy's logits so that the answer is within epsilon on
// the weights': a partition function within (1 +- e') of the copy's is within
// [(1 - e') exp(-bias), (1 + e') exp(bias)] of the weights'.
double SamplingEpsilon(const Query& query, double bias) {
  const double eps = query.options.epsilon;
  if (bias == 0) return eps;  // an exact copy: no rounding of epsilon either
  return std::min((1 + eps) * std::exp(-bias) - 1, 1 - (1 - eps) * std::exp(bias));
}

// Whether the sampler's estimates resolve a query's logits well enough for its epsilon. A float
// holds about 24 bits, and an estimate sums many of them: a query is sampled only while
// temperature x (max_i |b_i| + |x| max_i |A_i|), which bounds its logits, is at most epsilon x
// 2^19 (where floats are epsilon / 16 apart). Past that the guarantee failed: on the OCR head
// at epsilon 0.3, PAC success (`bench`, 500 queries) was 99.8% at temperature 1e4, 53% at 1e6,
// 8% at 1e7. And only while the sampling copy's bias leaves the sampler half of epsilon.
bool EstimatesResolve(const Model& model, const Query& query) {
  const double bound =
      query.options.temperature * (model.max_abs_bias() + Norm(query.x) * model.max_row_norm());
  return bound <= query.options.epsilon * (1 << 19) &&
         SamplingEpsilon(query, CopyBias(model, query)) >= query.options.epsilon / 2;
}

// Whether the multipliers hold at the query's epsilon and delta (see AdaptiveOptions).
bool WithinGuarantee(const AdaptiveOptions& options, const Query& query) {
  return query.options.epsilon >= options.min_epsilon && query.options.delta >= options.min_delta;
}

uint64_t FreshSeed() {
  thread_local absl::BitGen gen;
  return absl::Uniform<uint64_t>(gen);
}

// What one query read: entries sampled and bytes touched (see TopKResult). Summed per chunk
// and added to the query's state once, so that the parallel chunks rarely contend for it.
struct Reads {
  uint64_t samples = 0;
  uint64_t bytes = 0;
};

// Sampling state of one query of a batch. Arm i has read the panels of prefix(level[i]); the
// sums of each chunk of arms (see arm_kernels.h) start at sums[chunk * kChunkSums]; arm i's
// sums of bin b are valid once b < bins_in_prefix(level[i]) (they are set, not cleared, when
// the arm reaches the bin). estimate[i] and variance[i] are derived from them whenever level[i]
// changes, so that the passes over all arms read 8 bytes per arm.
struct QueryState {
  static constexpr size_t kChunkSums = 2 * kBins * kChunk;

  const Query* query = nullptr;
  double beta = 1;
  double copy_bias = 0;   // CopyBias
  double epsilon = 0;     // SamplingEpsilon
  double delta_half = 0;  // delta' = delta / 2
  std::vector<uint8_t> level;
  std::vector<float> sums;
  std::vector<float> estimate;           // of the logit beta * (A_i . x + b_i)
  std::vector<float> variance;           // of estimate[i]; infinite before the first pull
  std::vector<uint64_t> entries_prefix;  // entries of a row in the panels of prefix(L) that
                                         // this query reads, per level
  std::vector<float> ordered_x;          // x's slices in the order's panel sequence
  struct ExactArm {
    uint32_t arm;
    double logit;
  };
  std::vector<std::vector<ExactArm>> exact_arms;  // per chunk, its arms at kExactLevel
  double radius_scale = 0;  // confidence radius = sqrt(radius_scale * variance)
  // Per arm: HalfExpOfLowerBounds' gamma, then in place SetNormalizerTargets' variance targets
  // of the normaliser, then PartitionSums' corrected estimates.
  std::vector<float> target;
  // Per chunk, the parts of reductions over all arms (see KeepCandidates).
  std::vector<std::vector<uint32_t>> best_arms;
  struct ChunkSums {
    float max;
    double sum;
    double sum_sq;
  };
  std::vector<ChunkSums> chunk_sums;  // HalfExpOfLowerBounds', then PartitionSums'
  // The largest of the chunks' maxima: the shift their sums are rescaled to when added.
  double CommonShift() const {
    double shift = std::numeric_limits<float>::lowest();
    for (const ChunkSums& c : chunk_sums) shift = std::max<double>(shift, c.max);
    return shift;
  }
  // The log of the chunks' sums added: PartitionSums' log partition.
  double LogOfSums() const {
    const double shift = CommonShift();
    double sum = 0;
    for (const ChunkSums& c : chunk_sums) sum += c.sum * std::exp(c.max - shift);
    return shift + std::log(sum);
  }
  // The bytes of the state's per-arm vectors for n arms: sums (a whole kChunk per chunk), then
  // level; estimate, variance and target.
  static size_t Bytes(size_t n) {
    const size_t chunks = (n + kChunk - 1) / kChunk;
    return chunks * kChunkSums * sizeof(float) + n * (sizeof(uint8_t) + 3 * sizeof(float));
  }
  bool stopped = false;   // Query::stop fired: no further work, an empty result
  bool fallback = false;  // handed to the exact path: no further sampling
  uint64_t samples = 0;        // updated through Add while chunks run in parallel
  uint64_t bytes_touched = 0;  // the same; see TopKResult::bytes_touched
  std::vector<ExactArm> winners;

  void Add(const Reads& reads) {
    std::atomic_ref<uint64_t>(samples).fetch_add(reads.samples, std::memory_order_relaxed);
    std::atomic_ref<uint64_t>(bytes_touched).fetch_add(reads.bytes, std::memory_order_relaxed);
  }
};

// One query's request to PullUntil: its arms are pulled while the demand wants them (with
// demand.target indexed by arm). A search arm that reaches the last level still wanted is
// computed exactly.
struct PullJob {
  QueryState* state;
  Demand demand;
};

class BatchSampler {
 public:
  // Run also computes the log partition each of `corrections` gives in place of
  // options.lognormal_correction (see log_partitions()). With `parallel`, chunks of arms run on
  // the process's worker threads (see ParallelFor); otherwise all on the calling thread.
  BatchSampler(const Model& model, const PanelOrder& order, const AdaptiveOptions& options,
               absl::Span<const double> corrections, bool parallel)
      : model_(model),
        order_(order),
        options_(options),
        corrections_(corrections),
        n_(model.n()),
        d_(model.d()),
        parallel_(parallel) {}

  // Results of queries that fell back to the exact path are empty; see fallbacks().
  std::vector<TopKResult> Run(absl::Span<const Query> queries);
  // Indices, in the last Run's batch, of the queries that fell back.
  const std::vector<size_t>& fallbacks() const { return fallbacks_; }
  // Per query of the last Run's batch, the log partition with each of the corrections, from
  // the same samples; empty for a query not answered (stopped or fallen back).
  const std::vector<std::vector<double>>& log_partitions() const { return log_partitions_; }

 private:
  // Sets up the query's state; its arms' state (unless it fell back) is left to InitArms, which
  // the first pull runs on each chunk.
  void InitState(const Query& query, QueryState& s);
  // The estimates of the empty prefix for arms [begin, end), in loops that vectorise.
  void InitArms(QueryState& s, uint32_t begin, uint32_t end) const;
  using ChunkFunction = absl::FunctionRef<void(size_t chunk, uint32_t begin, uint32_t end)>;
  // Calls body(chunk, begin, end) for every chunk of arms [begin, end), chunks in parallel
  // when the model is large enough to pay for it.
  void ForEachChunk(ChunkFunction body) const;
  size_t Chunks() const { return (n_ + kChunk - 1) / kChunk; }
  // Polls Query::stop; true once the query was stopped.
  static bool Stopped(QueryState& s) {
    if (!s.stopped && s.query->stop && s.query->stop()) s.stopped = true;
    return s.stopped;
  }
  // Per-thread scratch of PullChunk.
  struct Scratch {
    std::vector<uint8_t> want;  // [job * kChunk + r]
    std::vector<uint8_t> mask = std::vector<uint8_t>(kChunk);
    std::vector<uint8_t> jump = std::vector<uint8_t>(kChunk);
    std::vector<uint32_t> arms;
    std::vector<float> sweep = std::vector<float>(2 * kChunk);  // SweepColumns' scratch
    std::vector<Reads> reads;                                   // per job
    std::vector<const void*> columns;  // PullDense's, with their entries of x
    std::vector<float> xs;
  };
  static void NoChunkWork(size_t, uint32_t, uint32_t) {}
  // Work on a chunk done by the thread that pulls it, while the chunk's state is in its cache.
  struct ChunkHooks {
    ChunkFunction before = NoChunkWork;  // just before the chunk's pull
    ChunkFunction then = NoChunkWork;    // just after it
  };
  // Runs the jobs on every chunk of arms, chunks in parallel, each between its hooks.
  void PullUntil(absl::Span<const PullJob> jobs, ChunkHooks hooks);
  void PullChunk(absl::Span<const PullJob> jobs, uint32_t chunk_begin, uint32_t chunk_end,
                 Scratch& scratch);
  // Whether sweeping the chunk's `width` arms over `panels` panels is the cheapest way for
  // `count` of them to read those panels (see kGatherCost).
  bool SweepIsCheapest(double panels, size_t count, uint32_t width) const {
    return width * panels <= count * std::min(panels * kGatherCost, d_ * kRowCost);
  }
  // Pulls the `count` masked arms from level `from` to level `to` by sweeping the chunk's slices
  // of the panels in between; adds what that read to `reads`.
  void PullDense(QueryState& s, int from, int to, uint32_t chunk_begin, uint32_t chunk_end,
                 const uint8_t* mask, size_t count, Reads& reads, Scratch& scratch);
  // The same from `level` to the next by gathering each of the arms' columns from its row.
  // Updates want[] of the arms. `arms` are relative to the chunk.
  void PullRows(const PullJob& job, int level, uint32_t chunk_begin,
                absl::Span<const uint32_t> arms, uint8_t* want, Reads& reads);
  // Search arms wanted at the last level are computed exactly (and no longer wanted). `arms`
  // is scratch.
  void ExactAtLastLevel(const PullJob& job, uint32_t chunk_begin, uint32_t chunk_end,
                        uint8_t* want, std::vector<uint32_t>& arms, Reads& reads);
  LevelWeights Weights(const QueryState& s, int level) const {
    return {order_.inverse_inclusion(level), order_.variance_factor(level),
            static_cast<float>(s.beta), order_.bins_in_prefix(level), static_cast<uint8_t>(level)};
  }
  const float* ChunkBias(uint32_t chunk_begin) const {
    return model_.has_bias() ? model_.bias().data() + chunk_begin : nullptr;
  }
  // Sets s.fallback when sampling the `predicted` entries ahead would cost more than the exact
  // path (never when sample_cost is 0). Returns s.fallback.
  bool FallBack(QueryState& s, double predicted) const;
  // Per job and chunk, [job * Chunks() + chunk], the entries the job's arms in the chunk are
  // predicted to read (see PredictedEntries in arm_kernels.h). Empty when sample_cost is 0: no
  // query falls back.
  std::vector<double> NewPredictions(size_t jobs) const {
    return std::vector<double>(options_.sample_cost > 0 ? jobs * Chunks() : 0);
  }
  // Fills the chunk's part of `predicted` (from NewPredictions(jobs.size())), if any.
  void Predict(absl::Span<const PullJob> jobs, size_t chunk, uint32_t begin, uint32_t end,
               std::vector<double>& predicted) const;
  // FallBack for every job with its predictions; removes the jobs whose queries fell back.
  void DropFallbacks(std::vector<PullJob>& jobs, const std::vector<double>& predicted) const;
  // The same, predicted in one pass over the chunks.
  void DropFallbacks(std::vector<PullJob>& jobs) const;
  // Reads the arms' rows whole and makes the arms exact; adds what that read to `reads`.
  // Concurrent calls must be for arms of different chunks.
  void ComputeExact(QueryState& s, absl::Span<const uint32_t> arms, Reads& reads);
  // Among the arms computed exactly, the k with the best logits (ties to the lower index), best
  // first. REQUIRES: at least k arms were computed exactly.
  static std::vector<QueryState::ExactArm> BestExact(const QueryState& s, uint32_t k) {
    std::vector<QueryState::ExactArm> arms;
    for (const auto& list : s.exact_arms) arms.insert(arms.end(), list.begin(), list.end());
    std::partial_sort(arms.begin(), arms.begin() + k, arms.end(), [](const auto& a, const auto& b) {
      return a.logit > b.logit || (a.logit == b.logit && a.arm < b.arm);
    });
    arms.resize(k);
    return arms;
  }
  // Reductions over all arms sum parts computed per chunk, each by the chunk's last pull of the
  // phase (see PullUntil). The references' candidates in the chunk: its best estimates.
  void KeepCandidates(QueryState& s, size_t chunk, uint32_t begin, uint32_t end) const;
  // The normaliser's (paper Algorithm 2, second round) half exponentials of the lower
  // confidence bounds of the chunk's arms, relative to the largest of the chunk, and their sums.
  void HalfExpOfLowerBounds(QueryState& s, size_t chunk, uint32_t begin, uint32_t end) const;
  // The normaliser's per-arm targets of each query, from its HalfExpOfLowerBounds; runs `then`
  // on each chunk once its targets are set.
  void SetNormalizerTargets(absl::Span<QueryState* const> states, ChunkFunction then);
  // The largest of arms [begin, end)'s estimates, each less correction x its variance / 2, and
  // the sum of their exponentials below it (sum_sq unset). s.target is its scratch.
  QueryState::ChunkSums PartitionSums(QueryState& s, double correction, uint32_t begin,
                                      uint32_t end) const;
  // The result of each query of the batch, in order, from its PartitionSums when it was
  // answered (neither stopped nor sent to the exact path).
  std::vector<TopKResult> Finish(absl::Span<QueryState> states);

  const Model& model_;
  const PanelOrder& order_;
  const AdaptiveOptions& options_;
  const absl::Span<const double> corrections_;
  const size_t n_;
  const size_t d_;
  const bool parallel_;
  std::vector<size_t> fallbacks_;
  std::vector<std::vector<double>> log_partitions_;
};

void BatchSampler::InitState(const Query& query, QueryState& s) {
  s.query = &query;
  s.beta = query.options.temperature;
  s.copy_bias = CopyBias(model_, query);
  s.epsilon = SamplingEpsilon(query, s.copy_bias);
  s.delta_half = query.options.delta / 2;
  s.winners.clear();
  s.stopped = false;
  s.fallback = false;
  s.samples = 0;
  s.bytes_touched = 0;
  s.entries_prefix.resize(order_.levels());
  s.ordered_x.assign(order_.size() * kLanes, 0.0f);
  uint64_t entries = 0;
  size_t t = 0;
  for (int level = 0; level < order_.levels(); ++level) {
    for (; t < order_.prefix(level); ++t) {
      const size_t begin = order_.panel(t) * kLanes, end = std::min(d_, begin + kLanes);
      bool read = false;
      for (size_t j = begin; j < end; ++j) {
        s.ordered_x[t * kLanes + j - begin] = query.x[j];
        read |= query.x[j] != 0;
      }
      if (read) entries += end - begin;
    }
    s.entries_prefix[level] = entries;
  }
  // Before any sampling: level 1 alone (every arm, its entries) may cost more than the exact
  // path. Then no per-arm state is needed.
  const int first = std::min(1, order_.last_level());
  if (FallBack(s, static_cast<double>(n_) * s.entries_prefix[first])) return;

  s.level.resize(n_);
  s.sums.resize(Chunks() * QueryState::kChunkSums);  // set as bins are reached
  s.estimate.resize(n_);
  s.variance.resize(n_);
  s.target.resize(n_);
  s.exact_arms.resize(Chunks());
  for (std::vector<QueryState::ExactArm>& arms : s.exact_arms) arms.clear();
  s.best_arms.resize(Chunks());
  s.chunk_sums.resize(Chunks());
  // log(6 n log d / delta'): a union bound over arms and elimination tests.
  s.radius_scale = 2 * options_.topk_multiplier *
                   std::log(6.0 * n_ * std::max(1.0, std::log(double(d_))) / s.delta_half);
}

void BatchSampler::InitArms(QueryState& s, uint32_t begin, uint32_t end) const {
  std::fill(&s.level[begin], &s.level[end], 0);
  const float unknown = order_.last_level() > 0 ? std::numeric_limits<float>::infinity() : 0.0f;
  std::fill(&s.variance[begin], &s.variance[end], unknown);
  if (model_.has_bias()) {
    const float* bias = model_.bias().data();
    for (size_t i = begin; i < end; ++i) s.estimate[i] = static_cast<float>(s.beta * bias[i]);
  } else {
    std::fill(&s.estimate[begin], &s.estimate[end], 0.0f);
  }
}

void BatchSampler::ForEachChunk(ChunkFunction body) const {
  auto run = [&](size_t chunk) {
    const uint32_t begin = static_cast<uint32_t>(chunk * kChunk);
    body(chunk, begin, static_cast<uint32_t>(std::min<size_t>(n_, begin + kChunk)));
  };
  if (!parallel_) {
    for (size_t chunk = 0; chunk < Chunks(); ++chunk) run(chunk);
  } else {
    ParallelFor(Chunks(), run);
  }
}

// Chunk by chunk, so a block of columns is read once for every query that needs it and each
// arm's state stays in cache while the arm climbs the levels.
void BatchSampler::PullUntil(absl::Span<const PullJob> jobs, ChunkHooks hooks) {
  if (jobs.empty()) return;
  ForEachChunk([&](size_t chunk, uint32_t begin, uint32_t end) {
    thread_local Scratch scratch;
    hooks.before(chunk, begin, end);
    PullChunk(jobs, begin, end, scratch);
    hooks.then(chunk, begin, end);
  });
}

void BatchSampler::PullChunk(absl::Span<const PullJob> jobs, uint32_t chunk_begin,
                             uint32_t chunk_end, Scratch& scratch) {
  const uint32_t width = chunk_end - chunk_begin;
  const int top = order_.last_level();
  scratch.want.resize(std::max(scratch.want.size(), jobs.size() * kChunk));
  auto want_of = [&](size_t q) { return scratch.want.data() + q * kChunk; };
  auto update_wants = [&](size_t q) {
    const PullJob& job = jobs[q];
    const QueryState& s = *job.state;
    return UpdateWants(job.demand.From(chunk_begin), &s.level[chunk_begin],
                       &s.estimate[chunk_begin], &s.variance[chunk_begin], width, want_of(q));
  };
  std::vector<Reads>& reads = scratch.reads;  // per job
  reads.assign(jobs.size(), Reads{});
  int lowest = top;
  for (size_t q = 0; q < jobs.size(); ++q) {
    ExactAtLastLevel(jobs[q], chunk_begin, chunk_end, want_of(q), scratch.arms, reads[q]);
    lowest = std::min<int>(lowest, update_wants(q));
  }
  for (int level = lowest; level < top; ++level) {
    for (size_t q = 0; q < jobs.size(); ++q) {
      QueryState& s = *jobs[q].state;
      const Demand& demand = jobs[q].demand;
      size_t count =
          SelectLevel(want_of(q), &s.level[chunk_begin], level, width, scratch.mask.data());
      if (count == 0) continue;
      if (!demand.search && demand.target == nullptr && level + 1 < demand.max_level) {
        // The warm-up's arms that would miss its target even at max_level go there in one sweep
        // when that is the cheapest way: one re-estimate instead of one per level.
        const int to = demand.max_level;
        const size_t jumps = SelectJumps(
            scratch.mask.data(), &s.variance[chunk_begin],
            static_cast<float>(s.entries_prefix[level]) / static_cast<float>(s.entries_prefix[to]),
            demand.uniform_target, width, scratch.jump.data());
        if (jumps > 0 &&
            SweepIsCheapest(static_cast<double>(order_.prefix(to) - order_.prefix(level)), jumps,
                            width)) {
          PullDense(s, level, to, chunk_begin, chunk_end, scratch.jump.data(), jumps, reads[q],
                    scratch);
          update_wants(q);
          count = SelectLevel(want_of(q), &s.level[chunk_begin], level, width, scratch.mask.data());
          if (count == 0) continue;
        }
      }
      // The cheapest way to the next level (see kGatherCost).
      const double block = static_cast<double>(order_.prefix(level + 1) - order_.prefix(level));
      if (SweepIsCheapest(block, count, width)) {
        PullDense(s, level, level + 1, chunk_begin, chunk_end, scratch.mask.data(), count,
                  reads[q], scratch);
        update_wants(q);
      } else {
        std::vector<uint32_t>& arms = scratch.arms;
        arms.clear();
        for (uint32_t r = 0; r < width; ++r) {
          if (scratch.mask[r]) arms.push_back(r);
        }
        if (block * kGatherCost < d_ * kRowCost) {
          PullRows(jobs[q], level, chunk_begin, arms, want_of(q), reads[q]);
        } else {  // whole rows: the arms are exact and done
          for (uint32_t& r : arms) {
            want_of(q)[r] = false;
            r += chunk_begin;
          }
          ComputeExact(s, arms, reads[q]);
        }
      }
      if (level + 1 == top) {
        ExactAtLastLevel(jobs[q], chunk_begin, chunk_end, want_of(q), scratch.arms, reads[q]);
      }
    }
  }
  for (size_t q = 0; q < jobs.size(); ++q) jobs[q].state->Add(reads[q]);
}

void BatchSampler::ExactAtLastLevel(const PullJob& job, uint32_t chunk_begin, uint32_t chunk_end,
                                    uint8_t* want, std::vector<uint32_t>& arms, Reads& reads) {
  if (!job.demand.search) return;
  QueryState& s = *job.state;
  const int top = order_.last_level();
  arms.clear();
  for (uint32_t i = chunk_begin; i < chunk_end; ++i) {
    if (s.level[i] != top) continue;
    if (Wants(job.demand, i, s.level[i], s.estimate[i], s.variance[i])) arms.push_back(i);
    want[i - chunk_begin] = false;
  }
  ComputeExact(s, arms, reads);
}

// Sweeps the chunk's slices of the levels' panels into the masked arms' sums, one sweep per bin
// over all its panels: the fewer and longer the sweeps, the fewer passes over the sums.
void BatchSampler::PullDense(QueryState& s, int from, int to, uint32_t chunk_begin,
                             uint32_t chunk_end, const uint8_t* mask, size_t count, Reads& reads,
                             Scratch& scratch) {
  static_assert(kLanes == 1, "x is gathered one entry a panel");
  const uint32_t width = chunk_end - chunk_begin;
  reads.samples += count * (s.entries_prefix[to] - s.entries_prefix[from]);
  reads.bytes +=
      (order_.prefix(to) - order_.prefix(from)) * width * ElementBytes(model_.sampling_dtype());
  float* sums = &s.sums[chunk_begin / kChunk * QueryState::kChunkSums];
  std::vector<const void*>& columns = scratch.columns;
  std::vector<float>& xs = scratch.xs;
  for (int bin = 0; bin < order_.bins_in_prefix(to); ++bin) {
    columns.clear();
    xs.clear();
    for (int level = from; level < to; ++level) {
      for (const PanelOrder::Run& run : order_.runs(level)) {
        if (run.bin != bin) continue;
        for (size_t t = run.begin; t < run.end; ++t) {
          columns.push_back(model_.panel(order_.panel(t), chunk_begin));
          xs.push_back(s.ordered_x[t]);
        }
      }
    }
    if (columns.empty()) continue;
    // The arms' sums of a bin are set where the bin is new to their level `from`.
    SweepColumns(model_.sampling_dtype(), columns.data(), xs.data(), columns.size(), width, mask,
                 bin >= order_.bins_in_prefix(from), &sums[bin * kChunk],
                 &sums[(kBins + bin) * kChunk], scratch.sweep.data());
  }
  Advance(mask, sums, Weights(s, to), ChunkBias(chunk_begin), width, &s.level[chunk_begin],
          &s.estimate[chunk_begin], &s.variance[chunk_begin]);
}

// Gathered columns are scattered, but within one row they share DRAM pages and prefetch
// streams, unlike single column-panel slices.
void BatchSampler::PullRows(const PullJob& job, int level, uint32_t chunk_begin,
                            absl::Span<const uint32_t> arms, uint8_t* want, Reads& reads) {
  QueryState& s = *job.state;
  const size_t block_begin = order_.prefix(level);
  const size_t block_end = order_.prefix(level + 1);
  reads.samples += arms.size() * (s.entries_prefix[level + 1] - s.entries_prefix[level]);
  reads.bytes += (block_end - block_begin) * arms.size() * kCacheLineBytes;
  float* sums = &s.sums[chunk_begin / kChunk * QueryState::kChunkSums];
  const LevelWeights weights = Weights(s, level + 1);
  const float* bias = ChunkBias(chunk_begin);
  VisitDType(model_.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* rows = static_cast<const T*>(model_.row(chunk_begin));
    // Gathers are latency-bound: request the columns of an arm a few arms ahead.
    constexpr size_t kPrefetchDistance = 4;
    auto prefetch = [&](uint32_t r) {
      for (size_t t = block_begin; t < block_end; ++t) {
        __builtin_prefetch(rows + size_t{r} * d_ + order_.panel(t) * kLanes);
      }
    };
    for (size_t k = 0; k < std::min(arms.size(), kPrefetchDistance); ++k) prefetch(arms[k]);
    for (size_t k = 0; k < arms.size(); ++k) {
      const uint32_t r = arms[k];
      if (k + kPrefetchDistance < arms.size()) prefetch(arms[k + kPrefetchDistance]);
      for (const PanelOrder::Run& run : order_.runs(level)) {
        const SumAndSquares v = GatherArm(rows, kLanes, order_.panel_data() + run.begin,
                                          &s.ordered_x[run.begin * kLanes], run.end - run.begin,
                                          size_t{r} * d_);
        float& sum = sums[run.bin * kChunk + r];
        float& sum_sq = sums[(kBins + run.bin) * kChunk + r];
        const bool first = run.bin >= order_.bins_in_prefix(level);
        sum = first ? v.sum : sum + v.sum;
        sum_sq = first ? v.sum_sq : sum_sq + v.sum_sq;
      }
      const uint32_t i = chunk_begin + r;
      s.level[i] = static_cast<uint8_t>(level + 1);
      EstimateArm(sums, r, weights, bias != nullptr ? bias[r] : 0.0f, s.estimate[i],
                  s.variance[i]);
      want[r] = Wants(job.demand, i, s.level[i], s.estimate[i], s.variance[i]);
    }
  });
}

bool BatchSampler::FallBack(QueryState& s, double predicted) const {
  if (options_.sample_cost > 0 && options_.sample_cost * predicted > ExactPassCost(model_)) {
    s.fallback = true;
  }
  return s.fallback;
}

void BatchSampler::Predict(absl::Span<const PullJob> jobs, size_t chunk, uint32_t begin,
                           uint32_t end, std::vector<double>& predicted) const {
  if (predicted.empty()) return;
  for (size_t j = 0; j < jobs.size(); ++j) {
    const QueryState& s = *jobs[j].state;
    predicted[j * Chunks() + chunk] =
        PredictedEntries(jobs[j].demand.From(begin), &s.level[begin], &s.estimate[begin],
                         &s.variance[begin], s.entries_prefix.data(), end - begin);
  }
}

void BatchSampler::DropFallbacks(std::vector<PullJob>& jobs) const {
  std::vector<double> predicted = NewPredictions(jobs.size());
  if (predicted.empty() || jobs.empty()) return;
  ForEachChunk([&](size_t chunk, uint32_t begin, uint32_t end) {
    Predict(jobs, chunk, begin, end, predicted);
  });
  DropFallbacks(jobs, predicted);
}

void BatchSampler::DropFallbacks(std::vector<PullJob>& jobs,
                                 const std::vector<double>& predicted) const {
  if (predicted.empty()) return;
  size_t kept = 0;
  for (size_t j = 0; j < jobs.size(); ++j) {
    double sum = 0;
    for (size_t chunk = 0; chunk < Chunks(); ++chunk) sum += predicted[j * Chunks() + chunk];
    if (!FallBack(*jobs[j].state, sum)) jobs[kept++] = jobs[j];
  }
  jobs.resize(kept);
}

void BatchSampler::ComputeExact(QueryState& s, absl::Span<const uint32_t> arms, Reads& reads) {
  constexpr size_t kGroup = 32;  // rows a RowDots call reads
  const void* rows[kGroup];
  double dots[kGroup];
  for (size_t begin = 0; begin < arms.size(); begin += kGroup) {
    const size_t count = std::min(kGroup, arms.size() - begin);
    for (size_t k = 0; k < count; ++k) rows[k] = model_.row(arms[begin + k]);
    RowDots(model_.dtype(), rows, count, s.query->x.data(), d_, dots);
    for (size_t k = 0; k < count; ++k) {
      const uint32_t i = arms[begin + k];
      reads.samples += d_ - s.entries_prefix[s.level[i]];
      reads.bytes += d_ * ElementBytes(model_.dtype());
      const double logit = s.beta * (dots[k] + (model_.has_bias() ? model_.bias()[i] : 0.0));
      s.level[i] = kExactLevel;
      s.exact_arms[i / kChunk].push_back({i, logit});
      s.estimate[i] = static_cast<float>(logit);
      s.variance[i] = 0;
    }
  }
}

void BatchSampler::KeepCandidates(QueryState& s, size_t chunk, uint32_t begin, uint32_t end) const {
  s.best_arms[chunk] =
      BestArms(s.estimate.data(), begin, end, s.query->options.k + kExtraReferences);
}

// low_i = est_i - C_i. alpha_i = exp(low_i) and gamma_i = sqrt(alpha_i) are both scaled by
// exp(-shift): the targets are invariant to that scale. Here the shift is the chunk's largest
// low_i, so that no chunk's exponentials underflow for the others'.
void BatchSampler::HalfExpOfLowerBounds(QueryState& s, size_t chunk, uint32_t begin,
                                        uint32_t end) const {
  const float scale =
      static_cast<float>(2 * options_.normalizer_multiplier * std::log(6.0 * n_ / s.delta_half));
  QueryState::ChunkSums& c = s.chunk_sums[chunk];
  c.max = LowerBounds(&s.estimate[begin], &s.variance[begin], scale, end - begin, &s.target[begin]);
  const HalfExpSums sums = HalfExp(&s.target[begin], end - begin, c.max);
  c.sum = sums.sum;
  c.sum_sq = sums.sum_sq;
}

// Paper Algorithm 2, second round: per-arm variance targets from the current estimates and
// their confidence radii. At the common shift, the largest of the chunks', chunk c's gamma_i
// are r_c = exp((max_c - shift) / 2) times its own: its targets take a / r_c and b / r_c^2.
void BatchSampler::SetNormalizerTargets(absl::Span<QueryState* const> states, ChunkFunction then) {
  struct Terms {
    double shift;
    double a, b;  // of NormalizerTargets, at the common scale
  };
  std::vector<Terms> terms(states.size());
  for (size_t q = 0; q < states.size(); ++q) {
    const QueryState& s = *states[q];
    Terms& t = terms[q];
    t.shift = s.CommonShift();
    double sum_gamma = 0, sum_alpha = 0;
    for (const QueryState::ChunkSums& c : s.chunk_sums) {
      sum_gamma += c.sum * std::exp((c.max - t.shift) / 2);
      sum_alpha += c.sum_sq * std::exp(c.max - t.shift);
    }
    const double eps = s.epsilon;
    const double log_arms = std::log(6.0 * n_ / s.delta_half);
    const double log_two = std::log(12.0 / s.delta_half);
    const double c1 = 16 * std::sqrt(2.0) * log_arms / eps * sum_gamma * sum_gamma / sum_alpha;
    const double c2 = 16 * log_two / (eps * eps);
    t.a = sum_gamma / (c1 * options_.normalizer_multiplier);
    t.b = sum_alpha / (c2 * options_.normalizer_multiplier);
  }
  ForEachChunk([&](size_t chunk, uint32_t begin, uint32_t end) {
    for (size_t q = 0; q < states.size(); ++q) {
      QueryState& s = *states[q];
      const double scale = std::exp((s.chunk_sums[chunk].max - terms[q].shift) / 2);
      NormalizerTargets(&s.target[begin], end - begin, terms[q].a / scale,
                        terms[q].b / (scale * scale), &s.target[begin]);
    }
    then(chunk, begin, end);
  });
}

QueryState::ChunkSums BatchSampler::PartitionSums(QueryState& s, double correction, uint32_t begin,
                                                  uint32_t end) const {
  const float* terms = &s.estimate[begin];  // of the sum of exponentials
  if (correction > 0) {
    const float half = static_cast<float>(correction / 2);
    for (uint32_t i = begin; i < end; ++i) s.target[i] = s.estimate[i] - half * s.variance[i];
    terms = &s.target[begin];
  }
  const float max = MaxOf(terms, end - begin);
  return {.max = max, .sum = SumExp(terms, end - begin, max), .sum_sq = 0};
}

std::vector<TopKResult> BatchSampler::Finish(absl::Span<QueryState> states) {
  std::vector<TopKResult> results(states.size());
  log_partitions_.assign(states.size(), {});
  for (size_t q = 0; q < states.size(); ++q) {
    QueryState& s = states[q];
    TopKResult& result = results[q];
    result.samples = s.samples;
    result.bytes_touched = s.bytes_touched;
    result.sample_fraction = static_cast<double>(s.samples) / (static_cast<double>(n_) * d_);
    if (s.stopped || s.fallback) continue;  // an empty result
    result.log_partition = s.LogOfSums();
    for (double correction : corrections_) {
      ForEachChunk([&](size_t chunk, uint32_t begin, uint32_t end) {
        s.chunk_sums[chunk] = PartitionSums(s, correction, begin, end);
      });
      log_partitions_[q].push_back(s.LogOfSums());
    }
    for (const QueryState::ExactArm& winner : s.winners) {
      result.indices.push_back(winner.arm);
      result.logits.push_back(winner.logit);
      result.probabilities.push_back(std::exp(winner.logit - result.log_partition));
    }
    result.exact = s.samples >= static_cast<uint64_t>(n_) * d_;
  }
  return results;
}

std::vector<TopKResult> BatchSampler::Run(absl::Span<const Query> queries) {
  // Per-thread states keep their buffers between calls: no page faults on the hot path.
  thread_local std::vector<QueryState> pool;
  if (pool.size() < queries.size()) pool.resize(queries.size());
  const absl::Span<QueryState> states(pool.data(), queries.size());
  for (size_t q = 0; q < queries.size(); ++q) InitState(queries[q], states[q]);
  auto live_states = [&] {
    std::vector<QueryState*> out;
    for (QueryState& s : states) {
      if (!s.fallback && !Stopped(s)) out.push_back(&s);
    }
    return out;
  };

  // 1. Warm-up: every arm to variance V0 = 1 / (17 ln(6 n / delta')), within the budget; first
  // to level 1, then the rest, unless the variances at level 1 predict that the rest costs more
  // than the exact path.
  const int budget = order_.LevelForFraction(options_.warmup_fraction);
  std::vector<PullJob> first, rest;
  for (QueryState* s : live_states()) {
    const double v0 = 1.0 / (17.0 * std::log(6.0 * n_ / s->delta_half));
    const float target = static_cast<float>(v0 / options_.normalizer_multiplier);
    first.push_back({s, {.uniform_target = target, .max_level = std::min(1, budget)}});
    rest.push_back({s, {.uniform_target = target, .max_level = budget}});
  }
  std::vector<double> predicted = NewPredictions(rest.size());
  auto init_arms = [&](size_t, uint32_t begin, uint32_t end) {
    for (const PullJob& job : first) InitArms(*job.state, begin, end);
  };
  auto predict_rest = [&](size_t chunk, uint32_t begin, uint32_t end) {
    Predict(rest, chunk, begin, end, predicted);
  };
  PullUntil(first, {.before = init_arms, .then = predict_rest});
  DropFallbacks(rest, predicted);
  std::erase_if(rest, [&](const PullJob& job) { return Stopped(*job.state); });
  auto keep_candidates = [&](size_t chunk, uint32_t begin, uint32_t end) {
    for (const PullJob& job : rest) KeepCandidates(*job.state, chunk, begin, end);
  };
  PullUntil(rest, {.then = keep_candidates});

  // 2. Top-k search by elimination against exact references: the k + kExtraReferences arms
  // with the best estimates are computed exactly (the winners usually are among them), then
  // every arm is pulled until its upper confidence bound falls below the k-th best of them, or
  // computed exactly. The winners are the k best exact arms.
  std::vector<PullJob> jobs;
  for (QueryState* state : live_states()) {
    QueryState& s = *state;
    const uint32_t k = s.query->options.k;
    const std::vector<uint32_t> references =
        BestOf(s.best_arms, s.estimate.data(), k + kExtraReferences);
    std::vector<uint32_t> unread;  // references not already read whole
    for (uint32_t i : references) {
      if (s.level[i] != kExactLevel) unread.push_back(i);
    }
    Reads reads;
    ComputeExact(s, unread, reads);
    s.Add(reads);
    // An arm whose upper confidence bound falls below the k-th best exact logit is out: on
    // the copy's logits, below that less the copy's bias.
    const double threshold = BestExact(s, k).back().logit - s.copy_bias;
    jobs.push_back({&s,
                    {.search = true,
                     .threshold = static_cast<float>(threshold),
                     .radius_scale = static_cast<float>(s.radius_scale),
                     .max_level = order_.last_level()}});
  }
  DropFallbacks(jobs);
  auto half_exps = [&](size_t chunk, uint32_t begin, uint32_t end) {
    for (const PullJob& job : jobs) HalfExpOfLowerBounds(*job.state, chunk, begin, end);
  };
  PullUntil(jobs, {.then = half_exps});
  for (const PullJob& job : jobs) {
    QueryState& s = *job.state;
    s.winners = BestExact(s, s.query->options.k);
  }

  // 3. Normaliser: pull every arm to its own target.
  const std::vector<QueryState*> normalising = live_states();
  jobs.clear();
  for (QueryState* s : normalising) {
    jobs.push_back({s, {.target = s->target.data(), .max_level = order_.last_level()}});
  }
  predicted = NewPredictions(jobs.size());
  SetNormalizerTargets(normalising, [&](size_t chunk, uint32_t begin, uint32_t end) {
    Predict(jobs, chunk, begin, end, predicted);
  });
  DropFallbacks(jobs, predicted);
  auto partition_sums = [&](size_t chunk, uint32_t begin, uint32_t end) {
    for (const PullJob& job : jobs) {
      QueryState& s = *job.state;
      s.chunk_sums[chunk] = PartitionSums(s, options_.lognormal_correction, begin, end);
    }
  };
  PullUntil(jobs, {.then = partition_sums});

  fallbacks_.clear();
  for (size_t q = 0; q < states.size(); ++q) {
    if (states[q].fallback && !Stopped(states[q])) fallbacks_.push_back(q);
  }
  return Finish(states);
}

}  // namespace

absl::Status ValidateAdaptiveOptions(const AdaptiveOptions& options) {
  auto positive = [](double v) { return std::isfinite(v) && v > 0; };
  if (!positive(options.topk_multiplier)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "topk_multiplier: is %g but must be finite and > 0", options.topk_multiplier));
  }
  if (!positive(options.normalizer_multiplier)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "normalizer_multiplier: is %g but must be finite and > 0", options.normalizer_multiplier));
  }
  if (!(options.lognormal_correction >= 0 && options.lognormal_correction <= 1)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "lognormal_correction: is %g but must be in [0, 1]", options.lognormal_correction));
  }
  if (!(options.max_sharing_loss >= 1)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("max_sharing_loss: is %g but must be >= 1", options.max_sharing_loss));
  }
  if (!(options.warmup_fraction > 0 && options.warmup_fraction <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("warmup_fraction: is %g but must be in (0, 1]", options.warmup_fraction));
  }
  const std::pair<const char*, double> non_negative[] = {
      {"sample_cost", options.sample_cost},
      {"sampling_memory_fraction", options.sampling_memory_fraction},
      {"min_epsilon", options.min_epsilon},
      {"min_delta", options.min_delta}};
  for (const auto& [name, value] : non_negative) {
    if (!(std::isfinite(value) && value >= 0)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: is %g but must be finite and >= 0", name, value));
    }
  }
  return absl::OkStatus();
}

double AdaptiveSoftmax::SampleCost() const {
  return meter_ != nullptr && options_.sample_cost > 0 ? meter_->Cost() : options_.sample_cost;
}

size_t AdaptiveSoftmax::SamplingGroupSize() const {
  const double fit = options_.sampling_memory_fraction * WeightBytes(*model_) /
                     static_cast<double>(QueryState::Bytes(model_->n()));
  return fit >= 1 ? static_cast<size_t>(std::min<double>(fit, SIZE_MAX / 2)) : 1;
}

double AdaptiveSoftmax::ExtraExactQueryShare() const {
  const std::optional<double> share = meter_ != nullptr ? meter_->ExtraQueryShare() : std::nullopt;
  if (share) return *share;
  return kBatchedExactQueryCost * static_cast<double>(model_->n()) *
         static_cast<double>(model_->d()) / ExactPassCost(*model_);
}

AdaptiveSoftmax::ExactCosts AdaptiveSoftmax::ExactCostsNow() const {
  const double pass = ExactPassCost(*model_);
  return {pass, ExtraExactQueryShare() * pass};
}

AdaptiveSoftmax::SamplingPlan AdaptiveSoftmax::Plan(absl::Span<const Query> batch) const {
  SamplingPlan plan{std::vector<bool>(batch.size()), std::vector<bool>(batch.size()),
                    std::vector<double>(batch.size())};
  bool any_forced = false;
  for (size_t q = 0; q < batch.size(); ++q) {
    plan.forced[q] = plan.skips[q] =
        !WithinGuarantee(options_, batch[q]) || !EstimatesResolve(*model_, batch[q]);
    any_forced |= plan.forced[q];
  }
  if (options_.sample_cost == 0) return plan;
  // Once the exact path answers one query of the batch, each further one costs it costs.extra:
  // the queries whose sampling is predicted to cost more join it. When none must, they do only
  // if together they cost more than the exact path answering them.
  const double cost = meter_ != nullptr ? meter_->CostOfPredicted() : options_.sample_cost;
  const ExactCosts costs = ExactCostsNow();
  std::vector<size_t> dear;
  double dear_cost = 0;  // of sampling them
  for (size_t q = 0; q < batch.size(); ++q) {
    if (plan.forced[q]) continue;
    const WeightSpread spread = SpreadOfWeights(*model_, batch[q].x, options_.importance);
    plan.predicted[q] = kSpreadFraction * spread.share * std::min(1.0, options_.topk_multiplier) *
                        static_cast<double>(spread.panels * Model::kPanelWidth) * model_->n();
    if (cost * plan.predicted[q] > costs.extra) {
      dear.push_back(q);
      dear_cost += cost * plan.predicted[q];
    }
  }
  if (any_forced || dear_cost > costs.Batch(dear.size())) {
    for (size_t q : dear) plan.skips[q] = true;
  }
  return plan;
}

std::vector<std::vector<size_t>> AdaptiveSoftmax::SamplingGroups(
    absl::Span<const Query> batch, absl::Span<const size_t> sampled) const {
  std::vector<std::vector<size_t>> groups;
  const size_t size = SamplingGroupSize();
  for (size_t first = 0; first < sampled.size(); first += size) {
    const absl::Span<const size_t> run = sampled.subspan(first, size);
    std::vector<absl::Span<const float>> xs;
    for (size_t q : run) xs.push_back(batch[q].x);
    const std::vector<double> losses =
        run.size() > 1 ? SharingLosses(*model_, xs, options_.importance) : std::vector<double>{1};
    std::vector<size_t> shared;
    for (size_t r = 0; r < run.size(); ++r) {
      if (losses[r] <= options_.max_sharing_loss) {
        shared.push_back(run[r]);
      } else {
        groups.push_back({run[r]});
      }
    }
    if (!shared.empty()) groups.push_back(std::move(shared));
  }
  return groups;
}

std::vector<TopKResult> AdaptiveSoftmax::Run(absl::Span<const Query> queries) const {
  std::vector<std::vector<double>> log_partitions;
  return RunWithCorrections(queries, {}, log_partitions);
}

std::vector<TopKResult> AdaptiveSoftmax::RunWithCorrections(
    absl::Span<const Query> queries, absl::Span<const double> corrections,
    std::vector<std::vector<double>>& log_partitions) const {
  std::vector<TopKResult> results(queries.size());
  log_partitions.assign(queries.size(), {});
  std::vector<size_t> sampled, exact;  // indices into queries
  AdaptiveOptions options = options_;
  options.sample_cost = SampleCost();
  const SamplingPlan plan = Plan(queries);
  double predicted = 0;  // entries the sampled queries are predicted to read
  double samples = 0;    // entries they read; fallbacks count what they read before falling back
  size_t fallbacks = 0;
  for (size_t q = 0; q < queries.size(); ++q) {
    const Query& query = queries[q];
    if (query.stop && query.stop()) continue;  // unanswered
    const bool probe =
        plan.skips[q] && !plan.forced[q] && meter_ != nullptr && ++skipped_ % kProbeEvery == 0;
    if (plan.skips[q] && !probe) {
      exact.push_back(q);
    } else {
      sampled.push_back(q);
      predicted += plan.predicted[q];
    }
  }
  // Whole rounds of one group a thread side by side, then the rest one at a time, chunks in
  // parallel (see the class comment).
  const std::vector<std::vector<size_t>> groups = SamplingGroups(queries, sampled);
  const bool large = model_->n() * model_->d() >= kParallelMinEntries;
  const size_t width = ParallelWidth();
  const size_t side_by_side = large && width > 1 ? groups.size() / width * width : 0;
  std::vector<double> group_samples(groups.size());
  std::vector<std::vector<size_t>> group_fallbacks(groups.size());  // indices into queries
  auto sample_group = [&](size_t g, bool parallel) {
    const std::vector<size_t>& group = groups[g];
    std::vector<Query> batch;
    for (size_t q : group) batch.push_back(queries[q]);
    // One shared order per group. Seeded when every query carries the same nonzero seed.
    uint64_t seed = batch[0].options.seed;
    for (const Query& q : batch) {
      if (q.options.seed != seed) seed = 0;
    }
    if (seed == 0) seed = FreshSeed();
    std::vector<absl::Span<const float>> xs;
    for (const Query& q : batch) xs.push_back(q.x);
    // The sampler's chunks run in parallel right after the serial setup: the workers wake now.
    if (parallel) WakeWorkers();
    const PanelOrder order = PanelOrder::Draw(*model_, xs, options.importance, seed);
    BatchSampler sampler(*model_, order, options, corrections, parallel);
    std::vector<TopKResult> answers = sampler.Run(batch);
    for (size_t r = 0; r < answers.size(); ++r) {
      group_samples[g] += static_cast<double>(answers[r].samples);
      results[group[r]] = std::move(answers[r]);
      log_partitions[group[r]] = sampler.log_partitions()[r];
    }
    for (size_t r : sampler.fallbacks()) group_fallbacks[g].push_back(group[r]);
  };
  // Timed for the meter only: a thread's CPU clock is a system call (~0.25 us).
  const bool metered = meter_ != nullptr && !sampled.empty();
  std::optional<BusyTimer> timer;
  if (metered) timer.emplace();
  ParallelFor(side_by_side, [&](size_t g) { sample_group(g, false); });
  for (size_t g = side_by_side; g < groups.size(); ++g) sample_group(g, large);
  const double sampling_seconds = timer ? timer->Seconds() : 0;
  for (size_t g = 0; g < groups.size(); ++g) {
    samples += group_samples[g];
    fallbacks += group_fallbacks[g].size();
    exact.insert(exact.end(), group_fallbacks[g].begin(), group_fallbacks[g].end());
  }
  double fallback_seconds = 0;  // the fallbacks' share of the exact batch
  if (!exact.empty()) {
    std::vector<Query> exact_queries;
    for (size_t q : exact) exact_queries.push_back(queries[q]);
    const bool timed = metered || (meter_ != nullptr && exact_batches_++ % kTimeExactEvery == 0);
    double seconds = 0;
    std::vector<TopKResult> answers = RunExact(exact_queries, timed, seconds);
    const ExactCosts costs = ExactCostsNow();
    const double cost = costs.Batch(exact.size());
    fallback_seconds = seconds * (cost - costs.Batch(exact.size() - fallbacks)) / cost;
    for (size_t r = 0; r < answers.size(); ++r) {
      answers[r].bytes_touched += results[exact[r]].bytes_touched;  // what sampling touched first
      log_partitions[exact[r]].assign(corrections.size(), answers[r].log_partition);
      results[exact[r]] = std::move(answers[r]);
    }
  }
  if (metered) meter_->AddSampled(samples, predicted, sampling_seconds, fallback_seconds);
  return results;
}

std::vector<TopKResult> AdaptiveSoftmax::RunExact(absl::Span<const Query> queries, bool timed,
                                                  double& seconds) const {
  if (!timed) {
    seconds = 0;
    return ExactSoftmax(model_).Run(queries);
  }
  const BusyTimer timer;
  std::vector<TopKResult> answers = ExactSoftmax(model_).Run(queries);
  seconds = timer.Seconds();
  meter_->AddExact(queries.size(), ExactPassCost(*model_), seconds);
  return answers;
}

void AdaptiveSoftmax::PrimeMeter() const {
  if (meter_ == nullptr) return;
  const std::vector<float> x(model_->d(), 1.0f);
  const std::vector<Query> batch(kPrimeBatch, Query{x, {}, nullptr});
  ExactSoftmax(model_).Run({batch.data(), 1});  // untimed: the first pass pays for page faults
  double seconds;
  for (int i = 0; i < SampleCostMeter::kWarmup; ++i) RunExact({batch.data(), 1}, true, seconds);
  for (int i = 0; i < SampleCostMeter::kWarmup; ++i) RunExact(batch, true, seconds);
}

}  // namespace adasoftmax
