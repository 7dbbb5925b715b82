#ifndef ADASOFTMAX_CORE_DTYPE_H_
#define ADASOFTMAX_CORE_DTYPE_H_

// Element types a model's weights are kept in. Kernels read them in their own dtype and widen
// to float in registers, so half precision halves the bytes both softmax paths read.

#include <bit>
#include <cstddef>
#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace adasoftmax {

enum class DType : uint8_t { kFloat32, kFloat16, kBFloat16 };

// bfloat16: the high half of a float32's bits.
struct BFloat16 {
  uint16_t bits;
};

inline size_t ElementBytes(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }
// "float32", "float16" or "bfloat16".
const char* DTypeName(DType dtype);
// The inverse of DTypeName; InvalidArgument naming the accepted names otherwise.
absl::StatusOr<DType> ParseDType(absl::string_view name);

inline float Widen(float v) { return v; }
inline float Widen(_Float16 v) { return static_cast<float>(v); }
inline float Widen(BFloat16 v) { return std::bit_cast<float>(uint32_t{v.bits} << 16); }

// `v` rounded to the nearest T (ties to even). Values beyond T's range become infinite.
template <typename T>
T Narrow(float v);
template <>
inline float Narrow<float>(float v) {
  return v;
}
template <>
inline _Float16 Narrow<_Float16>(float v) {
  return static_cast<_Float16>(v);
}
template <>
inline BFloat16 Narrow<BFloat16>(float v) {
  const uint32_t bits = std::bit_cast<uint32_t>(v);
  if ((bits & 0x7f800000u) == 0x7f800000u) {  // infinity or NaN: keep, NaN stays NaN
    return {static_cast<uint16_t>((bits >> 16) | ((bits & 0xffffu) != 0 ? 0x40u : 0u))};
  }
  return {static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16)};
}

// Calls f(T{}) with T the element type of `dtype`: float, _Float16 or BFloat16.
template <typename F>
decltype(auto) VisitDType(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat16:
      return f(_Float16{});
    case DType::kBFloat16:
      return f(BFloat16{});
    case DType::kFloat32:
      break;
  }
  return f(float{});
}

// Element `index` of an array of `dtype`, widened.
inline float WidenAt(DType dtype, const void* data, size_t index) {
  return VisitDType(dtype, [&](auto tag) {
    return Widen(static_cast<const decltype(tag)*>(data)[index]);
  });
}

}  // namespace adasoftmax

#endif  // ADASOFTMAX_CORE_DTYPE_H_
