#ifndef ADASOFTMAX_CORE_EXACT_SOFTMAX_H_
#define ADASOFTMAX_CORE_EXACT_SOFTMAX_H_

#include <memory>
#include <vector>

#include "core/topk_softmax.h"

namespace adasoftmax {

// Exact top-k softmax: all logits by RawProducts, then one fused pass per query keeping the
// running max, the rescaled sum and a top-k heap. The logits go to a buffer each calling thread
// keeps, as large as the largest batch it answered (n floats a query). Thread-safe.
class ExactSoftmax : public TopKSoftmax {
 public:
  explicit ExactSoftmax(std::shared_ptr<const Model> model) : model_(std::move(model)) {}

  std::vector<TopKResult> Run(absl::Span<const Query> queries) const override;
  const Model& model() const override { return *model_; }

 private:
  std::shared_ptr<const Model> model_;
};

// A single query on weights of at least this many bytes (in their dtype), which stream from
// memory, is read by RowsDotVector, several sequential streams per thread (see
// RowsDotVectorF32), unless its rows are float32 and longer than kStreamMaxColumns. Against
// OpenBLAS's SGEMV (`bench`, interleaved), with one stream per thread: 1.15-1.25x as fast on
// 50257 x 768 float32 (154 MB), 0.98-1.05x on 32000 x 4096 (524 MB), 1.4-1.8x on 16-31 MB; on
// an Emerald Rapids host, 0.86-0.91x and 0.85-0.87x, and with four streams 0.90-0.95x and
// 0.88-0.89x; on a Zen 5 host, with two, 1.00-1.03x on 50257 x 768. Smaller weights stay in the
// README machine's 32 MB L3 and SGEMV, which computes faster, ties or wins: 4000 x 768 (12 MB)
// alike, the 6625 x 120 OCR head 55 against 153 us.
inline constexpr size_t kStreamMinBytes = size_t{16} << 20;
// Longer float32 rows go to SGEMV, which read 4096-entry rows as fast on one machine and 12%
// faster on the other (above). Half-precision rows always stream: BLAS reads them widened.
inline constexpr size_t kStreamMaxColumns = 1024;

// The exact path's products out[q * n + i] = A_i . x_q, on the worker pool: for one query by
// RowsDotVector from kStreamMinBytes on (see kStreamMaxColumns), by SGEMV otherwise; for a
// batch by SGEMMs on blocks of rows. BLAS reads half-precision rows widened block by block.
// What the exact path costs without its softmax pass. REQUIRES: out.size() == queries.size() *
// model.n().
void RawProducts(const Model& model, absl::Span<const Query> queries, absl::Span<float> out);

// The bare BLAS product out[i] = A_i . x by cblas_sgemv, single-threaded on each worker's share
// of the rows (half-precision rows widened block by block): the yardstick of RawProducts.
// REQUIRES: x.size() == model.d(), out.size() == model.n().
void SgemvProducts(const Model& model, absl::Span<const float> x, absl::Span<float> out);

// The fused pass: logits mu_i = temperature * (raw_i + bias_i) for the n = raw.size() entries
// (bias may be empty). Returns the top k by decreasing logit (ties: lower index first) and
// log Z (float exponentials summed in double, see SumExp), with samples left at 0.
// REQUIRES: 1 <= k <= raw.size().
TopKResult SoftmaxTopK(absl::Span<const float> raw, absl::Span<const float> bias,
                       double temperature, uint32_t k);

}  // namespace adasoftmax

#endif  // ADASOFTMAX_CORE_EXACT_SOFTMAX_H_
