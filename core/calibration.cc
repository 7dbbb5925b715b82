#include "core/calibration.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <numeric>
#include <optional>
#include <sstream>
#include <thread>
#include <utility>

#include "absl/strings/str_format.h"
#include "core/pac.h"
#include "core/random.h"
#include "core/status_macros.h"
#include "nlohmann/json.hpp"

namespace adasoftmax {
namespace {

// log P(X <= failures) for X ~ Binomial(trials, p), 0 < p < 1.
double LogBinomialCdf(size_t failures, size_t trials, double p) {
  const double n = static_cast<double>(trials);
  const double log_p = std::log(p), log_q = std::log1p(-p);
  const double lgamma_n1 = std::lgamma(n + 1);
  std::vector<double> terms;
  terms.reserve(failures + 1);
  double max = -INFINITY;
  for (size_t i = 0; i <= failures; ++i) {
    const double x = static_cast<double>(i);
    const double t =
        lgamma_n1 - std::lgamma(x + 1) - std::lgamma(n - x + 1) + x * log_p + (n - x) * log_q;
    terms.push_back(t);
    max = std::max(max, t);
  }
  double sum = 0;
  for (double t : terms) sum += std::exp(t - max);
  return max + std::log(sum);
}

// The nonzero seed of query `row`, independent of grid point and thread count.
uint64_t QuerySeed(uint64_t seed, size_t row) {
  const uint64_t s = SplitMix64(SplitMix64(seed) ^ (row + 1));
  return s == 0 ? 1 : s;
}

// Calls fn(i) for i in [0, count) on up to `threads` threads. fn returns false to stop: items
// not yet started are then skipped.
void ParallelFor(size_t count, int threads, const std::function<bool(size_t)>& fn) {
  std::atomic<size_t> next{0};
  std::atomic<bool> stop{false};
  auto worker = [&] {
    while (!stop.load(std::memory_order_relaxed)) {
      const size_t i = next.fetch_add(1);
      if (i >= count) return;
      if (!fn(i)) stop.store(true);
    }
  };
  const size_t workers = std::min<size_t>(std::max(threads, 1), count);
  std::vector<std::thread> pool;
  for (size_t t = 1; t < workers; ++t) pool.emplace_back(worker);
  worker();
  for (std::thread& t : pool) t.join();
}

struct Split {
  size_t begin = 0;
  size_t end = 0;
  size_t size() const { return end - begin; }
};

// One multiplier pair's evaluation, with each of the corrections.
struct Evaluation {
  std::vector<size_t> failures;  // per correction
  bool complete = false;         // false when stopped early, every correction over the limit
  double mean_sample_fraction = 0;
  double mean_bytes_touched = 0;
  std::vector<double> mean_log_partition_error;  // per correction, absolute
  bool AtMost(size_t l, size_t limit) const { return complete && failures[l] <= limit; }
};

// `result` with the log partition `log_partition`.
TopKResult WithLogPartition(TopKResult result, double log_partition) {
  result.log_partition = log_partition;
  for (size_t r = 0; r < result.logits.size(); ++r) {
    result.probabilities[r] = std::exp(result.logits[r] - log_partition);
  }
  return result;
}

// The state shared by every evaluation of one Calibrate call.
class Evaluator {
 public:
  Evaluator(std::shared_ptr<const Model> model, const Matrix& rows, const QueryOptions& query,
            const AdaptiveOptions& base, const CalibrationOptions& options)
      : model_(std::move(model)), rows_(rows), query_(query), base_(base), options_(options) {}

  absl::Span<const float> Row(size_t r) const {
    return absl::MakeConstSpan(rows_.data() + r * rows_.cols(), rows_.cols());
  }

  void ComputeReferences() {
    references_.resize(rows_.rows());
    ParallelFor(rows_.rows(), options_.threads, [&](size_t r) {
      references_[r] = ComputeReference(*model_, Row(r), query_.temperature);
      return true;
    });
  }

