#include "core/adaptive_softmax.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <utility>

#include "absl/functional/function_ref.h"
#include "absl/random/random.h"
#include "absl/strings/str_format.h"
#include "core/exact_softmax.h"
#include "core/huge_buffer.h"
#include "core/panel_kernels.h"

namespace adasoftmax {
namespace {

constexpr int kBins = PanelOrder::kBins;
// Level value of an arm whose logit was computed exactly from its full row.
constexpr uint8_t kExactLevel = std::numeric_limits<uint8_t>::max();
// Arms are pulled in chunks of this many rows so a block of columns stays in cache while every
// query of the batch uses it.
constexpr uint32_t kChunk = 2048;
// A query whose active arms fill at least 1/kDenseRatio of a chunk sweeps the chunk's slices of
// each panel (streaming, 4 bytes per arm and column, wasted on inactive arms); sparser ones
// gather their arms' columns from the rows (latency-bound, a cache line per arm and column).
constexpr uint32_t kDenseRatio = 16;
// The search computes this many arms beyond the k best estimates exactly before it starts.
constexpr uint32_t kExtraReferences = 3;

uint64_t FreshSeed() {
  thread_local absl::BitGen gen;
  return absl::Uniform<uint64_t>(gen);
}

// Sampling state of one query of a batch. Arm i's bins are one cache line, bins[i]: sum[b] and
// sum_sq[b] are the sums of a_ip and a_ip^2 over the panels p of bin b in the arm's prefix,
// prefix(level[i]), where a_ip is panel p's part of A_i . x. estimate[i] and
// variance[i] are derived from them whenever level[i] changes, so that the passes over many
// arms read 8 bytes per arm rather than the arm's bins.
struct QueryState {
  const Query* query = nullptr;
  double beta = 1;
  double delta_half = 0;  // delta' = delta / 2
  std::vector<uint8_t> level;
  struct alignas(64) Bins {
    float sum[kBins];
    float sum_sq[kBins];
  };
  HugeBuffer<Bins> bins;
  std::vector<float> estimate;           // of the logit beta * (A_i . x + b_i)
  std::vector<float> variance;           // of estimate[i]; infinite before the first pull
  std::vector<uint64_t> entries_prefix;  // entries of a row in the panels of prefix(L) that
                                         // this query reads, per level
  std::vector<float> ordered_x;          // x's slices in the order's panel sequence
  std::vector<double> exact_logit;       // valid where level == kExactLevel
  // The k best arms computed exactly, worst first (a heap): the search's reference. An arm
  // whose upper confidence bound falls below the worst of them is out of the top k.
  std::vector<std::pair<double, uint32_t>> best_exact;
  double radius_scale = 0;  // confidence radius = sqrt(radius_scale * variance)
  std::vector<double> target;  // per-arm variance target of the normaliser
  bool stopped = false;   // Query::stop fired: no further work, an empty result
  bool fallback = false;  // handed to the exact path: no further sampling
  uint64_t samples = 0;
  // Scratch reused across chunks: arms of the current chunk waiting at each level.
  std::vector<std::vector<uint32_t>> pending;

  // Worse-first order of best_exact: lower logit, then higher index.
  static bool Better(const std::pair<double, uint32_t>& a, const std::pair<double, uint32_t>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  }
  // The k-th best exact logit so far; -inf until k arms are exact.
  double threshold(uint32_t k) const {
    return best_exact.size() < k ? -std::numeric_limits<double>::infinity()
                                 : best_exact.front().first;
  }
  void OfferExact(uint32_t i, uint32_t k) {
    const std::pair<double, uint32_t> candidate{exact_logit[i], i};
    if (best_exact.size() < k) {
      best_exact.push_back(candidate);
      std::push_heap(best_exact.begin(), best_exact.end(), Better);
    } else if (Better(candidate, best_exact.front())) {
      std::pop_heap(best_exact.begin(), best_exact.end(), Better);
      best_exact.back() = candidate;
      std::push_heap(best_exact.begin(), best_exact.end(), Better);
    }
  }
};

// One query's request to PullUntil. In a target job, `arms` (ascending) are pulled until the
// arm's variance is at most target(arm) or it reaches max_level. In a search job, they are
// pulled until their upper confidence bound falls below the query's threshold; an arm that
// reaches the last level without doing so is computed exactly and offered to best_exact.
struct PullJob {
  QueryState* state;
  absl::Span<const uint32_t> arms;
  bool search;
  double uniform_target;  // used when per_arm_target is null
  const std::vector<double>* per_arm_target;
  int max_level;

