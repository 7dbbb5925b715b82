#ifndef ADASOFTMAX_CORE_PANEL_ORDER_H_
#define ADASOFTMAX_CORE_PANEL_ORDER_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "core/model.h"

namespace adasoftmax {

// Which importance weights the sampled order uses. Both off gives a uniform order.
struct ImportanceOptions {
  bool atom = true;   // weight column j by sum_i |A_ij|
  bool query = true;  // weight column j by |x_j| (by sum_q |x_qj| / |x_q|_1 for a batch)
};

// How evenly the order's weights (below) spread over the panels of one query alone:
// share = (sum_p w_p)^2 / (panels x sum_p w_p^2) over its panels of nonzero weight, in
// [1 / panels, 1]: 1 when they all weigh the same, 1 / panels when one holds all the weight.
// When the weights track |A_ip x_p|, an importance-sampled estimate of A_i . x needs about
// share x panels samples to be as precise as the spread of the logits A_i . x over i.
struct WeightSpread {
  size_t panels = 0;  // panels of nonzero weight
  double share = 0;   // 0 when panels == 0
};
// REQUIRES: x has model.d() entries.
WeightSpread SpreadOfWeights(const Model& model, absl::Span<const float> x,
                             const ImportanceOptions& importance);

// What drawing each query's order from a batch's weights (below) costs it: the variance of an
// importance-sampled estimate of sum_p w_p, with w the query's own weights, drawn in proportion
// to the batch's weights v instead of to w (one panel, with replacement), as a multiple of the
// latter: (sum_p w_p^2 / v_p)(sum_p v_p) / (sum_p w_p)^2 >= 1, and 1 when w is proportional to v
// (an all-zero query's is 1). Samples grow about in proportion: on a 32000 x 4096 head with
// heavy-tailed queries, groups of 9 had a median loss of 1.77 and read 1.94x the entries they
// read alone. One value a query, in order. REQUIRES: each query has model.d()
// entries.
std::vector<double> SharingLosses(const Model& model,
                                  absl::Span<const absl::Span<const float>> queries,
                                  const ImportanceOptions& importance);

// A random order of the column panels (Model::kPanelWidth adjacent columns) a batch of queries
// reads, drawn as a weighted sample without replacement (an exponential race: the same in
// distribution as Gumbel-top-k, with one logarithm per panel instead of three), together with
// the Horvitz-Thompson inclusion probabilities of every prefix the sampler stops at. A panel is the
// sampling unit because one arm's slice of it is one cache line: reading a unit for a single
// arm wastes no bandwidth. A panel's weight is the sum of its columns' weights.
//
// Weights are rounded down to powers of 4 (kBins classes relative to the largest), so the
// panels of one bin (weight class) share an inclusion probability. A sampler therefore keeps,
// per arm and bin, the running sums of a_ip and a_ip^2 (a_ip = the panel's part of A_i . x),
// and re-weights them in O(kBins) when the prefix grows: its work is proportional to the
// samples taken. Rounding keeps the estimator unbiased; it only costs a little variance
// reduction. Bins are numbered in order of first appearance, so the bins with a panel in
// prefix(L) are [0, bins_in_prefix(L)): a sampler need not touch the others.
//
// Prefixes grow geometrically: level L covers the first prefix(L) panels of the order, with
// prefix(0) = 0, prefix(1) = min(16, size()), prefix(L+1) = ceil(1.5 prefix(L)), and the last
// level's prefix = size().
// Within each level's new block the panels are grouped by bin, so a pull sweeps one bin at a
// time. Panels with zero weight (x_j = 0 in every query) never appear.
// Immutable after Draw; thread-safe.
class PanelOrder {
 public:
  static constexpr int kBins = 8;
  static constexpr double kBinRatio = 4.0;

  // REQUIRES: each query has model.d() entries.
  static PanelOrder Draw(const Model& model, absl::Span<const absl::Span<const float>> queries,
                         const ImportanceOptions& importance, uint64_t seed);

  // Number of panels with nonzero weight.
  size_t size() const { return panels_.size(); }
  uint32_t panel(size_t t) const { return panels_[t]; }
  const uint32_t* panel_data() const { return panels_.data(); }
  uint8_t bin(size_t t) const { return bins_[t]; }

  int levels() const { return static_cast<int>(prefix_.size()); }
  int last_level() const { return levels() - 1; }
  size_t prefix(int level) const { return prefix_[level]; }
  int bins_in_prefix(int level) const { return bins_in_prefix_[level]; }
  // The deepest level whose prefix holds at most max(prefix(1), fraction * size()) panels.
  int LevelForFraction(double fraction) const;

  // Consecutive positions [begin, end) of one bin inside a level's new block.
  struct Run {
    uint32_t begin;
    uint32_t end;
    uint8_t bin;
  };
  // The runs covering positions [prefix(level), prefix(level + 1)). REQUIRES: level < last_level().
  absl::Span<const Run> runs(int level) const {
    return absl::MakeConstSpan(runs_).subspan(run_begin_[level],
                                              run_begin_[level + 1] - run_begin_[level]);
  }

  // 1 / q_b and (1 - q_b) / q_b^2 for every bin at `level`.
  const float* inverse_inclusion(int level) const { return &inverse_inclusion_[level * kBins]; }
  const float* variance_factor(int level) const { return &variance_factor_[level * kBins]; }

  // Inclusion probability of a panel of `bin` after the first t panels were read, for any t.
  double InclusionProbability(size_t t, int bin) const;

 private:
  std::vector<uint32_t> panels_;
  std::vector<uint8_t> bins_;
  std::vector<float> arrivals_;  // in increasing order (before regrouping by bin); see Draw
  std::vector<size_t> prefix_;
  std::vector<int> bins_in_prefix_;
  std::array<int, kBins> class_of_bin_;  // weight class: weight ~ kBinRatio^-class
  std::vector<Run> runs_;
  std::vector<size_t> run_begin_;  // first run of each level's block; one entry per level
  std::vector<float> inverse_inclusion_;
  std::vector<float> variance_factor_;
};

}  // namespace adasoftmax

#endif  // ADASOFTMAX_CORE_PANEL_ORDER_H_
