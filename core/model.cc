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
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: bias has %d entries but the weights in %s have %d rows", files.bias,
                          bias.size(), files.weights, weights.matrix.rows()));
    }
  }
  return Create(std::move(weights.matrix), std::move(bias), std::move(weights.dtype));
}

absl::StatusOr<std::shared_ptr<const Model>> Model::Create(Matrix weights, std::vector<float> bias,
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
  model->rows_ =
      weights.layout() == Layout::kRowMajor ? std::move(weights) : weights.Copy(Layout::kRowMajor);
  const size_t n = model->n(), d = model->d();
  const float* rows = model->rows_.data();
  model->panels_.Reset(model->panels() * n * kPanelWidth);
  model->column_abs_sums_.assign(d, 0.0f);
  std::vector<double> abs_sums(d, 0.0);
  for (size_t i = 0; i < n; ++i) {
    const float* row = rows + i * d;
    for (size_t j = 0; j < d; ++j) {
      model->panels_[((j / kPanelWidth) * n + i) * kPanelWidth + j % kPanelWidth] = row[j];
      abs_sums[j] += std::fabs(row[j]);
    }
  }
  for (size_t j = 0; j < d; ++j) model->column_abs_sums_[j] = static_cast<float>(abs_sums[j]);
  model->bias_ = std::move(bias);
  model->dtype_ = std::move(dtype);
  return model;
}

size_t Model::memory_bytes() const { return (rows_.size() + panels_.size()) * sizeof(float); }

}  // namespace adasoftmax