  // Answers the queries of `split` with the multipliers (t, z), checked with each of the
  // corrections; stops once every correction's failures exceed `limit`.
  Evaluation Evaluate(double t, double z, absl::Span<const double> corrections, Split split,
                      size_t limit) const {
    AdaptiveOptions adaptive = base_;
    adaptive.topk_multiplier = t;
    adaptive.normalizer_multiplier = z;
    // The sampler itself is calibrated: no exact fallback, no bound on epsilon or delta.
    adaptive.sample_cost = 0;
    adaptive.min_epsilon = adaptive.min_delta = 0;
    const AdaptiveSoftmax solver(model_, adaptive);
    const size_t count = corrections.size();
    std::vector<double> fractions(split.size(), 0), bytes(split.size(), 0);
    std::vector<double> errors(split.size() * count, 0);  // [i * count + l]
    std::vector<std::atomic<size_t>> failures(count);
    std::atomic<size_t> over{0};  // corrections whose failures exceed the limit
    std::atomic<size_t> done{0};
    ParallelFor(split.size(), options_.threads, [&](size_t i) {
      const size_t r = split.begin + i;
      Query q{Row(r), query_, {}};
      q.options.seed = QuerySeed(options_.seed, r);
      std::vector<std::vector<double>> log_partitions;
      const TopKResult result = std::move(
          solver.RunWithCorrections(absl::MakeConstSpan(&q, 1), corrections, log_partitions)
              .front());
      fractions[i] = result.sample_fraction;
      bytes[i] = static_cast<double>(result.bytes_touched);
      done.fetch_add(1);
      for (size_t l = 0; l < count; ++l) {
        const double log_partition = log_partitions.front()[l];
        errors[i * count + l] = std::fabs(log_partition - references_[r].log_partition);
        const TopKResult corrected = WithLogPartition(result, log_partition);
        if (!MeetsPac(corrected, references_[r], query_.k, query_.epsilon) &&
            failures[l].fetch_add(1) == limit) {
          over.fetch_add(1);
        }
      }
      return over.load() < count;
    });
    Evaluation e;
    for (const std::atomic<size_t>& f : failures) e.failures.push_back(f.load());
    e.complete = done.load() == split.size();
    if (e.complete && split.size() > 0) {
      // Summed in row order, so the means are reproducible.
      e.mean_sample_fraction = std::accumulate(fractions.begin(), fractions.end(), 0.0) /
                               static_cast<double>(split.size());
      e.mean_bytes_touched =
          std::accumulate(bytes.begin(), bytes.end(), 0.0) / static_cast<double>(split.size());
      e.mean_log_partition_error.assign(count, 0);
      for (size_t i = 0; i < split.size(); ++i) {
        for (size_t l = 0; l < count; ++l) {
          e.mean_log_partition_error[l] +=
              errors[i * count + l] / static_cast<double>(split.size());
        }
      }
    }
    return e;
  }

 private:
  std::shared_ptr<const Model> model_;
  const Matrix& rows_;
  QueryOptions query_;
  AdaptiveOptions base_;
  CalibrationOptions options_;
  std::vector<ReferenceAnswer> references_;
};

// OK when `grid` is non-empty and every entry is `valid`, which `requirement` states.
absl::Status ValidateGrid(const char* name, const std::vector<double>& grid,
                          bool (*valid)(double), const char* requirement) {
  if (grid.empty()) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: is empty", name));
  }
  for (double v : grid) {
    if (!valid(v)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: holds %g but every entry must be %s", name, v, requirement));
    }
  }
  return absl::OkStatus();
}

std::vector<double> SortedUnique(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
  return v;
}

// Sizes of the split of `total` queries.
Split CalibrationSplit(size_t total, double holdout_fraction) {
  const size_t holdout = static_cast<size_t>(std::llround(holdout_fraction * total));
  return Split{0, total - std::min(holdout, total)};
}

// The fewest queries in total whose calibration split holds at least `needed` queries.
size_t TotalQueriesFor(size_t needed, double holdout_fraction) {
  size_t total = needed;
  while (CalibrationSplit(total, holdout_fraction).size() < needed) ++total;
  return total;
}

}  // namespace

