#include "core/hwy_kernels.h"

#include "core/dtype.h"

// Highway compiles this file once per target, re-including it from foreach_target.h.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "core/hwy_kernels.cc"
#include "hwy/foreach_target.h"  // must precede highway.h
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace adasoftmax {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Four vectors of partial sums per row, then the lanes' sum; the last entries one by one. At
// most 8 lanes: with AVX-512's 16, 50257 x 768 from memory took 3.6-6.4 ms on one core of the
// README's machine, against 2.9-3.3 ms.
void Float16RowsDotVectorImpl(const void* a, size_t rows, size_t d, const float* x, float* out) {
  const hn::CappedTag<float, 8> df;
  const hn::Rebind<hwy::float16_t, decltype(df)> dh;
  const size_t lanes = hn::Lanes(df);
  const hwy::float16_t* row = static_cast<const hwy::float16_t*>(a);
  for (size_t r = 0; r < rows; ++r, row += d) {
    auto s0 = hn::Zero(df), s1 = hn::Zero(df), s2 = hn::Zero(df), s3 = hn::Zero(df);
    size_t j = 0;
    auto dot = [&](size_t at, decltype(s0) sum) {
      return hn::MulAdd(hn::PromoteTo(df, hn::LoadU(dh, row + at)), hn::LoadU(df, x + at), sum);
    };
    for (; j + 4 * lanes <= d; j += 4 * lanes) {
      s0 = dot(j, s0);
      s1 = dot(j + lanes, s1);
      s2 = dot(j + 2 * lanes, s2);
      s3 = dot(j + 3 * lanes, s3);
    }
    for (; j + lanes <= d; j += lanes) s0 = dot(j, s0);
    float tail = 0;
    for (; j < d; ++j) tail += Widen(Float16{row[j].bits}) * x[j];
    const auto sum = hn::Add(hn::Add(s0, s1), hn::Add(s2, s3));
    out[r] = hn::GetLane(hn::SumOfLanes(df, sum)) + tail;
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace adasoftmax
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace adasoftmax {

HWY_EXPORT(Float16RowsDotVectorImpl);

void Float16RowsDotVector(const void* a, size_t rows, size_t d, const float* x, float* out) {
  HWY_DYNAMIC_DISPATCH(Float16RowsDotVectorImpl)(a, rows, d, x, out);
}

}  // namespace adasoftmax
#endif  // HWY_ONCE
