#ifndef ADASOFTMAX_CORE_EXACT_SOFTMAX_H_
#define ADASOFTMAX_CORE_EXACT_SOFTMAX_H_

#include <memory>
#include <vector>

#include "core/topk_softmax.h"

namespace adasoftmax {

// Exact top-k softmax: all logits by BLAS (SGEMV for one query, blocked SGEMM for a batch),
// then one fused pass per query keeping the running max, the rescaled sum and a top-k heap.
// Thread-safe.
class ExactSoftmax : public TopKSoftmax {
 public:
  explicit ExactSoftmax(std::shared_ptr<const Model> model) : model_(std::move(model)) {}

  std::vector<TopKResult> Run(absl::Span<const Query> queries) const override;
  const Model& model() const override { return *model_; }

 private:
  std::shared_ptr<const Model> model_;
};

// The bare BLAS products out[q * n + i] = A_i . x_q by SGEMV (one query) or SGEMM: what the
// exact path costs without its softmax pass, the yardstick of its overhead.
// REQUIRES: out.size() == queries.size() * model.n().
void RawProducts(const Model& model, absl::Span<const Query> queries, absl::Span<float> out);

// The fused pass: logits mu_i = temperature * (raw_i + bias_i) for the n = raw.size() entries
// (bias may be empty). Returns the top k by decreasing logit (ties: lower index first) and
// log Z, with samples left at 0. REQUIRES: 1 <= k <= raw.size().
TopKResult SoftmaxTopK(absl::Span<const float> raw, absl::Span<const float> bias,
                       double temperature, uint32_t k);

}  // namespace adasoftmax

#endif  // ADASOFTMAX_CORE_EXACT_SOFTMAX_H_