double ClopperPearsonUpper(size_t failures, size_t trials, double confidence) {
  if (trials == 0 || failures >= trials) return 1.0;
  const double log_alpha = std::log1p(-confidence);
  if (failures == 0) {
    // Closed form of the same equation (1 - p)^n = 1 - confidence.
    return -std::expm1(log_alpha / static_cast<double>(trials));
  }
  // The CDF decreases in p; find p with LogBinomialCdf(p) = log(1 - confidence).
  double lo = 0, hi = 1;
  for (int it = 0; it < 200 && hi - lo > 1e-15; ++it) {
    const double mid = 0.5 * (lo + hi);
    if (LogBinomialCdf(failures, trials, mid) > log_alpha) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return hi;
}

size_t MinimumTrials(double rate, double confidence) {
  return static_cast<size_t>(std::ceil(std::log1p(-confidence) / std::log1p(-rate) - 1e-9));
}

std::optional<GridIndex> ChooseGridPoint(const CalibrationGrid& grid) {
  auto at = [&](const GridIndex& p) -> const GridPoint& { return grid[p[0]][p[1]][p[2]]; };
  const GridIndex size = {grid.size(), grid[0].size(), grid[0][0].size()};
  auto inside = [&](const GridIndex& p) {
    for (size_t axis = 0; axis < 3; ++axis) {
      if (size[axis] == 1) continue;
      if (p[axis] == 0 || p[axis] + 1 == size[axis]) return false;
      GridIndex below = p, above = p;
      --below[axis];
      ++above[axis];
      if (!at(below).within_delta || !at(above).within_delta) return false;
    }
    return true;
  };
  // Whether a qualifying point beats `best`: margin first, then cost, failures, error.
  std::optional<GridIndex> best;
  bool best_inside = false;
  auto better = [&](const GridIndex& p, bool p_inside) {
    if (!best) return true;
    if (p_inside != best_inside) return p_inside;
    const GridPoint &a = at(p), &b = at(*best);
    if (a.cost != b.cost) return a.cost < b.cost;
    if (a.failures != b.failures) return a.failures < b.failures;
    return a.error < b.error;
  };
  GridIndex p;
  for (p[0] = 0; p[0] < size[0]; ++p[0]) {
    for (p[1] = 0; p[1] < size[1]; ++p[1]) {
      for (p[2] = 0; p[2] < size[2]; ++p[2]) {
        if (!at(p).qualifies) continue;
        const bool p_inside = inside(p);
        if (better(p, p_inside)) {
          best = p;
          best_inside = p_inside;
        }
      }
    }
  }
  return best;
}

absl::StatusOr<Calibration> Calibrate(std::shared_ptr<const Model> model, const Matrix& queries,
                                      const QueryOptions& query_options,
                                      const AdaptiveOptions& base,
                                      const CalibrationOptions& options) {
  if (model == nullptr) return absl::InvalidArgumentError("model: is null");
  if (!(options.holdout_fraction > 0 && options.holdout_fraction < 1)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("holdout_fraction: is %g but must be in (0, 1)", options.holdout_fraction));
  }
  if (!(options.confidence > 0 && options.confidence < 1)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("confidence: is %g but must be in (0, 1)", options.confidence));
  }
  auto multiplier = [](double v) { return std::isfinite(v) && v > 0; };
  RETURN_IF_ERROR(ValidateGrid("topk_grid", options.topk_grid, multiplier, "finite and > 0"));
  RETURN_IF_ERROR(
      ValidateGrid("normalizer_grid", options.normalizer_grid, multiplier, "finite and > 0"));
  RETURN_IF_ERROR(ValidateGrid(
      "correction_grid", options.correction_grid, [](double v) { return v >= 0 && v <= 1; },
      "in [0, 1]"));
  if (options.threads < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("threads: is %d but must be >= 1", options.threads));
  }
  RETURN_IF_ERROR(ValidateAdaptiveOptions(base));
  if (queries.cols() != model->d()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "queries: have %d columns but the model has d = %d", queries.cols(), model->d()));
  }
  const size_t total = queries.rows();
  const Split calibration = CalibrationSplit(total, options.holdout_fraction);
  const Split holdout{calibration.end, total};
  if (calibration.size() == 0 || holdout.size() == 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "queries: %d queries with holdout_fraction %g leave %d for calibration and %d held "
        "out; both must be non-empty",
        total, options.holdout_fraction, calibration.size(), holdout.size()));
  }
  const Matrix row_copy =
      queries.layout() == Layout::kRowMajor ? Matrix() : queries.Copy(Layout::kRowMajor);
  const Matrix& rows = queries.layout() == Layout::kRowMajor ? queries : row_copy;
  for (size_t r = 0; r < total; ++r) {
    const Query q{absl::MakeConstSpan(rows.data() + r * rows.cols(), rows.cols()), query_options,
                  {}};
    if (absl::Status s = ValidateQuery(*model, q); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrFormat("queries: row %d: %s", r, s.message()));
    }
  }

  const double delta = query_options.delta;
  const size_t needed = MinimumTrials(delta, options.confidence);
  if (ClopperPearsonUpper(0, calibration.size(), options.confidence) > delta) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "queries: %d calibration queries cannot bound the failure rate at or below delta = %g "
        "with confidence %g; that needs at least %d calibration queries even with 0 failures "
        "(%d queries in total with holdout_fraction %g)",
        calibration.size(), delta, options.confidence, needed,
        TotalQueriesFor(needed, options.holdout_fraction), options.holdout_fraction));
  }
  // The most failures a qualifying pair may have.
  size_t max_failures = 0;
  while (max_failures + 1 < calibration.size() &&
         ClopperPearsonUpper(max_failures + 1, calibration.size(), options.confidence) <= delta) {
    ++max_failures;
  }
  // The most failures of a point within delta, which gives a neighbour its margin.
  const size_t max_within_delta =
      std::max(max_failures, static_cast<size_t>(delta * static_cast<double>(calibration.size())));

  Evaluator evaluator(model, rows, query_options, base, options);
  evaluator.ComputeReferences();

  const std::vector<double> topk = SortedUnique(options.topk_grid);
  const std::vector<double> normalizer = SortedUnique(options.normalizer_grid);
  const std::vector<double> corrections = SortedUnique(options.correction_grid);
  CalibrationGrid grid(topk.size(), std::vector<std::vector<GridPoint>>(normalizer.size()));
  std::vector<std::vector<Evaluation>> evaluations(grid.size());
  for (size_t i = 0; i < topk.size(); ++i) {
    for (size_t j = 0; j < normalizer.size(); ++j) {
      const Evaluation e =
          evaluator.Evaluate(topk[i], normalizer[j], corrections, calibration, max_within_delta);
      for (size_t l = 0; l < corrections.size(); ++l) {
        grid[i][j].push_back({.qualifies = e.AtMost(l, max_failures),
                              .within_delta = e.AtMost(l, max_within_delta),
                              .cost = e.mean_bytes_touched,
                              .failures = e.failures[l],
                              .error = e.complete ? e.mean_log_partition_error[l] : 0});
        if (options.on_point) {
          options.on_point({topk[i], normalizer[j], corrections[l], e.complete, grid[i][j].back(),
                            e.mean_sample_fraction});
        }
      }
      evaluations[i].push_back(e);
    }
  }
  const std::optional<GridIndex> chosen = ChooseGridPoint(grid);
  if (!chosen) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "no multiplier pair qualifies with any correction: each of the %d evaluated pairs had "
        "more than %d PAC failures among %d calibration queries, the most that keeps the "
        "Clopper-Pearson bound at or below delta = %g; try larger multipliers or more queries "
        "(0 failures needs at least %d calibration queries; a pair whose true failure rate is "
        "near delta needs many more)",
        topk.size() * normalizer.size(), max_failures, calibration.size(), delta, needed));
  }
  const auto [ti, zi, ci] = *chosen;
  const Evaluation& best_eval = evaluations[ti][zi];

  Calibration c;
  c.topk_multiplier = topk[ti];
  c.normalizer_multiplier = normalizer[zi];
  c.lognormal_correction = corrections[ci];
  c.warmup_fraction = base.warmup_fraction;
  c.n = model->n();
  c.d = model->d();
  c.k = query_options.k;
  c.epsilon = query_options.epsilon;
  c.delta = delta;
  c.temperature = query_options.temperature;
  c.confidence = options.confidence;
  c.calibration_queries = calibration.size();
  c.calibration_failures = best_eval.failures[ci];
  c.failure_bound =
      ClopperPearsonUpper(c.calibration_failures, calibration.size(), options.confidence);
  c.calibration_mean_sample_fraction = best_eval.mean_sample_fraction;
  const Evaluation held = evaluator.Evaluate(topk[ti], normalizer[zi], {corrections[ci]}, holdout,
                                             std::numeric_limits<size_t>::max());
  c.holdout_queries = holdout.size();
  c.holdout_failures = held.failures.front();
  c.holdout_failure_rate = static_cast<double>(c.holdout_failures) / holdout.size();
  c.holdout_mean_sample_fraction = held.mean_sample_fraction;
  return c;
}

