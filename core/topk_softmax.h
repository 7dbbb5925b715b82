#ifndef ADASOFTMAX_CORE_TOPK_SOFTMAX_H_
#define ADASOFTMAX_CORE_TOPK_SOFTMAX_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "core/model.h"

namespace adasoftmax {

// Per-query parameters. Logits are mu_i = temperature * (A_i . x + b_i).
struct QueryOptions {
  // Number of top entries returned. REQUIRES: 1 <= k <= n. Default: 1.
  uint32_t k = 1;
  // Relative error allowed on each returned probability. REQUIRES: 0 < epsilon < 1.
  double epsilon = 0.3;
  // Allowed failure probability of the (epsilon, delta) guarantee. REQUIRES: 0 < delta < 1.
  double delta = 0.01;
  // Multiplies the logits. REQUIRES: finite and > 0. Default: 1.
  double temperature = 1.0;
  // Seed of the sampling order; 0 draws a fresh seed. A query answered alone with a nonzero seed
  // gives the same answer, bit for bit, every time. Ignored by the exact path.
  uint64_t seed = 0;
};

struct Query {
  absl::Span<const float> x;  // length d
  QueryOptions options;
  // Optional; polled between sampling phases. Once it returns true (the caller went away or
  // its deadline passed) the query stops using compute and its result has no indices. The
  // other queries of the batch are unaffected. Must be callable from any thread: the solver's
  // workers poll it too (one call at a time for a query).
  std::function<bool()> stop;
};

struct TopKResult {
  std::vector<uint32_t> indices;      // k classes, by decreasing logit (ties: lower index first)
  std::vector<double> logits;         // mu_i of each returned class, computed exactly
  std::vector<double> probabilities;  // exp(mu_i - log_partition)
  double log_partition = 0;           // log Z, estimated by the adaptive path
  uint64_t samples = 0;               // entries of A read for this query, each counted once
  double sample_fraction = 0;         // samples / (n * d)
  // Bytes of A the kernels read for this query, wasted ones included: the sampler's column
  // sweeps read every arm of a chunk, wanted or not, and a gathered entry costs a 64-byte cache
  // line. Reads a batch shares count in full for each query that used them.
  uint64_t bytes_touched = 0;
  bool exact = false;                 // true when every logit was computed exactly
};

// Checks a query against the model once on entry; the solvers assume valid queries.
absl::Status ValidateQuery(const Model& model, const Query& query);

// Answers top-k softmax queries against one model. Implementations are thread-safe: Run may be
// called concurrently.
class TopKSoftmax {
 public:
  virtual ~TopKSoftmax() = default;

  // Answers a batch; result i answers queries[i]. REQUIRES: ValidateQuery(q).ok() for each q.
  virtual std::vector<TopKResult> Run(absl::Span<const Query> queries) const = 0;

  // Validates and answers one query.
  absl::StatusOr<TopKResult> Answer(const Query& query) const;

  virtual const Model& model() const = 0;
};

}  // namespace adasoftmax

#endif  // ADASOFTMAX_CORE_TOPK_SOFTMAX_H_
