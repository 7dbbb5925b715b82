#include "core/model.h"

#include <cmath>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "core/status_macros.h"
#include "core/tensor_io.h"

namespace adasoftmax {

absl::StatusOr<std::shared_ptr<const Model>> Model::Load(const ModelFiles& files) {
  ASSIGN_OR_RETURN(LoadedMatrix weights, ReadMatrix(files.weights, files.tensor));
  std::vector<float> bias;
  if (!files.bias.empty()) {
    ASSIGN_OR_RETURN(bias, ReadVector(files.bias, files.bias_tensor));
    if (bias.size() != weights.matrix.rows()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: bias has %d entries but the weights in %s have %d rows", files.bias, bias.size(),
          files.weights, weights.matrix.rows()));
    }
  }
  return Create(std::move(weights.matrix), std::move(bias), std::move(weights.dtype));
}

absl::StatusOr<std::shared_ptr<const Model>> Model::Create(Matrix weights,
                                                           std::vector<float> bias,
                                                           std::string dtype) {
  if (weights.rows() == 0 || weights.cols() == 0) {
    return absl::InvalidArgumentError("weights are empty");
  }
  if (!bias.empty() && bias.size() != weights.rows()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "bias has %d entries but the weights have %d rows", bias.size(), weights.rows()));
  }
  for (size_t i = 0; i < bias.size(); ++i) {
    if (!std::isfinite(bias[i])) {
      return absl::InvalidArgumentError(absl::StrFormat("bias[%d] is not finite", i));
    }
  }
  std::shared_ptr<Model> model(new Model);
  if (weights.layout() == Layout::kRowMajor) {
    model->columns_ = weights.Copy(Layout::kColMajor);
    model->rows_ = std::move(weights);
  } else {
    model->rows_ = weights.Copy(Layout::kRowMajor);
    model->columns_ = std::move(weights);
  }
  const size_t n = model->n();
  model->column_abs_sums_.resize(model->d());
  for (size_t j = 0; j < model->d(); ++j) {
    const float* column = model->columns_.data() + j * n;
    double sum = 0;
    for (size_t i = 0; i < n; ++i) sum += std::fabs(column[i]);
    model->column_abs_sums_[j] = static_cast<float>(sum);
  }
  model->bias_ = std::move(bias);
  model->dtype_ = std::move(dtype);
  return model;
}

size_t Model::memory_bytes() const {
  return (rows_.size() + columns_.size()) * sizeof(float);
}

}  // namespace adasoftmax
