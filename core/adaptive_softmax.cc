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
  std::vector<double> exact_logit;       // valid where level == kExactLevel
  std::vector<uint32_t> survivors;
  std::vector<uint32_t> winners;
  std::vector<double> target;  // per-arm variance target of the normaliser
  double elimination_target = 0;
  bool searching = true;
  bool stopped = false;   // Query::stop fired: no further work, an empty result
  bool fallback = false;  // handed to the exact path: no further sampling
  uint64_t samples = 0;
  // Scratch reused across levels.
  std::vector<std::vector<uint32_t>> pending;  // arms waiting at each level
  std::vector<float> block_x;                  // x's slices of the current block's panels
  std::vector<double> lower, upper, scratch;   // per survivor, in Eliminate
};

// One query's request to PullUntil: pull `arms` (ascending) until the arm's variance is at most
// target(arm), the arm reaches max_level, or it has read every column.
struct PullJob {
  QueryState* state;
  absl::Span<const uint32_t> arms;
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
  void PullUntil(absl::Span<const PullJob> jobs);
  void PullLevel(int level, absl::Span<const PullJob> jobs);
  void PullDense(QueryState& s, int level, const uint32_t* arms, size_t count, uint32_t chunk_begin,
                 uint32_t chunk_end);
  void PullRows(QueryState& s, int level, const uint32_t* arms, size_t count);
  // Successive elimination step; clears `searching` once the top-k set is decided.
  void Eliminate(QueryState& s);
  // Entries arm i is predicted to read until its variance is at most `target` or it reaches
  // `max_level`, assuming the variance falls in proportion to the entries read.
  double PredictedEntries(const QueryState& s, uint32_t i, double target, int max_level) const;
  // Entries the job's arms are predicted to read.
  double PredictedEntries(const PullJob& job) const;
  // Entries the surviving arms are predicted to read before elimination separates them from
  // the k-th best estimate.
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
};