  double target(uint32_t i) const { return per_arm_target ? (*per_arm_target)[i] : uniform_target; }
};

class BatchSampler {
 public:
  BatchSampler(const Model& model, const PanelOrder& order, const AdaptiveOptions& options)
      : model_(model), order_(order), options_(options), n_(model.n()), d_(model.d()) {}

  // Results of queries that fell back to the exact path are empty; see fallbacks().
  std::vector<TopKResult> Run(absl::Span<const Query> queries);
  // Indices, in the last Run's batch, of the queries that fell back.
  const std::vector<size_t>& fallbacks() const { return fallbacks_; }

 private:
  // Recomputes estimate[i] and variance[i] from the arm's bins.
  void Refresh(QueryState& s, uint32_t i) const {
    s.estimate[i] = static_cast<float>(Estimate(s, i));
    s.variance[i] = static_cast<float>(Variance(s, i));
  }
  double Estimate(const QueryState& s, uint32_t i) const {
    if (s.level[i] == kExactLevel) return s.exact_logit[i];
    const float* inv = order_.inverse_inclusion(s.level[i]);
    const float* sum = s.bins[i].sum;
    double e = 0;
    for (int b = 0; b < kBins; ++b) e += sum[b] * inv[b];
    return s.beta * (e + (model_.has_bias() ? model_.bias()[i] : 0.0));
  }
  // Infinite before the first pull; 0 once every column was read.
  double Variance(const QueryState& s, uint32_t i) const {
    if (s.level[i] == kExactLevel) return 0;
    if (s.level[i] == 0 && order_.last_level() > 0) return std::numeric_limits<double>::infinity();
    const float* f = order_.variance_factor(s.level[i]);
    const float* sq = s.bins[i].sum_sq;
    double v = 0;
    for (int b = 0; b < kBins; ++b) v += sq[b] * f[b];
    return s.beta * s.beta * v;
  }

  void InitState(const Query& query, QueryState& s);
  // Polls Query::stop; true once the query was stopped.
  static bool Stopped(QueryState& s) {
    if (!s.stopped && s.query->stop && s.query->stop()) s.stopped = true;
    return s.stopped;
  }
  // Whether the job wants arm i pulled further.
  bool Wants(const PullJob& job, uint32_t i) const {
    const QueryState& s = *job.state;
    if (s.level[i] == kExactLevel) return false;
    if (job.search) {
      return s.estimate[i] + std::sqrt(s.radius_scale * s.variance[i]) >=
             s.threshold(s.query->options.k);
    }
    return s.level[i] < job.max_level && s.variance[i] > job.target(i);
  }
  // Queues arm i at its level if the job wants it pulled further. A search arm with every
  // column read that is still in the race is computed exactly instead.
  void Enqueue(const PullJob& job, uint32_t i) {
    if (!Wants(job, i)) return;
    QueryState& s = *job.state;
    if (s.level[i] < order_.last_level()) {
      s.pending[s.level[i]].push_back(i);
    } else {
      ComputeExact(s, i);
      s.OfferExact(i, s.query->options.k);
    }
  }
  void PullUntil(absl::Span<const PullJob> jobs);
  void PullDense(QueryState& s, int level, const uint32_t* arms, size_t count, uint32_t chunk_begin,
                 uint32_t chunk_end);
  void PullRows(QueryState& s, int level, const uint32_t* arms, size_t count);
  // Entries arm i is predicted to read until its variance is at most `target` or it reaches
  // `max_level`, assuming the variance falls in proportion to the entries read.
  double PredictedEntries(const QueryState& s, uint32_t i, double target, int max_level) const;
  // Entries the job's arms are predicted to read.
  double PredictedEntries(const PullJob& job) const;
  // Entries the search is predicted to read: each arm until its confidence radius drops below
  // its gap to the threshold.
  double PredictedSearchEntries(const QueryState& s) const;
  // Sets s.fallback when sampling the `predicted()` entries ahead would cost more than the
  // exact path (never when sample_cost is 0, and then without calling it). Returns s.fallback.
  bool FallBack(QueryState& s, absl::FunctionRef<double()> predicted) const;
  void ComputeExact(QueryState& s, uint32_t i);
  void SetNormalizerTargets(QueryState& s);
  TopKResult Finish(QueryState& s);

