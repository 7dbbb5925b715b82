// The weight kernels of both paths against double-precision loops, for every storage dtype and
// for lengths that exercise the vector bodies and their tails.

#include "core/panel_kernels.h"

#include <cmath>
#include <vector>

#include "absl/random/random.h"
#include "core/dtype.h"
#include "gtest/gtest.h"
#include "hwy/targets.h"

namespace adasoftmax {
namespace {

// Random entries already rounded to `dtype`, as bytes of that dtype and widened.
struct Entries {
  std::vector<std::byte> stored;
  std::vector<float> widened;
};
Entries RandomEntries(DType dtype, size_t count, uint64_t seed) {
  absl::BitGen gen(std::seed_seq{seed});
  Entries e;
  e.stored.resize(count * ElementBytes(dtype));
  VisitDType(dtype, [&](auto tag) {
    using T = decltype(tag);
    T* out = reinterpret_cast<T*>(e.stored.data());
    for (size_t k = 0; k < count; ++k) {
      out[k] = Narrow<T>(absl::Gaussian<float>(gen));
      e.widened.push_back(Widen(out[k]));
    }
  });
  return e;
}

// Row r (of d entries) of a dotted with x in double, and the sum of the products' magnitudes,
// which scales the rounding a float dot may show.
struct DotAndScale {
  double dot = 0, scale = 0;
};
DotAndScale DoubleDot(const Entries& a, const Entries& x, size_t r, size_t d) {
  DotAndScale out;
  for (size_t j = 0; j < d; ++j) {
    const double product = double{a.widened[r * d + j]} * x.widened[j];
    out.dot += product;
    out.scale += std::abs(product);
  }
  return out;
}

// Runs `body` on every Highway target this CPU runs (AVX3, AVX2, SSE4, SSSE3 and scalar on the
// README's machine), naming the target in failures.
template <typename F>
void OnEveryHighwayTarget(F body) {
  for (const int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    SCOPED_TRACE(hwy::TargetName(target));
    body();
  }
  hwy::SetSupportedTargetsForTest(0);  // back to the CPU's best
}

class PanelKernelsTest : public ::testing::TestWithParam<DType> {};

TEST_P(PanelKernelsTest, SweepColumnsAddsSumsAndSquaresToTheMaskedArms) {
  const DType dtype = GetParam();
  // Every way the last pass can end (one to eight columns), alone or after full passes, over
  // fewer arms than a vector and over full vectors and a tail.
  OnEveryHighwayTarget([dtype] {
    for (size_t count : {1, 2, 3, 4, 5, 6, 7, 8, 9, 14, 16, 17, 26}) {
      for (const bool first : {false, true}) {
        for (const size_t arms : {5, 37}) {
          const Entries a = RandomEntries(dtype, count * arms, count);  // column c at c * arms
          const Entries x = RandomEntries(DType::kFloat32, count, 99);
          std::vector<const void*> columns;
          for (size_t c = 0; c < count; ++c) {
            columns.push_back(&a.stored[c * arms * ElementBytes(dtype)]);
          }
          std::vector<uint8_t> mask(arms);
          for (size_t r = 0; r < arms; ++r) mask[r] = r % 3 != 0;
          std::vector<float> sum(arms, 1.0f), sum_sq(arms, 2.0f), scratch(2 * arms, -7.0f);
          SweepColumns(dtype, columns.data(), x.widened.data(), count, arms, mask.data(), first,
                       sum.data(), sum_sq.data(), scratch.data());
          for (size_t r = 0; r < arms; ++r) {
            if (!mask[r]) {  // untouched
              EXPECT_EQ(sum[r], 1.0f);
              EXPECT_EQ(sum_sq[r], 2.0f);
              continue;
            }
            double want = first ? 0 : 1, want_sq = first ? 0 : 2;
            for (size_t c = 0; c < count; ++c) {
              const double v = double{a.widened[c * arms + r]} * x.widened[c];
              want += v;
              want_sq += v * v;
            }
            EXPECT_NEAR(sum[r], want, 1e-5 * (1 + std::abs(want))) << count << " " << r;
            EXPECT_NEAR(sum_sq[r], want_sq, 1e-5 * (1 + want_sq)) << count << " " << r;
          }
        }
      }
    }
  });
}

TEST_P(PanelKernelsTest, RowKernelsMatchDoubleDots) {
  const DType dtype = GetParam();
  const size_t rows = 11;  // RowsDotVector's four streams of two rows, and three rows left over
  OnEveryHighwayTarget([dtype] {
    for (size_t d : {1, 7, 8, 31, 33, 100, 768}) {
      const Entries a = RandomEntries(dtype, rows * d, d);
      const Entries x = RandomEntries(DType::kFloat32, d, 7);
      std::vector<float> out(rows), widened(rows * d);
      RowsDotVector(dtype, a.stored.data(), rows, d, x.widened.data(), out.data());
      WidenTo(dtype, a.stored.data(), rows * d, widened.data());
      EXPECT_EQ(widened, a.widened);
      for (size_t r = 0; r < rows; ++r) {
        const auto [dot, scale] = DoubleDot(a, x, r, d);
        const void* row = &a.stored[r * d * ElementBytes(dtype)];
        EXPECT_NEAR(RowDot(dtype, row, x.widened.data(), d), dot, 1e-12 * (1 + scale));
        EXPECT_NEAR(out[r], dot, 1e-6 * (1 + scale)) << d << " " << r;
        // GatherArm over single-column panels of the row-major rows reads the same row.
        std::vector<uint32_t> ids(d);
        for (size_t j = 0; j < d; ++j) ids[j] = static_cast<uint32_t>(j);
        const SumAndSquares g = VisitDType(dtype, [&](auto tag) {
          using T = decltype(tag);
          return GatherArm(reinterpret_cast<const T*>(a.stored.data()), kLanes, ids.data(),
                           x.widened.data(), d, r * d);
        });
        EXPECT_NEAR(g.sum, dot, 1e-5 * (1 + scale));
      }
    }
  });
}

TEST_P(PanelKernelsTest, RowDotsMatchDoubleDotsWhateverRowsTheyAreReadWith) {
  const DType dtype = GetParam();
  const size_t rows = 15;  // a group of eight, one of four and three left
  OnEveryHighwayTarget([dtype] {
    for (size_t d : {1, 7, 8, 13, 100}) {
      const Entries a = RandomEntries(dtype, rows * d, d + 1);
      const Entries x = RandomEntries(DType::kFloat32, d, 8);
      std::vector<const void*> order;  // scattered: every row, in a shuffled order
      for (size_t r = 0; r < rows; ++r) {
        order.push_back(&a.stored[(r * 7 % rows) * d * ElementBytes(dtype)]);
      }
      std::vector<double> out(rows);
      RowDots(dtype, order.data(), rows, x.widened.data(), d, out.data());
      for (size_t k = 0; k < rows; ++k) {
        const size_t r = k * 7 % rows;
        const auto [dot, scale] = DoubleDot(a, x, r, d);
        EXPECT_NEAR(out[k], dot, 1e-12 * (1 + scale)) << d << " " << k;
        double alone;
        RowDots(dtype, &order[k], 1, x.widened.data(), d, &alone);
        EXPECT_EQ(alone, out[k]) << d << " " << k;
      }
    }
  });
}

INSTANTIATE_TEST_SUITE_P(DTypes, PanelKernelsTest,
                         ::testing::Values(DType::kFloat32, DType::kFloat16, DType::kBFloat16),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return std::string(DTypeName(info.param));
                         });

// NarrowTo rounds as Narrow does (to nearest even, beyond the range to infinity), vector lanes
// and tail alike.
TEST(NarrowToTest, MatchesNarrowEntryByEntry) {
  absl::BitGen gen;
  std::vector<float> a(1003);
  for (float& v : a) v = absl::Gaussian<float>(gen) * std::exp2(absl::Uniform(gen, -30, 17));
  a[0] = 1 + std::exp2(-11.0f);      // a float16 tie: to even, 1
  a[1] = 1 + 3 * std::exp2(-11.0f);  // a tie: to even, 1 + 2^-9
  a[2] = 65520;                      // float16 infinity
  a[1002] = -7e-8f;                  // float16 subnormal, in the tail
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    VisitDType(dtype, [&](auto tag) {
      using T = decltype(tag);
      std::vector<T> out(a.size());
      NarrowTo(dtype, a.data(), a.size(), out.data());
      for (size_t k = 0; k < a.size(); ++k) {
        const float got = Widen(out[k]), want = Widen(Narrow<T>(a[k]));
        ASSERT_TRUE(got == want || (std::isnan(got) && std::isnan(want)))
            << DTypeName(dtype) << " " << k << ": " << a[k] << " -> " << got << ", not " << want;
      }
    });
  }
}

}  // namespace
}  // namespace adasoftmax
