#ifndef ADASOFTMAX_CORE_MODEL_H_
#define ADASOFTMAX_CORE_MODEL_H_

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/dtype.h"
#include "core/huge_buffer.h"
#include "core/matrix.h"
#include "core/tensor_io.h"

namespace adasoftmax {

// Where a model's tensors live on disk, and the dtypes to keep the weights in.
struct ModelFiles {
  std::string weights;      // .npy or .safetensors, shape n x d (row i = class i)
  std::string tensor;       // tensor name inside a .safetensors file; empty for .npy
  std::string bias;         // optional .npy or .safetensors vector of length n
  std::string bias_tensor;  // tensor name inside a .safetensors bias file
  std::optional<DType> dtype;  // none: as stored in the weights file
  // The dtype of the sampler's copy. None: float16 for float32 weights that float16 holds
  // (every |A_ij| < 65520), else the weights' dtype.
  std::optional<DType> sampling_dtype;
  // The most memory loading the model may take: its layouts (memory_bytes()), and the file's
  // data alongside the row-major copy while that is copied. A model that would take more fails
  // to load (ResourceExhausted), before the data is read. None: no bound.
  std::optional<size_t> max_bytes;
};

// The weights A (n x d) in one dtype (float32, float16 or bfloat16), optional float32 bias b
// (length n) and the derived data both softmax paths read. Memory: the row-major matrix for
// the exact path and for the sampler's exact arms, plus a copy in column panels for the
// sampler's sweeps, in sampling_dtype(); both owned and in huge pages, i.e. about n x d x
// (ElementBytes(dtype) + ElementBytes(sampling_dtype)) bytes, plus O(n + d). Loading peaks at
// the larger of that and the file's data plus the row-major matrix: the data is freed in
// between.
//
// The sampling copy: a float16 copy of float32 weights halves the bytes the sampler's sweeps
// read (the README's W2 and W3: 5.8x -> 8.1x and 6.3x -> 9.3x faster than exact) and the
// loaded model's memory (2x -> 1.5x the weight bytes). Its logits differ from the weights' by at
// most |x| sampling_error_norm(); the sampler accounts for that in its bounds (see
// AdaptiveSoftmax), while winners and the exact path read the weights themselves.
//
// Column panels: panel p holds columns [p * kPanelWidth, (p + 1) * kPanelWidth) of every row,
// stored row after row, so a sweep of a panel over consecutive arms streams. The panel is the
// sampler's unit. Width 16 would make one arm's slice a whole cache line, but it blurs the
// per-column importance weights: on 50257 x 768 heavy-tailed queries it raised the theory-mode
// fraction read from 0.55 to 0.72 and cut PAC success to 96-98%; so width 1 (column-major).
// Immutable after creation; thread-safe.
class Model {
 public:
  static absl::StatusOr<std::shared_ptr<const Model>> Load(const ModelFiles& files);
  // OK when loading an n x d model whose data, in `stored`, is held beside the row-major copy
  // while that is made, into `dtype` (none: as stored) and `sampling_dtype` (as ModelFiles'),
  // fits in max_bytes (none: no bound); else ResourceExhausted naming `source` and the bytes.
  // Load checks it before it reads the data; callers that make the data can check it first.
  static absl::Status CheckLoadFits(const std::string& source, size_t n, size_t d, DType stored,
                                    std::optional<DType> dtype, std::optional<DType> sampling_dtype,
                                    std::optional<size_t> max_bytes);
  // REQUIRES: bias is empty or has weights.rows() entries; all values finite and, once rounded
  // to `dtype` and to `sampling_dtype`, still finite (else InvalidArgument naming the entry).
  // sampling_dtype and max_bytes: as ModelFiles'.
  static absl::StatusOr<std::shared_ptr<const Model>> Create(
      Matrix weights, std::vector<float> bias, DType dtype = DType::kFloat32,
      std::optional<DType> sampling_dtype = std::nullopt,
      std::optional<size_t> max_bytes = std::nullopt);

  size_t n() const { return n_; }
  size_t d() const { return d_; }
  DType dtype() const { return dtype_; }
  // The dtype of the sampler's column copy.
  DType sampling_dtype() const { return sampling_dtype_; }
  bool has_bias() const { return !bias_.empty(); }

  static constexpr size_t kPanelWidth = 1;

  // Row i: d entries of dtype().
  const void* row(size_t i) const { return rows_.data() + i * d_ * ElementBytes(dtype_); }
  size_t panels() const { return (d() + kPanelWidth - 1) / kPanelWidth; }
  // Panel p from arm `first_arm` on: (n - first_arm) x kPanelWidth entries of sampling_dtype(),
  // row-major; columns past d are zero.
  const void* panel(size_t p, size_t first_arm = 0) const {
    return panels_.data() + (p * n_ + first_arm) * kPanelWidth * ElementBytes(sampling_dtype_);
  }
  // A_ij widened to float.
  float weight(size_t i, size_t j) const { return WidenAt(dtype_, row(i), j); }
  absl::Span<const float> bias() const { return bias_; }  // empty when there is no bias
  // sum_i |A_ij| for each column j: the "atom" importance of a column.
  absl::Span<const float> column_abs_sums() const { return column_abs_sums_; }
  // max_i |A_i| (Euclidean) and max_i |b_i| (0 without a bias): with |x|, they bound a query's
  // logits.
  double max_row_norm() const { return max_row_norm_; }
  double max_abs_bias() const { return max_abs_bias_; }
  // max_i |C_i - A_i| (Euclidean), C the sampling copy: 0 when it rounds nothing.
  double sampling_error_norm() const { return sampling_error_norm_; }
  // Bytes of weight data held in memory, counting both layouts.
  size_t memory_bytes() const;

 private:
  Model() = default;
  // `source` names the weights in errors.
  static absl::StatusOr<std::shared_ptr<const Model>> Build(RawMatrix weights,
                                                            std::vector<float> bias, DType dtype,
                                                            std::optional<DType> sampling_dtype,
                                                            const std::string& source,
                                                            std::optional<size_t> max_bytes);

  size_t n_ = 0;
  size_t d_ = 0;
  DType dtype_ = DType::kFloat32;
  DType sampling_dtype_ = DType::kFloat32;
  HugeBuffer<std::byte> rows_;  // row-major n x d
  HugeBuffer<std::byte> panels_;
  std::vector<float> bias_;
  std::vector<float> column_abs_sums_;
  double max_row_norm_ = 0;
  double max_abs_bias_ = 0;
  double sampling_error_norm_ = 0;
};

}  // namespace adasoftmax

#endif  // ADASOFTMAX_CORE_MODEL_H_