  const Model& model_;
  const PanelOrder& order_;
  const AdaptiveOptions& options_;
  const size_t n_;
  const size_t d_;
  std::vector<uint32_t> all_arms_;
  std::vector<size_t> fallbacks_;
  // Per-chunk scratch of the dense sweep.
  std::vector<float> chunk_sum_ = std::vector<float>(kChunk);
  std::vector<float> chunk_sum_sq_ = std::vector<float>(kChunk);
  std::vector<const float*> columns_;
};

void BatchSampler::InitState(const Query& query, QueryState& s) {
  s.query = &query;
  s.beta = query.options.temperature;
  s.delta_half = query.options.delta / 2;
  s.best_exact.clear();
  s.stopped = false;
  s.fallback = false;
  s.samples = 0;
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
  if (FallBack(s, [&] { return static_cast<double>(n_) * s.entries_prefix[first]; })) return;

  s.level.assign(n_, 0);
  s.bins.Reset(n_);
  s.exact_logit.resize(n_);
  s.estimate.resize(n_);
  s.variance.resize(n_);
  // Refresh(s, i) for the empty prefix, without reading the zeroed bins.
  const float unknown = order_.last_level() > 0 ? std::numeric_limits<float>::infinity() : 0.0f;
  for (uint32_t i = 0; i < n_; ++i) {
    s.estimate[i] = static_cast<float>(s.beta * (model_.has_bias() ? model_.bias()[i] : 0.0));
    s.variance[i] = unknown;
  }
  s.pending.resize(order_.levels());
  for (std::vector<uint32_t>& p : s.pending) p.clear();
  // log(6 n log d / delta'): a union bound over arms and elimination tests.
  s.radius_scale = 2 * options_.topk_multiplier *
                   std::log(6.0 * n_ * std::max(1.0, std::log(double(d_))) / s.delta_half);
}

// Chunk by chunk, so a block of columns is read once for every query that needs it and each
// arm's state stays in cache while the arm climbs the levels.
void BatchSampler::PullUntil(absl::Span<const PullJob> jobs) {
  const int top = order_.last_level();
  std::vector<size_t> cursor(jobs.size(), 0);
  for (uint32_t chunk_begin = 0; chunk_begin < n_; chunk_begin += kChunk) {
    const uint32_t chunk_end = static_cast<uint32_t>(std::min<size_t>(n_, chunk_begin + kChunk));
    int lowest = top;
    for (size_t q = 0; q < jobs.size(); ++q) {
      const PullJob& job = jobs[q];
      QueryState& s = *job.state;
      for (; cursor[q] < job.arms.size() && job.arms[cursor[q]] < chunk_end; ++cursor[q]) {
        const uint32_t i = job.arms[cursor[q]];
        Enqueue(job, i);
        if (s.level[i] != kExactLevel) lowest = std::min<int>(lowest, s.level[i]);
      }
    }
    for (int level = lowest; level < top; ++level) {
      for (const PullJob& job : jobs) {
        QueryState& s = *job.state;
        std::vector<uint32_t>& pending = s.pending[level];
        if (pending.empty()) continue;
        if (pending.size() * kDenseRatio >= chunk_end - chunk_begin) {
          PullDense(s, level, pending.data(), pending.size(), chunk_begin, chunk_end);
        } else {
          PullRows(s, level, pending.data(), pending.size());
        }
        s.samples += static_cast<uint64_t>(pending.size()) *
                     (s.entries_prefix[level + 1] - s.entries_prefix[level]);
        for (uint32_t i : pending) {
          s.level[i] = static_cast<uint8_t>(level + 1);
          Refresh(s, i);
          Enqueue(job, i);
        }
        pending.clear();
      }
    }
  }
}

// Sweeps the chunk's consecutive slices of the block's panels, one bin run at a time, then adds
// the run's partial sums to the listed arms.
void BatchSampler::PullDense(QueryState& s, int level, const uint32_t* arms, size_t count,
                             uint32_t chunk_begin, uint32_t chunk_end) {
  const uint32_t width = chunk_end - chunk_begin;
  float* partial = chunk_sum_.data();
  float* partial_sq = chunk_sum_sq_.data();
  for (const PanelOrder::Run& run : order_.runs(level)) {
    std::fill(partial, partial + width, 0.0f);
    std::fill(partial_sq, partial_sq + width, 0.0f);
    columns_.clear();
    for (size_t t = run.begin; t < run.end; ++t)
      columns_.push_back(model_.panel(order_.panel(t)) + chunk_begin);
    SweepColumns(columns_.data(), &s.ordered_x[run.begin], columns_.size(), width, partial,
                 partial_sq);
    for (size_t k = 0; k < count; ++k) {
      const uint32_t i = arms[k];
      s.bins[i].sum[run.bin] += partial[i - chunk_begin];
      s.bins[i].sum_sq[run.bin] += partial_sq[i - chunk_begin];
    }
  }
}

// Reads the block's columns of each listed arm from its row: the columns are scattered, but
// within one row they share DRAM pages and prefetch streams, unlike single column-panel slices.
void BatchSampler::PullRows(QueryState& s, int level, const uint32_t* arms, size_t count) {
  const size_t block_begin = order_.prefix(level);
  const size_t block_end = order_.prefix(level + 1);
  const float* rows = model_.rows().data();
  // Gathers are latency-bound: request the columns of an arm a few arms ahead.
  constexpr size_t kPrefetchDistance = 4;
  auto prefetch = [&](uint32_t i) {
    for (size_t t = block_begin; t < block_end; ++t) {
      __builtin_prefetch(rows + size_t{i} * d_ + order_.panel(t) * kLanes);
    }
  };
  for (size_t k = 0; k < std::min(count, kPrefetchDistance); ++k) prefetch(arms[k]);
  for (size_t k = 0; k < count; ++k) {
    const uint32_t i = arms[k];
    if (k + kPrefetchDistance < count) prefetch(arms[k + kPrefetchDistance]);
    for (const PanelOrder::Run& run : order_.runs(level)) {
      const SumAndSquares v = GatherArm(rows, kLanes, order_.panel_data() + run.begin,
                                        &s.ordered_x[run.begin * kLanes], run.end - run.begin,
                                        size_t{i} * d_);
      s.bins[i].sum[run.bin] += v.sum;
      s.bins[i].sum_sq[run.bin] += v.sum_sq;
    }
  }
}

double BatchSampler::PredictedEntries(const QueryState& s, uint32_t i, double target,
                                      int max_level) const {
  if (s.level[i] == kExactLevel || s.level[i] >= max_level) return 0;
  const double read = static_cast<double>(s.entries_prefix[s.level[i]]);
  const double cap = static_cast<double>(s.entries_prefix[max_level]);
  // Nothing read yet (infinite variance) or a zero target: all the way to max_level.
  const double needed =
      target > 0 && std::isfinite(s.variance[i]) ? read * s.variance[i] / target : cap;
  return std::clamp(needed, read, cap) - read;
}

double BatchSampler::PredictedEntries(const PullJob& job) const {
  double entries = 0;
  for (uint32_t i : job.arms)
    entries += PredictedEntries(*job.state, i, job.target(i), job.max_level);
  return entries;
}

double BatchSampler::PredictedSearchEntries(const QueryState& s) const {
  const double threshold = s.threshold(s.query->options.k);
  double entries = 0;
  for (uint32_t i = 0; i < n_; ++i) {
    // Out once sqrt(radius_scale * v) < gap: v = gap^2 / radius_scale.
    const double gap = std::max(0.0, threshold - s.estimate[i]);
    entries += PredictedEntries(s, i, gap * gap / s.radius_scale, order_.last_level());
  }
  return entries;
}

bool BatchSampler::FallBack(QueryState& s, absl::FunctionRef<double()> predicted) const {
  if (options_.sample_cost > 0 &&
      options_.sample_cost * predicted() > static_cast<double>(n_) * static_cast<double>(d_)) {
    s.fallback = true;
  }
  return s.fallback;
}

void BatchSampler::ComputeExact(QueryState& s, uint32_t i) {
  const float* row = model_.rows().data() + static_cast<size_t>(i) * d_;
  const absl::Span<const float> x = s.query->x;
  double dot = 0;
  for (size_t j = 0; j < d_; ++j) dot += static_cast<double>(row[j]) * x[j];
  const uint8_t level = s.level[i];
  s.samples += d_ - s.entries_prefix[level];
  s.exact_logit[i] = s.beta * (dot + (model_.has_bias() ? model_.bias()[i] : 0.0));
  s.level[i] = kExactLevel;
  Refresh(s, i);
}

// Paper Algorithm 2, second round: per-arm variance targets from the current estimates and
// their confidence radii.
void BatchSampler::SetNormalizerTargets(QueryState& s) {
  const double eps = s.query->options.epsilon;
  const double log_arms = std::log(6.0 * n_ / s.delta_half);
  const double log_two = std::log(12.0 / s.delta_half);
  std::vector<double>& low = s.target;  // est - C, then alpha, then the targets
  low.resize(n_);
  double shift = -std::numeric_limits<double>::infinity();
  for (uint32_t i = 0; i < n_; ++i) {
    const double var = s.variance[i] * options_.normalizer_multiplier;
    low[i] = s.estimate[i] - std::sqrt(2 * var * log_arms);
    shift = std::max(shift, low[i]);
  }
  // alpha_i = exp(low_i) and gamma_i = sqrt(alpha_i), both scaled by exp(-shift): the
  // targets are invariant to that scale.
  std::vector<double>& alpha = low;
  double sum_alpha = 0, sum_gamma = 0;
  for (uint32_t i = 0; i < n_; ++i) {
    alpha[i] = std::exp(low[i] - shift);
    sum_alpha += alpha[i];
    sum_gamma += std::sqrt(alpha[i]);
  }
  const double c1 = 16 * std::sqrt(2.0) * log_arms / eps * sum_gamma * sum_gamma / sum_alpha;
  const double c2 = 16 * log_two / (eps * eps);
  for (uint32_t i = 0; i < n_; ++i) {
    const double v = std::min(sum_gamma / (c1 * std::sqrt(alpha[i])), sum_alpha / (c2 * alpha[i]));
    s.target[i] = v / options_.normalizer_multiplier;
  }
}

TopKResult BatchSampler::Finish(QueryState& s) {
  if (s.stopped || s.fallback) {
    TopKResult stopped;
    stopped.samples = s.samples;
    stopped.sample_fraction = static_cast<double>(s.samples) / (static_cast<double>(n_) * d_);
    return stopped;
  }
  const std::vector<float>& estimate = s.estimate;
  double max = -std::numeric_limits<double>::infinity();
  for (uint32_t i = 0; i < n_; ++i) max = std::max<double>(max, estimate[i]);
  double sum = 0;
  for (uint32_t i = 0; i < n_; ++i) sum += std::exp(estimate[i] - max);
  TopKResult result;
  result.log_partition = max + std::log(sum);
  std::vector<std::pair<double, uint32_t>> ranked = s.best_exact;
  std::sort(ranked.begin(), ranked.end(), QueryState::Better);
  for (const auto& [logit, i] : ranked) {
    result.indices.push_back(i);
    result.logits.push_back(logit);
    result.probabilities.push_back(std::exp(logit - result.log_partition));
  }
  result.samples = s.samples;
  result.sample_fraction = static_cast<double>(s.samples) / (static_cast<double>(n_) * d_);
  result.exact = s.samples >= static_cast<uint64_t>(n_) * d_;
  return result;
}

std::vector<TopKResult> BatchSampler::Run(absl::Span<const Query> queries) {
  all_arms_.resize(n_);
  std::iota(all_arms_.begin(), all_arms_.end(), 0u);
  // Per-thread states keep their buffers between calls: no page faults on the hot path.
  thread_local std::vector<QueryState> pool;
  if (pool.size() < queries.size()) pool.resize(queries.size());
  const absl::Span<QueryState> states(pool.data(), queries.size());
  for (size_t q = 0; q < queries.size(); ++q) InitState(queries[q], states[q]);
  auto live = [&](QueryState& s) { return !s.fallback && !Stopped(s); };

  // 1. Warm-up: every arm to variance V0 = 1 / (17 ln(6 n / delta')), within the budget; first
  // to level 1, then the rest, unless the variances at level 1 predict that the rest costs more
  // than the exact path.
  const int budget = order_.LevelForFraction(options_.warmup_fraction);
  for (const bool first : {true, false}) {
    std::vector<PullJob> jobs;
    for (QueryState& s : states) {
      const double v0 = 1.0 / (17.0 * std::log(6.0 * n_ / s.delta_half));
      const PullJob job{&s, all_arms_, false, v0 / options_.normalizer_multiplier, nullptr,
                        first ? std::min(1, budget) : budget};
      if (!live(s) || (!first && FallBack(s, [&] { return PredictedEntries(job); }))) continue;
      jobs.push_back(job);
    }
    PullUntil(jobs);
  }

  // 2. Top-k search by elimination against exact references: the k + kExtraReferences arms
  // with the best estimates are computed exactly (the winners usually are among them), then
  // every arm is pulled until its upper confidence bound falls below the k-th best exact logit.
  std::vector<PullJob> jobs;
  for (QueryState& s : states) {
    if (!live(s)) continue;
    const uint32_t k = s.query->options.k;
    const size_t references = std::min<size_t>(n_, k + kExtraReferences);
    std::vector<uint32_t> best(references);
    std::partial_sort_copy(all_arms_.begin(), all_arms_.end(), best.begin(), best.end(),
                           [&](uint32_t a, uint32_t b) { return s.estimate[a] > s.estimate[b]; });
    for (uint32_t i : best) {
      ComputeExact(s, i);
      s.OfferExact(i, k);
    }
    if (FallBack(s, [&] { return PredictedSearchEntries(s); })) continue;
    jobs.push_back({&s, all_arms_, true, 0, nullptr, order_.last_level()});
  }
  PullUntil(jobs);

  // 3. Normaliser: pull every arm to its own target.
  jobs.clear();
  for (QueryState& s : states) {
    if (!live(s)) continue;
    SetNormalizerTargets(s);
    const PullJob job{&s, all_arms_, false, 0, &s.target, order_.last_level()};
    if (!FallBack(s, [&] { return PredictedEntries(job); })) jobs.push_back(job);
  }
  PullUntil(jobs);

  std::vector<TopKResult> results;
  results.reserve(states.size());
  fallbacks_.clear();
  for (size_t q = 0; q < states.size(); ++q) {
    if (states[q].fallback && !Stopped(states[q])) fallbacks_.push_back(q);
    results.push_back(Finish(states[q]));
  }
  return results;
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
  if (!(std::isfinite(options.sample_cost) && options.sample_cost >= 0)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("sample_cost: is %g but must be finite and >= 0", options.sample_cost));
  }
  if (!(options.warmup_fraction > 0 && options.warmup_fraction <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("warmup_fraction: is %g but must be in (0, 1]", options.warmup_fraction));
  }
  return absl::OkStatus();
}

std::vector<TopKResult> AdaptiveSoftmax::Run(absl::Span<const Query> queries) const {
  if (queries.empty()) return {};
  // One shared order per batch. Seeded when every query carries the same nonzero seed.
  uint64_t seed = queries[0].options.seed;
  for (const Query& q : queries) {
    if (q.options.seed != seed) seed = 0;
  }
  if (seed == 0) seed = FreshSeed();
  std::vector<absl::Span<const float>> xs;
  for (const Query& q : queries) xs.push_back(q.x);
  const PanelOrder order = PanelOrder::Draw(*model_, xs, options_.importance, seed);
  BatchSampler sampler(*model_, order, options_);
  std::vector<TopKResult> results = sampler.Run(queries);
  if (!sampler.fallbacks().empty()) {
    std::vector<Query> exact_queries;
    for (size_t q : sampler.fallbacks()) exact_queries.push_back(queries[q]);
    std::vector<TopKResult> exact = ExactSoftmax(model_).Run(exact_queries);
    for (size_t r = 0; r < exact.size(); ++r) results[sampler.fallbacks()[r]] = std::move(exact[r]);
  }
  return results;
}

}  // namespace adasoftmax
