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
// one core of the README's machine, against 2.9-3.3 ms, and sweeps gained nothing. On a Zen 5
// host 16 lanes swept 1.4-2.2x as fast from memory, but the server's queries/s did not follow.
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
// panel_kernels.cc: blocks of four cache lines of every column, each prefetched ahead, then full
// vectors, then one arm at a time.
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
  const size_t lanes = hn::Lanes(df);
  constexpr size_t kLine = 64 / sizeof(hwy::float16_t), kBlock = 4 * kLine;
  size_t r = 0;
  for (; r + kBlock <= arms; r += kBlock) {
    for (size_t c = 0; c < kColumns; ++c) {
      PrefetchAhead(column[c] + r, kBlock * sizeof(hwy::float16_t),
                    SweepPrefetchBytes(sizeof(hwy::float16_t)));
    }
    for (size_t l = 0; l < kBlock; l += lanes) {
      SweepStep<kColumns, kFirstPass, kLastPass>(df, r + l, column, x, mask, first, sum, sum_sq,
                                                 partial, partial_sq);
    }
  }
  for (; r + lanes <= arms; r += lanes) {
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

// out[r] = row[r] . x for kRows rows read at once, each in two vectors of partial sums, then the
// lanes' sum; the last entries one by one.
template <size_t kRows, typename Half>
HWY_INLINE void HalfDots(const Half* const* row, size_t d, const float* x, float* const* out) {
  const FloatTag df;
  const size_t lanes = hn::Lanes(df);
  hn::Vec<FloatTag> s0[kRows], s1[kRows];
  for (size_t r = 0; r < kRows; ++r) s0[r] = s1[r] = hn::Zero(df);
  size_t j = 0;
  for (; j + 2 * lanes <= d; j += 2 * lanes) {
    const auto x0 = hn::LoadU(df, x + j), x1 = hn::LoadU(df, x + j + lanes);
    for (size_t r = 0; r < kRows; ++r) {
      s0[r] = hn::MulAdd(LoadFloats(df, row[r] + j), x0, s0[r]);
      s1[r] = hn::MulAdd(LoadFloats(df, row[r] + j + lanes), x1, s1[r]);
    }
  }
  for (; j + lanes <= d; j += lanes) {
    const auto x0 = hn::LoadU(df, x + j);
    for (size_t r = 0; r < kRows; ++r) s0[r] = hn::MulAdd(LoadFloats(df, row[r] + j), x0, s0[r]);
  }
  for (size_t r = 0; r < kRows; ++r) {
    float tail = 0;
    for (size_t t = j; t < d; ++t) tail += WidenOne(row[r][t]) * x[t];
    *out[r] = hn::GetLane(hn::SumOfLanes(df, hn::Add(s0[r], s1[r]))) + tail;
  }
}

// A row from each of kStreams equal shares of the rows at once: kStreams sequential streams for
// the prefetchers (see RowsDotVectorF32 in panel_kernels.cc); the rows left over one by one.
template <typename Half>
void HalfRowsDotVector(const void* a, size_t rows, size_t d, const float* x, float* out) {
  constexpr size_t kStreams = 4;
  const Half* m = static_cast<const Half*>(a);
  const size_t share = rows / kStreams;
  for (size_t r = 0; r < share; ++r) {
    const Half* row[kStreams];
    float* to[kStreams];
    for (size_t s = 0; s < kStreams; ++s) {
      row[s] = m + (s * share + r) * d;
      to[s] = out + s * share + r;
    }
    HalfDots<kStreams>(row, d, x, to);
  }
  for (size_t r = kStreams * share; r < rows; ++r) {
    const Half* row = m + r * d;
    float* to = out + r;
    HalfDots<1>(&row, d, x, &to);
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
