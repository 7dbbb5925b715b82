#ifndef ADASOFTMAX_CORE_CALIBRATION_H_
#define ADASOFTMAX_CORE_CALIBRATION_H_

// Calibration of the adaptive path's variance multipliers and lognormal correction ("Learn then
// Test", Angelopoulos et al. 2021): pick cheap ones whose Clopper-Pearson upper confidence bound
// on the PAC failure rate, measured on calibration queries, is at most delta, and whose
// neighbours on the grid failed at most a delta share of them (ChooseGridPoint); then report
// the failure rate of that choice on held-out queries that played no part in the choice.

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/adaptive_softmax.h"
#include "core/matrix.h"
#include "core/model.h"
#include "core/topk_softmax.h"

namespace adasoftmax {

// One-sided Clopper-Pearson upper bound on a binomial rate: the p at which observing at most
// `failures` of `trials` has probability 1 - confidence. Computed by bisection on the binomial
// CDF, summed in log space (lgamma), so it stays accurate for trials up to 1e6.
// Returns 1 when trials == 0 or failures >= trials.
// REQUIRES: 0 < confidence < 1.
double ClopperPearsonUpper(size_t failures, size_t trials, double confidence);

// The fewest trials that can bound a rate at or below `rate` with 0 failures:
// ceil(log(1 - confidence) / log(1 - rate)). REQUIRES: 0 < rate, confidence < 1.
size_t MinimumTrials(double rate, double confidence);

struct EvaluatedPoint;

struct CalibrationOptions {
  // Share of the queries held out for verification: the last round(holdout_fraction * N)
  // queries. REQUIRES: in (0, 1), and both splits non-empty. Default: 0.3.
  double holdout_fraction = 0.3;
  // Confidence of the Clopper-Pearson bound. REQUIRES: in (0, 1). Default: 0.95.
  double confidence = 0.95;
  // Candidate top-k and normaliser multipliers, below and above 1 (the theory's values). A
  // smaller top-k multiplier is cheaper and riskier; the normaliser multiplier also scales the
  // warm-up, and both far below and above 1 can be cheaper. An edge value is never chosen when
  // an interior one qualifies (see ChooseGridPoint): with 10 the largest, W2 and W3 chose 5; with
  // 20 and 30, 20 (W2 0.092 of A read against 0.095, W3 0.098 against 0.102). REQUIRES:
  // non-empty, every entry finite and > 0.
  std::vector<double> topk_grid = {1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 0.5, 0.7, 1, 2, 3};
  std::vector<double> normalizer_grid = {1e-5, 1e-4, 1e-3, 0.01, 0.1, 1, 2, 3, 5, 10, 20, 30};
  // Candidate AdaptiveOptions::lognormal_correction values. The correction moves only the
  // partition function, so each multiplier pair's sampling run scores all of them. REQUIRES:
  // non-empty, every entry in [0, 1].
  std::vector<double> correction_grid = {0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1};
  // Query q (row index) runs with a nonzero seed derived from (seed, q), the same at every grid
  // point (common random numbers), so calibration is reproducible and comparisons between grid
  // points are not blurred by sampling noise. Default: 1.
  uint64_t seed = 1;
  // Worker threads evaluating queries in parallel; results do not depend on it.
  // REQUIRES: >= 1. Default: 1.
  int threads = 1;
  // Called on the calling thread with each point of the grid once evaluated, in (i, j, l)
  // order: the landscape the choice was made on, and progress. Default: none.
  std::function<void(const EvaluatedPoint&)> on_point;
};

// The result of Calibrate, and the contents of a calibration file.
struct Calibration {
  double topk_multiplier = 1;
  double normalizer_multiplier = 1;
  // The AdaptiveOptions::lognormal_correction chosen with them.
  double lognormal_correction = 0;
  // The AdaptiveOptions::warmup_fraction they were calibrated with: they hold with it alone.
  double warmup_fraction = AdaptiveOptions{}.warmup_fraction;
  // The shape (n x d) of the head calibrated on; 0 x 0 when unknown (files written before it
  // was recorded).
  uint64_t n = 0;
  uint64_t d = 0;
  // The query parameters the multipliers were calibrated for.
  uint32_t k = 1;
  double epsilon = 0.3;
  double delta = 0.01;
  double temperature = 1;
  double confidence = 0.95;
  // Calibration split: size, PAC failures of the chosen multipliers and correction, their
  // Clopper-Pearson upper bound (<= delta) and mean samples / (n * d).
  uint64_t calibration_queries = 0;
  uint64_t calibration_failures = 0;
  double failure_bound = 0;
  double calibration_mean_sample_fraction = 0;
  // Held-out split, answered with the chosen multipliers.
  uint64_t holdout_queries = 0;
  uint64_t holdout_failures = 0;
  double holdout_failure_rate = 0;
  double holdout_mean_sample_fraction = 0;
};

// One evaluated point of the calibration grid.
struct GridPoint {
  bool qualifies = false;     // its failure bound is at most delta
  bool within_delta = false;  // its failure rate is: a qualifying point's is
  double cost = 0;            // mean bytes of A touched per query (TopKResult::bytes_touched)
  size_t failures = 0;        // PAC failures among the calibration queries
  double error = 0;           // mean absolute error of the log partition over them
};

// Points indexed [top-k multiplier i][normaliser multiplier j][correction l], each ascending.
// Rectangular, every dimension non-empty.
using CalibrationGrid = std::vector<std::vector<std::vector<GridPoint>>>;
using GridIndex = std::array<size_t, 3>;

// A point of the grid with its coordinates, as reported to CalibrationOptions::on_point.
struct EvaluatedPoint {
  double topk_multiplier = 0;
  double normalizer_multiplier = 0;
  double lognormal_correction = 0;
  // False when the pair's evaluation stopped early, every correction's failures over the limit
  // of a point within delta; its failures then count those up to the stop, and its cost,
  // error and mean_sample_fraction are 0.
  bool complete = false;
  GridPoint point;
  double mean_sample_fraction = 0;
};

// The point Calibrate picks: the qualifying point of least cost among those with a margin, whose
// two neighbours along each axis of more than one value (i +/- 1, j +/- 1, l +/- 1) are within
// delta; when no qualifying point has that margin, the cheapest qualifying point. A neighbour
// far above delta marks a cliff in the failure rate that the point may have passed by luck; one
// within delta need not have the queries to bound its rate. Ties (a pair's corrections cost the
// same) go to fewer failures, then to the smaller error, then to the first in (i, j, l) order.
// None when no point qualifies.
std::optional<GridIndex> ChooseGridPoint(const CalibrationGrid& grid);

// Chooses the multipliers and lognormal correction for `model` and the queries' parameters (k,
// epsilon, delta, temperature from `query_options`; its seed is ignored in favour of
// options.seed). `queries` holds one query per row (d columns); the first N -
// round(holdout_fraction * N) rows calibrate, the rest are held out. The other fields of `base`
// (warm-up fraction, importance) are kept, and its warm-up fraction is recorded in the result;
// its lognormal_correction is ignored.
//
// Every query is answered alone (a batch of 1) and checked with MeetsPac against its exact
// double-precision reference (ComputeReference, computed once per query: memory 8 n bytes per
// query), once per correction, from one sampling run per multiplier pair (see
// AdaptiveSoftmax::RunWithCorrections). A grid point qualifies when
// ClopperPearsonUpper(failures, calibration queries, confidence) <= delta; a pair's evaluation
// stops as soon as every correction's failures exceed what the bound allows. Every pair of the
// grid is evaluated: failures are not monotone in the multipliers (on a GPT-2-sized head, a
// top-k multiplier of 0.5 passes with normaliser multiplier 3 and fails with 5, and 0.3 passes
// with 0.001 and fails with 3), and neither are samples. The choice is ChooseGridPoint's: a
// qualifying point beside a failing one may have passed by luck, next to a cliff in the failure
// rate. Its cost is the bytes the kernels touch, which tracks wall-clock time better than
// samples do: on the 128256 x 4096 head, the pair with the fewest samples (0.137 of A against
// 0.150) touched 17% more bytes and took 1.5x as long.
//
// The exact fallback is off while evaluating, and every query is sampled (base.sample_cost,
// min_epsilon and min_delta are ignored).
//
// The bound holds for each point separately; choosing the cheapest of several qualifying points
// is what the held-out split checks.
//
// Errors: InvalidArgument naming the field for bad options or queries; FailedPrecondition when
// the calibration split is too small for any point to qualify, or when none does, with the
// number of calibration queries needed at least.
absl::StatusOr<Calibration> Calibrate(std::shared_ptr<const Model> model, const Matrix& queries,
                                      const QueryOptions& query_options,
                                      const AdaptiveOptions& base,
                                      const CalibrationOptions& options);

// Writes `calibration` as a pretty-printed JSON object with one key per field (n and d only
// when known).
absl::Status WriteCalibration(const std::string& path, const Calibration& calibration);

// Reads a file written by WriteCalibration. Every key is required but lognormal_correction,
// warmup_fraction, n and d, absent from files written before they were recorded (0, 0.1 and an
// unknown shape then; n and d come together). Errors
// are InvalidArgument("<path>: <key>: <problem>") for missing keys, wrong types and out-of-range
// values (e.g. non-positive multipliers), NotFound for a missing file.
absl::StatusOr<Calibration> ReadCalibration(const std::string& path);

// OK when `calibration` (read from `path`) was made on a head of `model`'s shape, or records no
// shape; else FailedPrecondition("<path>: ...") naming both shapes: multipliers calibrated on
// another head promise nothing on this one.
absl::Status CheckCalibrationFits(const Calibration& calibration, const std::string& path,
                                  const Model& model);

// Sets options' multipliers, lognormal_correction and warmup_fraction to the calibration's, and
// its min_epsilon and min_delta to the epsilon and delta they were calibrated for: stricter
// queries are answered exactly.
void ApplyCalibration(const Calibration& calibration, AdaptiveOptions& options);

}  // namespace adasoftmax

#endif  // ADASOFTMAX_CORE_CALIBRATION_H_
