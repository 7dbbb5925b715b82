#include "core/pac.h"

#include <algorithm>
#include <cmath>
#include <functional>

#include "core/panel_kernels.h"

namespace adasoftmax {

ReferenceAnswer ComputeReference(const Model& model, absl::Span<const float> x,
                                 double temperature) {
  const size_t n = model.n(), d = model.d();
  ReferenceAnswer ref;
  ref.logits.resize(n);
  double max = -INFINITY;
  for (size_t i = 0; i < n; ++i) {
    const double dot = RowDot(model.dtype(), model.row(i), x.data(), d);
    ref.logits[i] = temperature * (dot + (model.has_bias() ? model.bias()[i] : 0.0));
    max = std::max(max, ref.logits[i]);
  }
  double sum = 0;
  for (double mu : ref.logits) sum += std::exp(mu - max);
  ref.log_partition = max + std::log(sum);
  return ref;
}

bool MeetsPac(const TopKResult& result, const ReferenceAnswer& reference, uint32_t k,
              double epsilon) {
  if (result.indices.size() != k || result.probabilities.size() != k) return false;
  std::vector<double> sorted = reference.logits;
  std::nth_element(sorted.begin(), sorted.begin() + (k - 1), sorted.end(), std::greater<>());
  const double kth = sorted[k - 1];
  std::vector<uint32_t> seen = result.indices;
  std::sort(seen.begin(), seen.end());
  if (std::adjacent_find(seen.begin(), seen.end()) != seen.end()) return false;
  for (size_t r = 0; r < k; ++r) {
    const uint32_t i = result.indices[r];
    if (i >= reference.logits.size() || reference.logits[i] < kth) return false;
    const double p = std::exp(reference.logits[i] - reference.log_partition);
    if (!(std::fabs(result.probabilities[r] - p) <= epsilon * p)) return false;
  }
  return true;
}

}  // namespace adasoftmax