void BatchSampler::InitState(const Query& query, QueryState& s) {
  s.query = &query;
  s.beta = query.options.temperature;
  s.delta_half = query.options.delta / 2;
  s.survivors.clear();
  s.winners.clear();
  s.searching = true;
  s.stopped = false;
  s.fallback = false;
  s.samples = 0;
  s.entries_prefix.resize(order_.levels());
  uint64_t entries = 0;
  size_t t = 0;
  for (int level = 0; level < order_.levels(); ++level) {
    for (; t < order_.prefix(level); ++t) {
      const size_t begin = order_.panel(t) * kLanes, end = std::min(d_, begin + kLanes);
      bool read = false;
      for (size_t j = begin; j < end; ++j) read |= query.x[j] != 0;
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
}

void BatchSampler::PullUntil(absl::Span<const PullJob> jobs) {
  for (const PullJob& job : jobs) {
    QueryState& s = *job.state;
    for (uint32_t i : job.arms) {
      const uint8_t level = s.level[i];
      if (level == kExactLevel || level >= job.max_level) continue;
      if (s.variance[i] > job.target(i)) s.pending[level].push_back(i);
    }
  }
  const int top = order_.last_level();
  for (int level = 0; level < top; ++level) {
    bool any = false;
    for (const PullJob& job : jobs) any |= !job.state->pending[level].empty();
    if (!any) continue;
    PullLevel(level, jobs);
    for (const PullJob& job : jobs) {
      QueryState& s = *job.state;
      std::vector<uint32_t>& pending = s.pending[level];
      std::vector<uint32_t>& next = s.pending[level + 1];
      const size_t waiting = next.size();
      s.samples += static_cast<uint64_t>(pending.size()) *
                   (s.entries_prefix[level + 1] - s.entries_prefix[level]);
      for (uint32_t i : pending) {
        s.level[i] = static_cast<uint8_t>(level + 1);
        Refresh(s, i);
        if (level + 1 < job.max_level && s.variance[i] > job.target(i)) next.push_back(i);
      }
      // Both parts are ascending; PullLevel walks arms in order.
      std::inplace_merge(next.begin(), next.begin() + waiting, next.end());
      pending.clear();
    }
  }
}

void BatchSampler::PullLevel(int level, absl::Span<const PullJob> jobs) {
  const size_t block_begin = order_.prefix(level);
  const size_t block_end = order_.prefix(level + 1);
  for (const PullJob& job : jobs) {
    QueryState& s = *job.state;
    s.block_x.assign((block_end - block_begin) * kLanes, 0.0f);
    for (size_t t = block_begin; t < block_end; ++t) {
      const size_t begin = order_.panel(t) * kLanes, end = std::min(d_, begin + kLanes);
      std::copy(s.query->x.begin() + begin, s.query->x.begin() + end,
                s.block_x.begin() + (t - block_begin) * kLanes);
    }
  }
  std::vector<size_t> cursor(jobs.size(), 0);
  for (uint32_t chunk_begin = 0; chunk_begin < n_; chunk_begin += kChunk) {
    const uint32_t chunk_end = static_cast<uint32_t>(std::min<size_t>(n_, chunk_begin + kChunk));
    for (size_t q = 0; q < jobs.size(); ++q) {
      QueryState& s = *jobs[q].state;
      const std::vector<uint32_t>& pending = s.pending[level];
      const size_t first = cursor[q];
      size_t last = first;
      while (last < pending.size() && pending[last] < chunk_end) ++last;
      cursor[q] = last;
      const size_t count = last - first;
      if (count == 0) continue;
      if (count * kDenseRatio >= chunk_end - chunk_begin) {
        PullDense(s, level, &pending[first], count, chunk_begin, chunk_end);
      } else {
        PullRows(s, level, &pending[first], count);
      }
    }
  }
}

// Sweeps the chunk's consecutive slices of the block's panels, one bin run at a time, then adds
// the run's partial sums to the listed arms.
void BatchSampler::PullDense(QueryState& s, int level, const uint32_t* arms, size_t count,
                             uint32_t chunk_begin, uint32_t chunk_end) {
  const uint32_t width = chunk_end - chunk_begin;
  const size_t block_begin = order_.prefix(level);
  float* partial = chunk_sum_.data();
  float* partial_sq = chunk_sum_sq_.data();
  for (const PanelOrder::Run& run : order_.runs(level)) {
    std::fill(partial, partial + width, 0.0f);
    std::fill(partial_sq, partial_sq + width, 0.0f);
    for (size_t t = run.begin; t < run.end; ++t) {
      SweepPanel(model_.panel(order_.panel(t)) + size_t{chunk_begin} * kLanes,
                 &s.block_x[(t - block_begin) * kLanes], width, partial, partial_sq);
    }
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
                                        &s.block_x[(run.begin - block_begin) * kLanes],
                                        run.end - run.begin, size_t{i} * d_);
      s.bins[i].sum[run.bin] += v.sum;
      s.bins[i].sum_sq[run.bin] += v.sum_sq;
    }
  }
}

