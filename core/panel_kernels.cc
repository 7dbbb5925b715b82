#include "core/panel_kernels.h"

#include <algorithm>
#include <cstdint>
#include <type_traits>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "core/hwy_kernels.h"
#include "core/sweep_passes.h"
#include "core/target_clones.h"

namespace adasoftmax {
namespace {

// The kernels' bodies for one element type, inlined into the per-dtype clones below (GCC
// cannot clone templates by target).

// One pass of a sweep over the arms (see ForEachSweepPass), adding kColumns columns to p and
// p_sq (from partial, or 0 on the first pass), then storing them in partial or, on the last
// pass, adding them to the masked arms' sums. Every column is prefetched 1 KB ahead, four cache
// lines per block of arms, which keeps the loop vectorised. Sampler alone, calibrated, six
// alternated rounds: W1's median took up to 8% less time (0.5% more in one round), W2's up to
// 18% less (1% more in one). 2 KB ahead was no better; a prefetch per line unvectorised the loop.
template <size_t kColumns, bool kFirstPass, bool kLastPass, typename T>
[[gnu::always_inline]] inline void SweepPass(const T* const* a, const float* x, size_t arms,
                                             const uint8_t* __restrict mask, bool first,
                                             float* __restrict sum, float* __restrict sum_sq,
                                             float* __restrict partial,
                                             float* __restrict partial_sq) {
  const T* column[kColumns];  // in registers: the outputs cannot move them
  float xc[kColumns];
  for (size_t c = 0; c < kColumns; ++c) {
    column[c] = a[c];
    xc[c] = x[c];
  }
  auto step = [&](size_t r) __attribute__((always_inline)) {
    float p = kFirstPass ? 0.0f : partial[r], p_sq = kFirstPass ? 0.0f : partial_sq[r];
    if constexpr (kColumns == 4) {
      const float v0 = Widen(column[0][r]) * xc[0], v1 = Widen(column[1][r]) * xc[1],
                  v2 = Widen(column[2][r]) * xc[2], v3 = Widen(column[3][r]) * xc[3];
      p += (v0 + v1) + (v2 + v3);
      p_sq += (v0 * v0 + v1 * v1) + (v2 * v2 + v3 * v3);
    } else {
      for (size_t c = 0; c < kColumns; ++c) {
        const float v = Widen(column[c][r]) * xc[c];
        p += v;
        p_sq += v * v;
      }
    }
    if constexpr (kLastPass) {
      const uint32_t m = AllOnes(mask[r]), keep = AllOnes(!first);
      sum[r] = Select(m, Select(keep, sum[r], 0.0f) + p, sum[r]);
      sum_sq[r] = Select(m, Select(keep, sum_sq[r], 0.0f) + p_sq, sum_sq[r]);
    } else {
      partial[r] = p;
      partial_sq[r] = p_sq;
    }
  };
  constexpr size_t kLine = 64 / sizeof(T), kBlock = 4 * kLine;
  size_t r = 0;
  for (; r + kBlock <= arms; r += kBlock) {
    for (size_t c = 0; c < kColumns; ++c) {
      PrefetchAhead(column[c] + r, kBlock * sizeof(T), SweepPrefetchBytes(sizeof(T)));
    }
    for (size_t l = 0; l < kBlock; ++l) step(r + l);
  }
  for (; r < arms; ++r) step(r);
}

template <typename T>
[[gnu::always_inline]] inline void SweepColumnsOf(const void* const* columns_in, const float* x,
                                                  size_t count, size_t arms, const uint8_t* mask,
                                                  bool first, float* sum, float* sum_sq,
                                                  float* scratch) {
  static_assert(kLanes == 1, "a panel is one column");
  const T* const* a = reinterpret_cast<const T* const*>(columns_in);
  ForEachSweepPass(
      count, [&]<size_t kColumns, bool kFirstPass, bool kLastPass>(size_t k)
                 __attribute__((always_inline)) {
                   SweepPass<kColumns, kFirstPass, kLastPass>(a + k, x + k, arms, mask, first, sum,
                                                              sum_sq, scratch, scratch + arms);
                 });
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

// kRows rows' dots with x, interleaved: each row in 8 partial sums (one vector of doubles) over
// consecutive 8-entry steps, then its tail, whatever kRows is. float16 rows are widened 64
// entries at a time first, by Highway: GCC widens them one entry at a time. Each row is
// prefetched 1 KB ahead, within the row, once a cache line: the exact path's float32 GEMV
// went from 1.05 to 1.02-1.03 of SGEMV's time on 50257 x 768, and the sampler's whole-row reads
// took W2 0-7% less time.
template <size_t kRows, typename T>
[[gnu::always_inline]] inline void InterleavedDots(const T* const* rows, const float* x, size_t d,
                                                   double* out) {
  constexpr size_t kSums = 8;
  constexpr bool kWidenFirst = std::is_same_v<T, Float16>;
  constexpr size_t kBlock = kWidenFirst ? 64 : kSums;
  constexpr size_t kLine = 64 / sizeof(T);  // entries
  const T* row[kRows];
  for (size_t r = 0; r < kRows; ++r) row[r] = rows[r];
  double sums[kRows][kSums] = {};
  float widened[kRows][kBlock];
  constexpr size_t kAhead = kPrefetchAheadBytes / sizeof(T);  // entries
  size_t j = 0;
  for (; j + kBlock <= d; j += kBlock) {
    if (j % kLine == 0 && j + kAhead + kBlock <= d) {
      for (size_t r = 0; r < kRows; ++r) PrefetchAhead(row[r] + j, kBlock * sizeof(T));
    }
    if constexpr (kWidenFirst) {
      for (size_t r = 0; r < kRows; ++r) Float16WidenTo(row[r] + j, kBlock, widened[r]);
    }
    for (size_t t = 0; t < kBlock; t += kSums) {
      for (size_t r = 0; r < kRows; ++r) {
        for (size_t l = 0; l < kSums; ++l) {
          const float a = kWidenFirst ? widened[r][t + l] : Widen(row[r][j + t + l]);
          sums[r][l] += static_cast<double>(a) * x[j + t + l];
        }
      }
    }
  }
  for (size_t r = 0; r < kRows; ++r) {  // the steps after the last block, then the entries
    size_t t = j;
    for (; t + kSums <= d; t += kSums) {
      for (size_t l = 0; l < kSums; ++l) {
        sums[r][l] += static_cast<double>(Widen(row[r][t + l])) * x[t + l];
      }
    }
    double dot = 0;
    for (; t < d; ++t) dot += static_cast<double>(Widen(row[r][t])) * x[t];
    for (size_t l = 0; l < kSums; ++l) dot += sums[r][l];
    out[r] = dot;
  }
}

template <typename T>
[[gnu::always_inline]] inline void RowDotsOf(const void* const* rows_in, size_t count,
                                             const float* x, size_t d, double* out) {
  const T* const* rows = reinterpret_cast<const T* const*>(rows_in);
  size_t k = 0;
  for (; k + 8 <= count; k += 8) InterleavedDots<8>(rows + k, x, d, out + k);
  for (; k + 4 <= count; k += 4) InterleavedDots<4>(rows + k, x, d, out + k);
  for (; k < count; ++k) InterleavedDots<1>(rows + k, x, d, out + k);
}

ADASOFTMAX_KERNEL void SweepColumnsF32(const void* const* columns, const float* x, size_t count,
                                       size_t arms, const uint8_t* mask, bool first, float* sum,
                                       float* sum_sq, float* scratch) {
  SweepColumnsOf<float>(columns, x, count, arms, mask, first, sum, sum_sq, scratch);
}
ADASOFTMAX_KERNEL void SweepColumnsBF16(const void* const* columns, const float* x, size_t count,
                                        size_t arms, const uint8_t* mask, bool first, float* sum,
                                        float* sum_sq, float* scratch) {
  SweepColumnsOf<BFloat16>(columns, x, count, arms, mask, first, sum, sum_sq, scratch);
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

ADASOFTMAX_KERNEL void RowDotsF32(const void* const* rows, size_t count, const float* x, size_t d,
                                  double* out) {
  RowDotsOf<float>(rows, count, x, d, out);
}
ADASOFTMAX_KERNEL void RowDotsF16(const void* const* rows, size_t count, const float* x, size_t d,
                                  double* out) {
  RowDotsOf<Float16>(rows, count, x, d, out);
}
ADASOFTMAX_KERNEL void RowDotsBF16(const void* const* rows, size_t count, const float* x, size_t d,
                                   double* out) {
  RowDotsOf<BFloat16>(rows, count, x, d, out);
}

// Rows from kStreams equal shares of the rows at once, interleaved, so that kStreams sequential
// streams keep the prefetchers busy. On an Emerald Rapids host, 50257 x 768 (`BM_Products`,
// alternated) took 1.11-1.38x the bare SGEMV's time read a row at a time, 0.71-1.09x read from
// four shares, 1.36-1.52x read four adjacent rows at a time; eight shares were no better. On a
// Zen 5 host (alternated runs, each the ratio of medians of 8) two shares took 0.90-1.06x (median
// 0.97 over 14 runs) and four 1.04-1.08x (3 runs), with a prefetch once a cache line; four with
// one every half line, as before, 0.90-1.18x (median 1.07 over 13 runs). Two shares were not
// measured on Emerald Rapids.
ADASOFTMAX_KERNEL void RowsDotVectorF32(const void* a, size_t rows, size_t d, const float* x,
                                        float* out) {
  constexpr size_t kStreams = 2;
  const float* m = static_cast<const float*>(a);
  const size_t share = rows / kStreams;
  for (size_t r = 0; r < share; ++r) {
    const float* row[kStreams];
    for (size_t s = 0; s < kStreams; ++s) row[s] = m + (s * share + r) * d;
    double dots[kStreams];
    InterleavedDots<kStreams>(row, x, d, dots);
    for (size_t s = 0; s < kStreams; ++s) out[s * share + r] = static_cast<float>(dots[s]);
  }
  for (size_t r = kStreams * share; r < rows; ++r) {
    const float* row = m + r * d;
    double dot;
    InterleavedDots<1>(&row, x, d, &dot);
    out[r] = static_cast<float>(dot);
  }
}

ADASOFTMAX_KERNEL void WidenToBF16(const void* a, size_t count, float* out) {
  const BFloat16* in = static_cast<const BFloat16*>(a);
  for (size_t k = 0; k < count; ++k) out[k] = Widen(in[k]);
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
                  size_t arms, const uint8_t* mask, bool first, float* sum, float* sum_sq,
                  float* scratch) {
  ForDType(dtype, SweepColumnsF32, Float16SweepColumns, SweepColumnsBF16)(
      columns, x, count, arms, mask, first, sum, sum_sq, scratch);
}

double RowDot(DType dtype, const void* a, const float* b, size_t count) {
  return ForDType(dtype, RowDotF32, RowDotF16, RowDotBF16)(a, b, count);
}

void RowDots(DType dtype, const void* const* rows, size_t count, const float* x, size_t d,
             double* out) {
  ForDType(dtype, RowDotsF32, RowDotsF16, RowDotsBF16)(rows, count, x, d, out);
}

void RowsDotVector(DType dtype, const void* a, size_t rows, size_t d, const float* x,
                   float* out) {
  ForDType(dtype, RowsDotVectorF32, Float16RowsDotVector, BFloat16RowsDotVector)(a, rows, d, x,
                                                                                 out);
}

void WidenTo(DType dtype, const void* a, size_t count, float* out) {
  ForDType(dtype, WidenToF32, Float16WidenTo, WidenToBF16)(a, count, out);
}

namespace {

template <typename T>
void NarrowToScalar(const float* a, size_t count, void* out) {
  T* to = static_cast<T*>(out);
  for (size_t k = 0; k < count; ++k) to[k] = Narrow<T>(a[k]);
}

#if defined(__x86_64__)
// GCC converts float to _Float16 by a library call per entry (12% of loading W2 with its
// float16 copy); F16C converts 8 at a time, to nearest even.
__attribute__((target("avx,f16c"))) void NarrowToF16C(const float* a, size_t count, void* out) {
  uint16_t* to = static_cast<uint16_t*>(out);
  size_t k = 0;
  for (; k + 8 <= count; k += 8) {
    const __m128i half =
        _mm256_cvtps_ph(_mm256_loadu_ps(a + k), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(to + k), half);
  }
  NarrowToScalar<Float16>(a + k, count - k, to + k);
}
#endif

void NarrowToF16(const float* a, size_t count, void* out) {
#if defined(__x86_64__)
  static const bool f16c = __builtin_cpu_supports("f16c");
  if (f16c) return NarrowToF16C(a, count, out);
#endif
  NarrowToScalar<Float16>(a, count, out);
}

}  // namespace

void NarrowTo(DType dtype, const float* a, size_t count, void* out) {
  ForDType(dtype, NarrowToScalar<float>, NarrowToF16, NarrowToScalar<BFloat16>)(a, count, out);
}

}  // namespace adasoftmax