absl::Status WriteCalibration(const std::string& path, const Calibration& c) {
  nlohmann::ordered_json j;
  j["topk_multiplier"] = c.topk_multiplier;
  j["normalizer_multiplier"] = c.normalizer_multiplier;
  j["lognormal_correction"] = c.lognormal_correction;
  j["warmup_fraction"] = c.warmup_fraction;
  if (c.n != 0) {  // else unknown
    j["n"] = c.n;
    j["d"] = c.d;
  }
  j["k"] = c.k;
  j["epsilon"] = c.epsilon;
  j["delta"] = c.delta;
  j["temperature"] = c.temperature;
  j["confidence"] = c.confidence;
  j["calibration_queries"] = c.calibration_queries;
  j["calibration_failures"] = c.calibration_failures;
  j["failure_bound"] = c.failure_bound;
  j["calibration_mean_sample_fraction"] = c.calibration_mean_sample_fraction;
  j["holdout_queries"] = c.holdout_queries;
  j["holdout_failures"] = c.holdout_failures;
  j["holdout_failure_rate"] = c.holdout_failure_rate;
  j["holdout_mean_sample_fraction"] = c.holdout_mean_sample_fraction;
  std::ofstream out(path, std::ios::trunc);
  if (!out) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: cannot open for writing: %s", path, std::strerror(errno)));
  }
  out << j.dump(2) << "\n";
  out.close();
  if (!out) return absl::InternalError(absl::StrFormat("%s: write failed", path));
  return absl::OkStatus();
}

