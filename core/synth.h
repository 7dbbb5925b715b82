#ifndef ADASOFTMAX_CORE_SYNTH_H_
#define ADASOFTMAX_CORE_SYNTH_H_

// Synthetic LM-head-like data: a weight matrix A, an optional bias b and queries x whose
// softmax(A x + b) has a known top-1 row with a chosen probability. Used by tests, benchmarks
// and the CLI.

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "core/matrix.h"

namespace adasoftmax {

struct SynthOptions {
  size_t n = 50257;      // rows (vocabulary)
  size_t d = 768;        // columns (hidden size)
  size_t queries = 200;  // number of queries
  uint64_t seed = 1;
  double logit_spread = 2.0;               // std of the background logits A_i.x over i (roughly)
  double top1_min = 0.3, top1_max = 0.95;  // true top-1 probability drawn uniformly in this range
  bool heavy_tailed = false;  // queries with heavy-tailed coordinates and a few massive activations
  double column_scale_spread = 0.0;  // std of log per-column scales of A (0 = all columns alike)
  bool bias = false;                 // also generate a bias vector
};

struct SynthData {
  Matrix weights;                     // n x d, row-major
  std::vector<float> bias;            // n entries; empty unless options.bias
  Matrix queries;                     // queries x d, row-major
  std::vector<uint32_t> target_rows;  // the row built to be top-1 for each query
};

// Generates data as follows. All variates come from std::mt19937_64 through this library's own
// transforms, so a seed gives bitwise-identical output for a given build and BLAS library,
// whatever the thread count; separate streams make A independent of the query options and
// each query independent of the others.
// - A_ij = N(0, 1/d) * s_j with per-column scales s_j = exp(column_scale_spread * N(0, 1)).
// - b_i ~ N(0, 0.5) (variance 0.5) when options.bias.
// - Query q: a direction z, dense N(0, 1) or, when heavy_tailed, Student-t (3 degrees of
//   freedom) coordinates plus 2-6 "massive activation" channels (shared by all queries, fixed
//   sign, magnitude 20-100 times the background RMS, varying per query); a target row r drawn
//   uniformly; a probability p drawn uniformly from [top1_min, top1_max]. Then
//   x = s z + c A_r / |A_r|^2, with c (safeguarded Newton steps in double precision) making
//   softmax(A x + b)_r = p up to float rounding (~1e-5), and s making the std over i != r of
//   (A x)_i equal logit_spread (alternating with c a few rounds; within a few percent).
//   In heavy-tailed queries the top 1% of coordinates then hold ~85-95% of |x|_2^2 and
//   ~20-35% of |x|_1 (the dense A_r term bounds the latter), against ~8% and ~3% for dense.
//   The draw is repeated when r cannot be top-1 with probability p and a logit margin of at
//   least 1e-3 (e.g. p < 1/2 with tiny n), so p is then biased towards feasible values.
// Returns InvalidArgumentError for invalid options (n < 2, d < 1, n or d >= 2^31, n x d or
// queries x d > 2^32, logit_spread not positive and finite, not 0 < top1_min <= top1_max < 1,
// column_scale_spread outside [0, 3]) or when some query stays infeasible after 100 draws.
// Takes ~2 s for the default options on 2 cores. Memory: the outputs plus 64 x n floats and
// 3 x n doubles per thread of scratch. Thread-safe.
absl::StatusOr<SynthData> Synthesize(const SynthOptions& options);

}  // namespace adasoftmax

#endif  // ADASOFTMAX_CORE_SYNTH_H_
