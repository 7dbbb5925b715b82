#include "core/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "core/panel_kernels.h"
#include "core/status_macros.h"

namespace adasoftmax {
namespace {

// See ModelFiles::sampling_dtype. float16 rounds |v| >= 65520 to infinity.
DType DefaultSamplingDType(DType dtype, const void* weights, size_t entries) {
  if (dtype != DType::kFloat32) return dtype;
  const float* values = static_cast<const float*>(weights);
  float largest = 0;
  for (size_t k = 0; k < entries; ++k) largest = std::max(largest, std::fabs(values[k]));
  return largest < 65520.0f ? DType::kFloat16 : dtype;
}

// The least bytes an entry of the sampler's copy may take.
DType LeastCopyDType(DType dtype, std::optional<DType> sampling_dtype) {
  return sampling_dtype.value_or(dtype == DType::kFloat32 ? DType::kFloat16 : dtype);
}

// OK when the memory loading a model takes fits in max_bytes (none: no bound): its row-major
// copy in `dtype` alongside the larger of the stored data (`stored_bytes` an entry, while it is
// copied; 0 once it is in memory) and the sampler's copy in `copy`.
absl::Status CheckFits(const std::string& source, size_t n, size_t d, size_t stored_bytes,
                       DType dtype, DType copy, std::optional<size_t> max_bytes) {
  const size_t size = ElementBytes(dtype), other = std::max(stored_bytes, ElementBytes(copy));
  const size_t bytes = n * d * (size + other);
  if (!max_bytes || bytes <= *max_bytes) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrFormat(
      "%s: loading the model takes %.1f MiB (%d x %d x (%d + %d) bytes), more than the %.1f MiB "
      "it may",
      source, bytes / 1048576.0, n, d, size, other, *max_bytes / 1048576.0));
}

}  // namespace

absl::Status Model::CheckLoadFits(const std::string& source, size_t n, size_t d, DType stored,
                                  std::optional<DType> dtype, std::optional<DType> sampling_dtype,
                                  std::optional<size_t> max_bytes) {
  const DType kept = dtype.value_or(stored);
  return CheckFits(source, n, d, ElementBytes(stored), kept, LeastCopyDType(kept, sampling_dtype),
                   max_bytes);
}

absl::StatusOr<std::shared_ptr<const Model>> Model::Load(const ModelFiles& files) {
  auto admit = [&](const RawMatrix& stored) {
    return CheckLoadFits(files.weights, stored.rows, stored.cols, stored.dtype, files.dtype,
                         files.sampling_dtype, files.max_bytes);
  };
  ASSIGN_OR_RETURN(RawMatrix weights, ReadRawMatrix(files.weights, files.tensor, admit));
  std::vector<float> bias;
  if (!files.bias.empty()) {
    ASSIGN_OR_RETURN(bias, ReadVector(files.bias, files.bias_tensor));
    if (bias.size() != weights.rows) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: bias has %d entries but the weights in %s have %d rows", files.bias,
                          bias.size(), files.weights, weights.rows));
    }
  }
  const DType dtype = files.dtype.value_or(weights.dtype);
  return Build(std::move(weights), std::move(bias), dtype, files.sampling_dtype, files.weights,
               files.max_bytes);
}

absl::StatusOr<std::shared_ptr<const Model>> Model::Create(Matrix weights, std::vector<float> bias,
                                                           DType dtype,
                                                           std::optional<DType> sampling_dtype,
                                                           std::optional<size_t> max_bytes) {
  auto owner = std::make_shared<const Matrix>(std::move(weights));
  // Braced initialisers run in order: owner is read before it moves.
  RawMatrix raw{.dtype = DType::kFloat32,
                .rows = owner->rows(),
                .cols = owner->cols(),
                .layout = owner->layout(),
                .data = owner->data(),
                .keepalive = std::move(owner)};
  return Build(std::move(raw), std::move(bias), dtype, sampling_dtype, "weights", max_bytes);
}

