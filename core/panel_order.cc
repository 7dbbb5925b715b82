#include "core/panel_order.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <limits>
#include <numeric>

#include "core/random.h"
#include "core/softmax_kernels.h"

namespace adasoftmax {
namespace {

constexpr size_t kFirstPrefix = std::max<size_t>(4, 16 / Model::kPanelWidth);
constexpr double kGrowth = 1.5;
static_assert(PanelOrder::kBinRatio == 4, "Draw finds weight classes as halved binary exponents");
constexpr std::array<double, PanelOrder::kBins> kPowerOf4 = {1, 4, 16, 64, 256, 1024, 4096, 16384};
// Keeps 1/q and (1-q)/q^2 finite in float for panels that were drawn against the odds.
constexpr double kMinInclusion = 1e-12;

// The order's weight of every panel: the sum over its columns of the query weight (|x_j| / |x|_1
// summed over the queries, or the count of queries with x_j != 0) times the atom weight.
std::vector<double> PanelWeights(const Model& model,
                                 absl::Span<const absl::Span<const float>> queries,
                                 const ImportanceOptions& importance) {
  const size_t d = model.d();
  std::vector<double> query_weight(d, 0.0);
  for (absl::Span<const float> x : queries) {
    double l1 = 0;
    for (float v : x) l1 += std::fabs(v);
    if (l1 == 0) continue;
    for (size_t j = 0; j < d; ++j) {
      if (x[j] != 0) query_weight[j] += importance.query ? std::fabs(x[j]) / l1 : 1.0;
    }
  }
  std::vector<double> weight(model.panels(), 0.0);
  for (size_t j = 0; j < d; ++j) {
    const double atom = model.column_abs_sums()[j];
    if (atom == 0) continue;  // an all-zero column contributes exactly zero
    weight[j / Model::kPanelWidth] += query_weight[j] * (importance.atom ? atom : 1.0);
  }
  return weight;
}

// `items` sorted by ascending key[item], ties in their given order: a least-significant-digit
// radix sort on the keys' bits (in the order of the values, as they are non-negative), a byte
// at a time. std::sort took 44 us for 768 panels and 244 us for 4096, mostly mispredicted
// comparisons. REQUIRES: every key[item] >= 0.
void SortByAscendingKey(std::vector<uint32_t>& items, const std::vector<float>& key) {
  std::vector<std::pair<uint32_t, uint32_t>> from(items.size()), to(items.size());
  for (size_t t = 0; t < items.size(); ++t) {
    from[t] = {std::bit_cast<uint32_t>(key[items[t]]), items[t]};
  }
  for (int shift = 0; shift < 32; shift += 8) {
    std::array<size_t, 257> start{};  // start[b + 1] counts digit b, then becomes b's offset
    for (const auto& [bits, item] : from) ++start[(bits >> shift & 0xff) + 1];
    if (std::find(start.begin(), start.end(), from.size()) != start.end()) continue;  // one digit
    std::partial_sum(start.begin(), start.end(), start.begin());
    for (const auto& entry : from) to[start[entry.first >> shift & 0xff]++] = entry;
    from.swap(to);
  }
  for (size_t t = 0; t < items.size(); ++t) items[t] = from[t].second;
}

// [begin, end) of `items` grouped by bin_of[item] in increasing order, each bin in its given
// order (a counting sort).
void GroupByBin(std::vector<uint32_t>& items, size_t begin, size_t end,
                const std::vector<uint8_t>& bin_of) {
  std::array<size_t, PanelOrder::kBins + 1> start{};
  for (size_t t = begin; t < end; ++t) ++start[bin_of[items[t]] + 1];
  std::partial_sum(start.begin(), start.end(), start.begin());
  std::vector<uint32_t> grouped(end - begin);
  for (size_t t = begin; t < end; ++t) grouped[start[bin_of[items[t]]]++] = items[t];
  std::copy(grouped.begin(), grouped.end(), items.begin() + begin);
}

}  // namespace

WeightSpread SpreadOfWeights(const Model& model, absl::Span<const float> x,
                             const ImportanceOptions& importance) {
  const std::vector<double> weight = PanelWeights(model, absl::MakeConstSpan(&x, 1), importance);
  WeightSpread spread;
  double sum = 0, sum_sq = 0;
  for (double w : weight) {
    spread.panels += w > 0;
    sum += w;
    sum_sq += w * w;
  }
  if (spread.panels > 0) spread.share = sum * sum / (static_cast<double>(spread.panels) * sum_sq);
  return spread;
}

std::vector<double> SharingLosses(const Model& model,
                                  absl::Span<const absl::Span<const float>> queries,
                                  const ImportanceOptions& importance) {
  const std::vector<double> batch = PanelWeights(model, queries, importance);
  const double batch_sum = std::accumulate(batch.begin(), batch.end(), 0.0);
  std::vector<double> losses;
  for (absl::Span<const float> x : queries) {
    const std::vector<double> own = PanelWeights(model, absl::MakeConstSpan(&x, 1), importance);
    double sum = 0, ratio_sum = 0;  // of w_p and of w_p^2 / v_p (v_p > 0 wherever w_p > 0)
    for (size_t p = 0; p < own.size(); ++p) {
      if (own[p] == 0) continue;
      sum += own[p];
      ratio_sum += own[p] * own[p] / batch[p];
    }
    losses.push_back(sum > 0 ? ratio_sum * batch_sum / (sum * sum) : 1.0);
  }
  return losses;
}

PanelOrder PanelOrder::Draw(const Model& model, absl::Span<const absl::Span<const float>> queries,
                            const ImportanceOptions& importance, uint64_t seed) {
  const std::vector<double> weight = PanelWeights(model, queries, importance);
  const size_t panels = weight.size();
  std::vector<uint32_t> candidates;
  candidates.reserve(panels);
  double top_weight = 0;
  for (size_t p = 0; p < panels; ++p) {
    if (weight[p] == 0) continue;
    top_weight = std::max(top_weight, weight[p]);
    candidates.push_back(static_cast<uint32_t>(p));
  }

  // An exponential race, the same in distribution as Gumbel-top-k on the log weights: panel j
  // arrives at E_j / w_j with E_j ~ Exp(1), and the order is by arrival. With w_j rounded down to
  // top_weight x 4^-class (class = floor(log4(top_weight / w_j)), at most kBins - 1), arrivals
  // are measured in units of 1 / top_weight.
  PanelOrder order;
  // E_j = -log(u_j), with u_j the j-th output of the SplitMix64 stream seeded by `seed`:
  // independent of the weights, and computed in loops that vectorise.
  std::vector<double> exponential(panels);
  for (size_t j = 0; j < panels; ++j) {
    exponential[j] = OpenUniform(SplitMix64(seed + j * kSplitMix64Gamma));
  }
  NegativeLogs(exponential.data(), panels);
  std::vector<float> arrival(panels);  // float: half the bits to sort
  std::vector<uint8_t> bin_of(panels);
  for (uint32_t j : candidates) {
    // floor(log4(r)) = floor(floor(log2(r)) / 2) for r >= 1, where floor(log2(r)) is r's binary
    // exponent (1024 for an overflow to infinity).
    const double r = top_weight / weight[j];
    const int steps = (static_cast<int>(std::bit_cast<uint64_t>(r) >> 52) - 1023) / 2;
    bin_of[j] = static_cast<uint8_t>(std::min(kBins - 1, steps));
    arrival[j] = static_cast<float>(exponential[j] * kPowerOf4[bin_of[j]]);
  }
  SortByAscendingKey(candidates, arrival);  // ties in index order, as candidates are
  const size_t m = candidates.size();
  order.arrivals_.resize(m);
  for (size_t t = 0; t < m; ++t) order.arrivals_[t] = arrival[candidates[t]];

  order.prefix_.push_back(0);
  if (m > 0) order.prefix_.push_back(std::min(kFirstPrefix, m));
  while (order.prefix_.back() < m) {
    const size_t next = static_cast<size_t>(std::ceil(order.prefix_.back() * kGrowth));
    order.prefix_.push_back(std::min(next, m));
  }

  // Number the weight classes in order of first appearance.
  std::array<int, kBins> bin_of_class;
  bin_of_class.fill(-1);
  order.class_of_bin_.fill(kBins - 1);
  std::vector<size_t> first_position;
  for (size_t t = 0; t < m; ++t) {
    int& bin = bin_of_class[bin_of[candidates[t]]];
    if (bin >= 0) continue;
    bin = static_cast<int>(first_position.size());
    order.class_of_bin_[bin] = bin_of[candidates[t]];
    first_position.push_back(t);
  }
  for (uint32_t j : candidates) bin_of[j] = static_cast<uint8_t>(bin_of_class[bin_of[j]]);
  for (size_t prefix : order.prefix_) {
    order.bins_in_prefix_.push_back(static_cast<int>(
        std::lower_bound(first_position.begin(), first_position.end(), prefix) -
        first_position.begin()));
  }

  // Group each level's new block by bin; prefixes at level boundaries keep their sets.
  size_t begin = 0;
  for (size_t end : order.prefix_) {
    GroupByBin(candidates, begin, end, bin_of);
    begin = end;
  }
  order.panels_ = std::move(candidates);
  order.bins_.resize(m);
  for (size_t t = 0; t < m; ++t) order.bins_[t] = bin_of[order.panels_[t]];

  for (int level = 0; level < order.levels(); ++level) {
    order.run_begin_.push_back(order.runs_.size());
    if (level == order.last_level()) break;
    for (size_t t = order.prefix_[level]; t < order.prefix_[level + 1]; ++t) {
      if (order.runs_.size() == order.run_begin_.back() ||
          order.runs_.back().bin != order.bins_[t]) {
        order.runs_.push_back({static_cast<uint32_t>(t), static_cast<uint32_t>(t), order.bins_[t]});
      }
      ++order.runs_.back().end;
    }
  }
  for (int level = 0; level < order.levels(); ++level) {
    for (int b = 0; b < kBins; ++b) {
      const double q = std::max(kMinInclusion, order.InclusionProbability(order.prefix_[level], b));
      order.inverse_inclusion_.push_back(static_cast<float>(1.0 / q));
      order.variance_factor_.push_back(static_cast<float>((1.0 - q) / (q * q)));
    }
  }
  return order;
}

double PanelOrder::InclusionProbability(size_t t, int bin) const {
  if (t >= arrivals_.size()) return 1.0;
  // A panel of weight w is in the prefix when it arrived before the t-th arrival a_t (0-based),
  // with probability 1 - exp(-w a_t) given the others.
  return -std::expm1(-arrivals_[t] / kPowerOf4[class_of_bin_[bin]]);
}

int PanelOrder::LevelForFraction(double fraction) const {
  if (levels() == 1) return 0;
  const double limit = std::max<double>(prefix_[1], fraction * static_cast<double>(size()));
  int level = 1;
  while (level + 1 < levels() && static_cast<double>(prefix_[level + 1]) <= limit) ++level;
  return level;
}

}  // namespace adasoftmax