absl::StatusOr<Calibration> ReadCalibration(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    return absl::NotFoundError(absl::StrFormat("%s: cannot open: %s", path, std::strerror(errno)));
  }
  std::stringstream text;
  text << in.rdbuf();
  const nlohmann::json j = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: not valid JSON", path));
  }
  if (!j.is_object()) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: not a JSON object", path));
  }
  auto bad = [&](const char* key, const std::string& problem) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: %s: %s", path, key, problem));
  };
  // A number in [lo, hi] (open ends when lo_open / hi_open).
  auto number = [&](const char* key, double lo, bool lo_open, double hi, bool hi_open,
                    double* out) -> absl::Status {
    const auto it = j.find(key);
    if (it == j.end()) return bad(key, "missing");
    if (!it->is_number()) return bad(key, "expected a number, got " + it->dump());
    const double v = it->get<double>();
    const bool ok =
        std::isfinite(v) && (lo_open ? v > lo : v >= lo) && (hi_open ? v < hi : v <= hi);
    if (!ok) {
      return bad(key, absl::StrFormat("is %g but must be in %s%g, %g%s", v, lo_open ? "(" : "[", lo,
                                      hi, hi_open ? ")" : "]"));
    }
    *out = v;
    return absl::OkStatus();
  };
  auto count = [&](const char* key, uint64_t min, uint64_t* out) -> absl::Status {
    const auto it = j.find(key);
    if (it == j.end()) return bad(key, "missing");
    if (!it->is_number_unsigned() && !(it->is_number_integer() && it->get<int64_t>() >= 0)) {
      return bad(key, "expected a non-negative integer, got " + it->dump());
    }
    const uint64_t v = it->get<uint64_t>();
    if (v < min) return bad(key, absl::StrFormat("is %d but must be >= %d", v, min));
    *out = v;
    return absl::OkStatus();
  };
  constexpr double kInf = std::numeric_limits<double>::infinity();
  Calibration c;
  RETURN_IF_ERROR(number("topk_multiplier", 0, true, kInf, true, &c.topk_multiplier));
  RETURN_IF_ERROR(number("normalizer_multiplier", 0, true, kInf, true, &c.normalizer_multiplier));
  // Absent from files written before they were recorded, which were calibrated without the
  // correction and with the warm-up's default.
  if (j.contains("lognormal_correction")) {
    RETURN_IF_ERROR(number("lognormal_correction", 0, false, 1, false, &c.lognormal_correction));
  }
  if (j.contains("warmup_fraction")) {
    RETURN_IF_ERROR(number("warmup_fraction", 0, true, 1, false, &c.warmup_fraction));
  }
  if (j.contains("n") || j.contains("d")) {
    RETURN_IF_ERROR(count("n", 1, &c.n));
    RETURN_IF_ERROR(count("d", 1, &c.d));
  }
  uint64_t k = 0;
  RETURN_IF_ERROR(count("k", 1, &k));
  if (k > std::numeric_limits<uint32_t>::max()) return bad("k", "is too large");
  c.k = static_cast<uint32_t>(k);
  RETURN_IF_ERROR(number("epsilon", 0, true, 1, true, &c.epsilon));
  RETURN_IF_ERROR(number("delta", 0, true, 1, true, &c.delta));
  RETURN_IF_ERROR(number("temperature", 0, true, kInf, true, &c.temperature));
  RETURN_IF_ERROR(number("confidence", 0, true, 1, true, &c.confidence));
  RETURN_IF_ERROR(count("calibration_queries", 1, &c.calibration_queries));
  RETURN_IF_ERROR(count("calibration_failures", 0, &c.calibration_failures));
  if (c.calibration_failures > c.calibration_queries) {
    return bad("calibration_failures", "exceeds calibration_queries");
  }
  RETURN_IF_ERROR(number("failure_bound", 0, false, 1, false, &c.failure_bound));
  RETURN_IF_ERROR(number("calibration_mean_sample_fraction", 0, false, 1, false,
                         &c.calibration_mean_sample_fraction));
  RETURN_IF_ERROR(count("holdout_queries", 0, &c.holdout_queries));
  RETURN_IF_ERROR(count("holdout_failures", 0, &c.holdout_failures));
  if (c.holdout_failures > c.holdout_queries) {
    return bad("holdout_failures", "exceeds holdout_queries");
  }
  RETURN_IF_ERROR(number("holdout_failure_rate", 0, false, 1, false, &c.holdout_failure_rate));
  RETURN_IF_ERROR(
      number("holdout_mean_sample_fraction", 0, false, 1, false, &c.holdout_mean_sample_fraction));
  return c;
}

absl::Status CheckCalibrationFits(const Calibration& calibration, const std::string& path,
                                  const Model& model) {
  if (calibration.n == 0 || (calibration.n == model.n() && calibration.d == model.d())) {
    return absl::OkStatus();
  }
  return absl::FailedPreconditionError(
      absl::StrFormat("%s: calibrated on a %d x %d head, but the model is %d x %d", path,
                      calibration.n, calibration.d, model.n(), model.d()));
}

void ApplyCalibration(const Calibration& calibration, AdaptiveOptions& options) {
  options.topk_multiplier = calibration.topk_multiplier;
  options.normalizer_multiplier = calibration.normalizer_multiplier;
  options.lognormal_correction = calibration.lognormal_correction;
  options.warmup_fraction = calibration.warmup_fraction;
  options.min_epsilon = calibration.epsilon;
  options.min_delta = calibration.delta;
}

}  // namespace adasoftmax
