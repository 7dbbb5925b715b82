#include "core/panel_kernels.h"

#include <algorithm>

#include "core/target_clones.h"

namespace adasoftmax {
namespace {

// The kernels' bodies for one element type, inlined into the per-dtype clones below (GCC
// cannot clone templates by target).

template <typename T>
[[gnu::always_inline]] inline void SweepColumnsOf(const void* const* columns_in, const float* x,
                                                  size_t count, size_t arms, float* partial,
                                                  float* partial_sq) {
  static_assert(kLanes == 1, "a panel is one column");
  const T* const* columns = reinterpret_cast<const T* const*>(columns_in);
  size_t c = 0;
  // Four columns per pass: four read streams, and a quarter of the partial-sum traffic.
  for (; c + 4 <= count; c += 4) {
    const T *a0 = columns[c], *a1 = columns[c + 1], *a2 = columns[c + 2], *a3 = columns[c + 3];
    const float x0 = x[c], x1 = x[c + 1], x2 = x[c + 2], x3 = x[c + 3];
    for (size_t r = 0; r < arms; ++r) {
      const float v0 = Widen(a0[r]) * x0, v1 = Widen(a1[r]) * x1, v2 = Widen(a2[r]) * x2,
                  v3 = Widen(a3[r]) * x3;
      partial[r] += (v0 + v1) + (v2 + v3);
      partial_sq[r] += (v0 * v0 + v1 * v1) + (v2 * v2 + v3 * v3);
    }
  }
  for (; c < count; ++c) {
    const T* a = columns[c];
    for (size_t r = 0; r < arms; ++r) {
      const float v = Widen(a[r]) * x[c];
      partial[r] += v;
      partial_sq[r] += v * v;
    }
  }
}

// Interleaved partial sums in Acc: the fixed-length inner loop vectorises without -ffast-math.
template <typename Acc, size_t kSums, typename T>
[[gnu::always_inline]] inline Acc DotOf(const T* a, const float* b, size_t count) {
  Acc sums[kSums] = {};
  size_t j = 0;
  for (; j + kSums <= count; j += kSums) {
    for (size_t l = 0; l < kSums; ++l) sums[l] += static_cast<Acc>(Widen(a[j + l])) * b[j + l];
  }
  Acc dot = 0;
  for (; j < count; ++j) dot += static_cast<Acc>(Widen(a[j])) * b[j];
  for (size_t l = 0; l < kSums; ++l) dot += sums[l];
  return dot;
}

template <typename T>
[[gnu::always_inline]] inline void RowsDotVectorOf(const void* a, size_t rows, size_t d,
                                                   const float* x, float* out) {
  const T* row = static_cast<const T*>(a);
  for (size_t r = 0; r < rows; ++r, row += d) out[r] = DotOf<float, 32>(row, x, d);
}

template <typename T>
[[gnu::always_inline]] inline void WidenToOf(const void* a, size_t count, float* out) {
  const T* in = static_cast<const T*>(a);
  for (size_t k = 0; k < count; ++k) out[k] = Widen(in[k]);
}

ADASOFTMAX_KERNEL void SweepColumnsF32(const void* const* columns, const float* x, size_t count,
                                       size_t arms, float* partial, float* partial_sq) {
  SweepColumnsOf<float>(columns, x, count, arms, partial, partial_sq);
}
ADASOFTMAX_KERNEL void SweepColumnsF16(const void* const* columns, const float* x, size_t count,
                                       size_t arms, float* partial, float* partial_sq) {
  SweepColumnsOf<Float16>(columns, x, count, arms, partial, partial_sq);
}
ADASOFTMAX_KERNEL void SweepColumnsBF16(const void* const* columns, const float* x, size_t count,
                                        size_t arms, float* partial, float* partial_sq) {
  SweepColumnsOf<BFloat16>(columns, x, count, arms, partial, partial_sq);
}

ADASOFTMAX_KERNEL double RowDotF32(const void* a, const float* b, size_t count) {
  return DotOf<double, 16>(static_cast<const float*>(a), b, count);
}
ADASOFTMAX_KERNEL double RowDotF16(const void* a, const float* b, size_t count) {
  return DotOf<double, 16>(static_cast<const Float16*>(a), b, count);
}
ADASOFTMAX_KERNEL double RowDotBF16(const void* a, const float* b, size_t count) {
  return DotOf<double, 16>(static_cast<const BFloat16*>(a), b, count);
}

ADASOFTMAX_KERNEL void RowsDotVectorF32(const void* a, size_t rows, size_t d, const float* x,
                                        float* out) {
  RowsDotVectorOf<float>(a, rows, d, x, out);
}
ADASOFTMAX_KERNEL void RowsDotVectorF16(const void* a, size_t rows, size_t d, const float* x,
                                        float* out) {
  RowsDotVectorOf<Float16>(a, rows, d, x, out);
}
ADASOFTMAX_KERNEL void RowsDotVectorBF16(const void* a, size_t rows, size_t d, const float* x,
                                         float* out) {
  RowsDotVectorOf<BFloat16>(a, rows, d, x, out);
}

ADASOFTMAX_KERNEL void WidenToF16(const void* a, size_t count, float* out) {
  WidenToOf<Float16>(a, count, out);
}
ADASOFTMAX_KERNEL void WidenToBF16(const void* a, size_t count, float* out) {
  WidenToOf<BFloat16>(a, count, out);
}

void WidenToF32(const void* a, size_t count, float* out) {
  const float* in = static_cast<const float*>(a);
  std::copy(in, in + count, out);
}

// The variant of a kernel for `dtype`.
template <typename Fn>
Fn ForDType(DType dtype, Fn f32, Fn f16, Fn bf16) {
  switch (dtype) {
    case DType::kFloat16:
      return f16;
    case DType::kBFloat16:
      return bf16;
    case DType::kFloat32:
      break;
  }
  return f32;
}

}  // namespace

void SweepColumns(DType dtype, const void* const* columns, const float* x, size_t count,
                  size_t arms, float* partial, float* partial_sq) {
  ForDType(dtype, SweepColumnsF32, SweepColumnsF16, SweepColumnsBF16)(columns, x, count, arms,
                                                                      partial, partial_sq);
}

double RowDot(DType dtype, const void* a, const float* b, size_t count) {
  return ForDType(dtype, RowDotF32, RowDotF16, RowDotBF16)(a, b, count);
}

void RowsDotVector(DType dtype, const void* a, size_t rows, size_t d, const float* x,
                   float* out) {
  ForDType(dtype, RowsDotVectorF32, RowsDotVectorF16, RowsDotVectorBF16)(a, rows, d, x, out);
}

void WidenTo(DType dtype, const void* a, size_t count, float* out) {
  ForDType(dtype, WidenToF32, WidenToF16, WidenToBF16)(a, count, out);
}

}  // namespace adasoftmax