void BatchSampler::Eliminate(QueryState& s) {
  const uint32_t k = s.query->options.k;
  std::vector<uint32_t>& alive = s.survivors;
  if (alive.size() > k) {
    const double log_term = std::log(6.0 * n_ * std::max(1.0, std::log(double(d_))) / s.delta_half);
    std::vector<double>& lower = s.lower;
    std::vector<double>& upper = s.upper;
    lower.resize(alive.size());
    upper.resize(alive.size());
    bool all_exact = true;
    for (size_t a = 0; a < alive.size(); ++a) {
      const double var = s.variance[alive[a]] * options_.topk_multiplier;
      const double radius = std::sqrt(2 * var * log_term);
      const double est = s.estimate[alive[a]];
      lower[a] = est - radius;
      upper[a] = est + radius;
      all_exact &= radius == 0;
    }
    std::vector<double>& sorted_lower = s.scratch;
    sorted_lower.assign(lower.begin(), lower.end());
    std::nth_element(sorted_lower.begin(), sorted_lower.begin() + (k - 1), sorted_lower.end(),
                     std::greater<double>());
    const double threshold = sorted_lower[k - 1];
    size_t kept = 0;
    for (size_t a = 0; a < alive.size(); ++a) {
      if (upper[a] >= threshold) alive[kept++] = alive[a];
    }
    alive.resize(kept);
    if (alive.size() > k && all_exact) {
      // Exact ties: keep the k best, lower index first.
      std::vector<std::pair<double, uint32_t>> ranked;
      for (uint32_t i : alive) ranked.emplace_back(-s.estimate[i], i);
      std::sort(ranked.begin(), ranked.end());
      alive.clear();
      for (uint32_t r = 0; r < k; ++r) alive.push_back(ranked[r].second);
      std::sort(alive.begin(), alive.end());
    }
  }
  if (alive.size() <= k) {
    s.searching = false;
    s.winners = alive;
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
  const uint32_t k = s.query->options.k;
  if (s.survivors.size() <= k) return 0;
  // The k-th and (k+1)-th best estimates: arms in the top k must clear the latter, the others
  // the former.
  std::vector<float> top(k + 1, -std::numeric_limits<float>::infinity());
  for (uint32_t i : s.survivors) {
    const float e = s.estimate[i];
    if (e > top[k]) {
      top[k] = e;
      for (uint32_t r = k; r > 0 && top[r] > top[r - 1]; --r) std::swap(top[r], top[r - 1]);
    }
  }
  // Separation when both radii sqrt(2 v m L) add up to the gap: v = gap^2 / (8 m L).
  const double scale = 8 * options_.topk_multiplier *
                       std::log(6.0 * n_ * std::max(1.0, std::log(double(d_))) / s.delta_half);
  double entries = 0;
  for (uint32_t i : s.survivors) {
    const double gap =
        s.estimate[i] >= top[k - 1] ? s.estimate[i] - top[k] : top[k - 1] - s.estimate[i];
    entries += PredictedEntries(s, i, gap * gap / scale, order_.last_level());
  }
  return entries;
}

bool BatchSampler::FallBack(QueryState& s, absl::FunctionRef<double()> predicted) const {
  if (options_.sample_cost > 0 &&
      options_.sample_cost * predicted() > static_cast<double>(n_) * static_cast<double>(d_)) {
    s.fallback = true;
    s.searching = false;
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
  std::vector<std::pair<double, uint32_t>> ranked;
  for (uint32_t i : s.winners) ranked.emplace_back(-s.exact_logit[i], i);
  std::sort(ranked.begin(), ranked.end());
  for (const auto& [neg_logit, i] : ranked) {
    result.indices.push_back(i);
    result.logits.push_back(-neg_logit);
    result.probabilities.push_back(std::exp(-neg_logit - result.log_partition));
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

  // 1. Warm-up: every arm to variance V0 = 1 / (17 ln(6 n / delta')), within the budget; first
  // to level 1, then the rest, unless the variances at level 1 predict that the rest costs more
  // than the exact path.
  const int budget = order_.LevelForFraction(options_.warmup_fraction);
  for (const bool first : {true, false}) {
    std::vector<PullJob> jobs;
    for (QueryState& s : states) {
      const double v0 = 1.0 / (17.0 * std::log(6.0 * n_ / s.delta_half));
      const PullJob job{&s, all_arms_, v0 / options_.normalizer_multiplier, nullptr,
                        first ? std::min(1, budget) : budget};
      if (s.fallback || (!first && FallBack(s, [&] { return PredictedEntries(job); }))) continue;
      jobs.push_back(job);
    }
    PullUntil(jobs);
  }

  // 2. Top-k search by successive elimination: the target variance starts at a quarter of the
  // largest survivor's and halves every round.
  for (QueryState& s : states) {
    if (s.fallback) continue;
    s.survivors = all_arms_;
    if (Stopped(s)) {
      s.searching = false;
      continue;
    }
    Eliminate(s);
    if (s.searching && FallBack(s, [&] { return PredictedSearchEntries(s); })) continue;
    double largest = 0;
    for (uint32_t i : s.survivors) largest = std::max<double>(largest, s.variance[i]);
    s.elimination_target = largest / 4;
  }
  for (;;) {
    std::vector<PullJob> jobs;
    for (QueryState& s : states) {
      if (s.searching && Stopped(s)) s.searching = false;
      if (!s.searching) continue;
      jobs.push_back({&s, s.survivors, s.elimination_target, nullptr, order_.last_level()});
    }
    if (jobs.empty()) break;
    PullUntil(jobs);
    for (const PullJob& job : jobs) {
      QueryState& s = *job.state;
      Eliminate(s);
      s.elimination_target /= 2;
      if (s.searching) FallBack(s, [&] { return PredictedSearchEntries(s); });
    }
  }

  // 3. Exact winners. 4. Normaliser: pull every other arm to its own target.
  std::vector<PullJob> jobs;
  for (QueryState& s : states) {
    if (s.fallback || Stopped(s)) continue;
    for (uint32_t i : s.winners) ComputeExact(s, i);
    SetNormalizerTargets(s);
    const PullJob job{&s, all_arms_, 0, &s.target, order_.last_level()};
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
