#ifndef ADASOFTMAX_CORE_MODEL_H_
#define ADASOFTMAX_CORE_MODEL_H_

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/matrix.h"

namespace adasoftmax {

// Where a model's tensors live on disk.
struct ModelFiles {
  std::string weights;      // .npy or .safetensors, shape n x d (row i = class i)
  std::string tensor;       // tensor name inside a .safetensors file; empty for .npy
  std::string bias;         // optional .npy or .safetensors vector of length n
  std::string bias_tensor;  // tensor name inside a .safetensors bias file
};

// The weights A (n x d), optional bias b (length n) and the derived data both softmax paths
// read. Memory: the row-major matrix (memory-mapped when the file allows, else owned) plus an
// owned column-major copy, i.e. 2 x n x d x 4 bytes, plus O(n + d) for bias and column norms.
// Immutable after creation; thread-safe.
class Model {
 public:
  static absl::StatusOr<std::shared_ptr<const Model>> Load(const ModelFiles& files);
  // REQUIRES: bias is empty or has weights.rows() entries; all values finite.
  static absl::StatusOr<std::shared_ptr<const Model>> Create(Matrix weights,
                                                             std::vector<float> bias,
                                                             std::string dtype = "float32");

  size_t n() const { return rows_.rows(); }
  size_t d() const { return rows_.cols(); }
  const std::string& dtype() const { return dtype_; }
  bool has_bias() const { return !bias_.empty(); }

  const Matrix& rows() const { return rows_; }        // row-major n x d
  const Matrix& columns() const { return columns_; }  // column-major n x d
  absl::Span<const float> bias() const { return bias_; }  // empty when there is no bias
  // sum_i |A_ij| for each column j: the "atom" importance of a column.
  absl::Span<const float> column_abs_sums() const { return column_abs_sums_; }
  // Bytes of weight data held in memory, counting both layouts.
  size_t memory_bytes() const;

 private:
  Model() = default;

  Matrix rows_;
  Matrix columns_;
  std::vector<float> bias_;
  std::vector<float> column_abs_sums_;
  std::string dtype_;
};

}  // namespace adasoftmax

#endif  // ADASOFTMAX_CORE_MODEL_H_