absl::StatusOr<std::shared_ptr<const Model>> Model::Build(RawMatrix weights,
                                                          std::vector<float> bias, DType dtype,
                                                          std::optional<DType> sampling_dtype,
                                                          const std::string& source,
                                                          std::optional<size_t> max_bytes) {
  if (weights.rows == 0 || weights.cols == 0) {
    return absl::InvalidArgumentError("weights are empty");
  }
  if (!bias.empty() && bias.size() != weights.rows) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "bias has %d entries but the weights have %d rows", bias.size(), weights.rows));
  }
  for (size_t i = 0; i < bias.size(); ++i) {
    if (!std::isfinite(bias[i])) {
      return absl::InvalidArgumentError(absl::StrFormat("bias[%d] is not finite", i));
    }
  }
  const size_t n = weights.rows, d = weights.cols, size = ElementBytes(dtype);
  // Checked before each layout is allocated; first with the copy's least possible dtype.
  RETURN_IF_ERROR(
      CheckFits(source, n, d, 0, dtype, LeastCopyDType(dtype, sampling_dtype), max_bytes));
  std::shared_ptr<Model> model(new Model);
  model->n_ = n;
  model->d_ = d;
  model->dtype_ = dtype;
  // The rows are copied, converted and transposed as needed, into huge pages: the sampler reads
  // single rows at random, and a 4 KB page of the file's data would miss the TLB for each.
  model->rows_.Reset(n * d * size);
  if (weights.dtype == dtype && weights.layout == Layout::kRowMajor) {
    std::memcpy(model->rows_.data(), weights.data, n * d * size);
  } else {
    const bool row_major = weights.layout == Layout::kRowMajor;
    RETURN_IF_ERROR(VisitDType(dtype, [&](auto tag) -> absl::Status {
      using T = decltype(tag);
      T* out = reinterpret_cast<T*>(model->rows_.data());
      for (size_t i = 0; i < n; ++i) {
        for (size_t j = 0; j < d; ++j) {
          const float v = WidenAt(weights.dtype, weights.data, row_major ? i * d + j : j * n + i);
          out[i * d + j] = Narrow<T>(v);
          if (!std::isfinite(Widen(out[i * d + j]))) {
            return absl::InvalidArgumentError(
                absl::StrFormat("%s: value %g at row %d, column %d is beyond the range of %s",
                                source, v, i, j, DTypeName(dtype)));
          }
        }
      }
      return absl::OkStatus();
    }));
  }
  weights = {};  // frees the file's data now, before the panels add to the memory
  if (!sampling_dtype.has_value()) {
    sampling_dtype = DefaultSamplingDType(dtype, model->rows_.data(), n * d);
  }
  RETURN_IF_ERROR(CheckFits(source, n, d, 0, dtype, *sampling_dtype, max_bytes));
  model->sampling_dtype_ = *sampling_dtype;
  model->panels_.Reset(model->panels() * n * kPanelWidth * ElementBytes(*sampling_dtype));
  // Row by row: widened, rounded to the copy's dtype, widened back for its error.
  std::vector<double> abs_sums(d, 0.0);
  std::vector<float> wide(d), back(d);
  std::vector<std::byte> copy(d * ElementBytes(*sampling_dtype));
  const size_t row_bytes = d * size;
  static_assert(kPanelWidth == 1);
  for (size_t i = 0; i < n; ++i) {
    WidenTo(dtype, model->rows_.data() + i * row_bytes, d, wide.data());
    NarrowTo(*sampling_dtype, wide.data(), d, copy.data());
    WidenTo(*sampling_dtype, copy.data(), d, back.data());
    double norm_sq = 0, error_sq = 0;
    for (size_t j = 0; j < d; ++j) {
      if (!std::isfinite(back[j])) {
        return absl::InvalidArgumentError(
            absl::StrFormat("%s: value %g at row %d, column %d is beyond the range of %s", source,
                            wide[j], i, j, DTypeName(*sampling_dtype)));
      }
      const double w = wide[j], error = static_cast<double>(back[j]) - w;
      abs_sums[j] += std::fabs(w);
      norm_sq += w * w;
      error_sq += error * error;
    }
    model->max_row_norm_ = std::max(model->max_row_norm_, std::sqrt(norm_sq));
    model->sampling_error_norm_ = std::max(model->sampling_error_norm_, std::sqrt(error_sq));
    VisitDType(*sampling_dtype, [&](auto tag) {
      using C = decltype(tag);
      const C* row = reinterpret_cast<const C*>(copy.data());
      C* panels = reinterpret_cast<C*>(model->panels_.data());
      for (size_t j = 0; j < d; ++j) panels[j * n + i] = row[j];  // panel j holds column j
    });
  }
  model->column_abs_sums_.assign(abs_sums.begin(), abs_sums.end());
  for (float b : bias) model->max_abs_bias_ = std::max<double>(model->max_abs_bias_, std::fabs(b));
  model->bias_ = std::move(bias);
  return model;
}

size_t Model::memory_bytes() const {
  return n_ * d_ * ElementBytes(dtype_) +
         panels() * n_ * kPanelWidth * ElementBytes(sampling_dtype_);
}

}  // namespace adasoftmax
