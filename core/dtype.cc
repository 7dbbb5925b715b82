#include "core/dtype.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace adasoftmax {

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return "float32";
    case DType::kFloat16:
      return "float16";
    case DType::kBFloat16:
      return "bfloat16";
  }
  return "?";
}

absl::StatusOr<DType> ParseDType(absl::string_view name) {
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    if (name == DTypeName(dtype)) return dtype;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown dtype '", name, "' (expected float32, float16 or bfloat16)"));
}

absl::StatusOr<std::optional<DType>> ParseDTypeSetting(absl::string_view setting,
                                                       absl::string_view value) {
  if (value.empty()) return std::nullopt;
  absl::StatusOr<DType> dtype = ParseDType(value);
  if (!dtype.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(setting, ": ", dtype.status().message()));
  }
  return *dtype;
}

}  // namespace adasoftmax
