#include "core/hwy_kernels.h"

#include "core/dtype.h"
#include "core/sweep_passes.h"

// Highway compiles this file once per target, re-including it from foreach_target.h.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "core/hwy_kernels.cc"
#include "hwy/foreach_target.h"  // must precede highway.h
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace adasoftmax {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// At most 8 float lanes: with AVX-512's 16, 50257 x 768 float16 from memory took 3.6-6.4 ms on
// one core of the README's machine, against 2.9-3.3 ms, and sweeps gained nothing.
using FloatTag = hn::CappedTag<float, 8>;

float WidenOne(hwy::float16_t v) { return Widen(Float16{v.bits}); }
float WidenOne(hwy::bfloat16_t v) { return Widen(BFloat16{v.bits}); }

// Lanes(d) half-precision entries at p, widened to float.
template <class D, typename Half>
HWY_INLINE hn::Vec<D> LoadFloats(D d, const Half* p) {
  return hn::PromoteTo(d, hn::LoadU(hn::Rebind<Half, D>(), p));
}

// One step of a sweep pass over the Lanes(d) arms at r: see SweepPass.
template <size_t kColumns, bool kFirstPass, bool kLastPass, class D>
HWY_INLINE void SweepStep(D d, size_t r, const hwy::float16_t* const* column, const float* x,
                          const uint8_t* mask, bool first, float* sum, float* sum_sq,
                          float* partial, float* partial_sq) {
  auto p = kFirstPass ? hn::Zero(d) : hn::LoadU(d, partial + r);
  auto p_sq = kFirstPass ? hn::Zero(d) : hn::LoadU(d, partial_sq + r);
  hn::Vec<D> v[kColumns];
  for (size_t c = 0; c < kColumns; ++c) {
    v[c] = hn::Mul(LoadFloats(d, column[c] + r), hn::Set(d, x[c]));
  }
  if constexpr (kColumns == 4) {
    p = hn::Add(p, hn::Add(hn::Add(v[0], v[1]), hn::Add(v[2], v[3])));
    p_sq = hn::Add(p_sq, hn::Add(hn::MulAdd(v[1], v[1], hn::Mul(v[0], v[0])),
                                 hn::MulAdd(v[3], v[3], hn::Mul(v[2], v[2]))));
  } else {
    for (size_t c = 0; c < kColumns; ++c) {
      p = hn::Add(p, v[c]);
      p_sq = hn::MulAdd(v[c], v[c], p_sq);
    }
  }
  if constexpr (kLastPass) {
    const hn::RebindToUnsigned<D> du;
    const auto masked = hn::RebindMask(
        d, hn::Ne(hn::PromoteTo(du, hn::LoadU(hn::Rebind<uint8_t, D>(), mask + r)), hn::Zero(du)));
    const auto old = hn::LoadU(d, sum + r), old_sq = hn::LoadU(d, sum_sq + r);
    const auto base = first ? hn::Zero(d) : old, base_sq = first ? hn::Zero(d) : old_sq;
    hn::StoreU(hn::IfThenElse(masked, hn::Add(base, p), old), d, sum + r);
    hn::StoreU(hn::IfThenElse(masked, hn::Add(base_sq, p_sq), old_sq), d, sum_sq + r);
  } else {
    hn::StoreU(p, d, partial + r);
    hn::StoreU(p_sq, d, partial_sq + r);
  }
}

// One pass of a float16 sweep over the arms (see ForEachSweepPass), as SweepPass in
// panel_kernels.cc: full vectors, then one arm at a time.
template <size_t kColumns, bool kFirstPass, bool kLastPass>
void SweepPass(const hwy::float16_t* const* column, const float* x, size_t arms,
               const uint8_t* mask, bool first, float* sum, float* sum_sq, float* scratch) {
  float *partial = scratch, *partial_sq = scratch + arms;
  // Copies that the stores to the sums cannot alias, so they stay in registers.
  const hwy::float16_t* columns[kColumns];
  float xs[kColumns];
  for (size_t c = 0; c < kColumns; ++c) {
    columns[c] = column[c];
    xs[c] = x[c];
  }
  column = columns;
  x = xs;
  const FloatTag df;
  const hn::CappedTag<float, 1> d1;
  size_t r = 0;
  for (; r + hn::Lanes(df) <= arms; r += hn::Lanes(df)) {
    SweepStep<kColumns, kFirstPass, kLastPass>(df, r, column, x, mask, first, sum, sum_sq, partial,
                                               partial_sq);
  }
  for (; r < arms; ++r) {
    SweepStep<kColumns, kFirstPass, kLastPass>(d1, r, column, x, mask, first, sum, sum_sq, partial,
                                               partial_sq);
  }
}

// SweepColumns for float16. float32 and bfloat16 stay with GCC's code in panel_kernels.cc,
// which ran 1.1-1.4x faster than this code's in cache.
void Float16SweepColumnsImpl(const void* const* columns, const float* x, size_t count, size_t arms,
                             const uint8_t* mask, bool first, float* sum, float* sum_sq,
                             float* scratch) {
  const hwy::float16_t* const* a = reinterpret_cast<const hwy::float16_t* const*>(columns);
  ForEachSweepPass(count, [&]<size_t kColumns, bool kFirstPass, bool kLastPass>(size_t k) {
    SweepPass<kColumns, kFirstPass, kLastPass>(a + k, x + k, arms, mask, first, sum, sum_sq,
                                               scratch);
  });
}

// Four vectors of partial sums per row, then the lanes' sum; the last entries one by one.
template <typename Half>
void HalfRowsDotVector(const void* a, size_t rows, size_t d, const float* x, float* out) {
  const FloatTag df;
  const size_t lanes = hn::Lanes(df);
  const Half* row = static_cast<const Half*>(a);
  for (size_t r = 0; r < rows; ++r, row += d) {
    auto s0 = hn::Zero(df), s1 = hn::Zero(df), s2 = hn::Zero(df), s3 = hn::Zero(df);
    size_t j = 0;
    auto dot = [&](size_t at, decltype(s0) sum) {
      return hn::MulAdd(LoadFloats(df, row + at), hn::LoadU(df, x + at), sum);
    };
    for (; j + 4 * lanes <= d; j += 4 * lanes) {
      s0 = dot(j, s0);
      s1 = dot(j + lanes, s1);
      s2 = dot(j + 2 * lanes, s2);
      s3 = dot(j + 3 * lanes, s3);
    }
    for (; j + lanes <= d; j += lanes) s0 = dot(j, s0);
    float tail = 0;
    for (; j < d; ++j) tail += WidenOne(row[j]) * x[j];
    const auto sum = hn::Add(hn::Add(s0, s1), hn::Add(s2, s3));
    out[r] = hn::GetLane(hn::SumOfLanes(df, sum)) + tail;
  }
}

void Float16RowsDotVectorImpl(const void* a, size_t rows, size_t d, const float* x, float* out) {
  HalfRowsDotVector<hwy::float16_t>(a, rows, d, x, out);
}
void BFloat16RowsDotVectorImpl(const void* a, size_t rows, size_t d, const float* x, float* out) {
  HalfRowsDotVector<hwy::bfloat16_t>(a, rows, d, x, out);
}

void Float16WidenToImpl(const void* a, size_t count, float* out) {
  const FloatTag df;
  const size_t lanes = hn::Lanes(df);
  const hwy::float16_t* in = static_cast<const hwy::float16_t*>(a);
  size_t k = 0;
  for (; k + lanes <= count; k += lanes) hn::StoreU(LoadFloats(df, in + k), df, out + k);
  for (; k < count; ++k) out[k] = WidenOne(in[k]);
}

}  // namespace HWY_NAMESPACE
}  // namespace adasoftmax
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace adasoftmax {

HWY_EXPORT(Float16RowsDotVectorImpl);
HWY_EXPORT(BFloat16RowsDotVectorImpl);
HWY_EXPORT(Float16WidenToImpl);
HWY_EXPORT(Float16SweepColumnsImpl);

void Float16RowsDotVector(const void* a, size_t rows, size_t d, const float* x, float* out) {
  HWY_DYNAMIC_DISPATCH(Float16RowsDotVectorImpl)(a, rows, d, x, out);
}
void BFloat16RowsDotVector(const void* a, size_t rows, size_t d, const float* x, float* out) {
  HWY_DYNAMIC_DISPATCH(BFloat16RowsDotVectorImpl)(a, rows, d, x, out);
}
void Float16WidenTo(const void* a, size_t count, float* out) {
  HWY_DYNAMIC_DISPATCH(Float16WidenToImpl)(a, count, out);
}
void Float16SweepColumns(const void* const* columns, const float* x, size_t count, size_t arms,
                         const uint8_t* mask, bool first, float* sum, float* sum_sq,
                         float* scratch) {
  HWY_DYNAMIC_DISPATCH(Float16SweepColumnsImpl)
  (columns, x, count, arms, mask, first, sum, sum_sq, scratch);
}

}  // namespace adasoftmax
#endif  // HWY_ONCE
