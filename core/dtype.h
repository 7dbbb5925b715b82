#ifndef ADASOFTMAX_CORE_DTYPE_H_
#define ADASOFTMAX_CORE_DTYPE_H_

// Element types a model's weights are kept in. Kernels read them in their own dtype and widen
// to float in registers, so half precision halves the bytes both softmax paths read.

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace adasoftmax {

enum class DType : uint8_t { kFloat32, kFloat16, kBFloat16 };

// IEEE 754 binary16 bits.
struct Float16 {
  uint16_t bits;
};
// bfloat16: the high half of a float32's bits.
struct BFloat16 {
  uint16_t bits;
};

inline size_t ElementBytes(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }
// "float32", "float16" or "bfloat16".
const char* DTypeName(DType dtype);
// The inverse of DTypeName; InvalidArgument naming the accepted names otherwise.
absl::StatusOr<DType> ParseDType(absl::string_view name);
// A dtype setting: none when `value` is empty, else ParseDType(value), its error prefixed with
// "<setting>: ".
absl::StatusOr<std::optional<DType>> ParseDTypeSetting(absl::string_view setting,
                                                       absl::string_view value);

inline float Widen(float v) { return v; }
// Exact, subnormals, infinities and NaNs included. Integer and float operations that vectorise on
// every x86-64 level (GCC calls a library function per element for _Float16 in target clones).
inline float Widen(Float16 v) {
  const uint32_t magnitude = uint32_t{v.bits} & 0x7fffu;
  // The 15 magnitude bits moved under a float's exponent and mantissa fields are the value
  // scaled by 2^-112, subnormals included; Inf and NaN need the full exponent.
  const float scaled = std::bit_cast<float>(magnitude << 13) * 0x1p112f;
  const uint32_t special = (magnitude << 13) | 0x7f800000u;
  const uint32_t bits = magnitude >= 0x7c00u ? special : std::bit_cast<uint32_t>(scaled);
  return std::bit_cast<float>(bits | (uint32_t{v.bits} & 0x8000u) << 16);
}
inline float Widen(BFloat16 v) { return std::bit_cast<float>(uint32_t{v.bits} << 16); }

// `v` rounded to the nearest T (ties to even). Values beyond T's range become infinite.
template <typename T>
T Narrow(float v);
template <>
inline float Narrow<float>(float v) {
  return v;
}
template <>
inline Float16 Narrow<Float16>(float v) {
  return {std::bit_cast<uint16_t>(static_cast<_Float16>(v))};
}
template <>
inline BFloat16 Narrow<BFloat16>(float v) {
  const uint32_t bits = std::bit_cast<uint32_t>(v);
  if ((bits & 0x7f800000u) == 0x7f800000u) {  // infinity or NaN: keep, NaN stays NaN
    return {static_cast<uint16_t>((bits >> 16) | ((bits & 0xffffu) != 0 ? 0x40u : 0u))};
  }
  return {static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16)};
}

// Calls f(T{}) with T the element type of `dtype`: float, Float16 or BFloat16.
template <typename F>
decltype(auto) VisitDType(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat16:
      return f(Float16{});
    case DType::kBFloat16:
      return f(BFloat16{});
    case DType::kFloat32:
      break;
  }
  return f(float{});
}

// Element `index` of an array of `dtype`, widened. `data` need not be aligned.
inline float WidenAt(DType dtype, const void* data, size_t index) {
  return VisitDType(dtype, [&](auto tag) {
    decltype(tag) v;
    std::memcpy(&v, static_cast<const std::byte*>(data) + index * sizeof(v), sizeof(v));
    return Widen(v);
  });
}

}  // namespace adasoftmax

#endif  // ADASOFTMAX_CORE_DTYPE_H_
