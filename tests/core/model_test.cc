// Models kept in float32, float16 and bfloat16: rounding, memory, range errors, loading.

#include "core/model.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/dtype.h"
#include "core/tensor_io.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace adasoftmax {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

Matrix Ramp(size_t rows, size_t cols, Layout layout = Layout::kRowMajor) {
  Matrix m = Matrix::Owned(rows, cols, layout);
  for (size_t k = 0; k < m.size(); ++k) m.mutable_data()[k] = std::sin(0.37 * k) * (1 + k % 5);
  return m;
}

TEST(DTypeTest, NamesRoundTripAndUnknownNamesAreRejected) {
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    EXPECT_EQ(*ParseDType(DTypeName(dtype)), dtype);
  }
  const absl::StatusOr<DType> bad = ParseDType("fp8");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()),
              AllOf(HasSubstr("'fp8'"), HasSubstr("float32, float16 or bfloat16")));
  EXPECT_EQ(*ParseDTypeSetting("--dtype", ""), std::nullopt);
  EXPECT_EQ(*ParseDTypeSetting("--dtype", "bfloat16"), DType::kBFloat16);
  EXPECT_THAT(std::string(ParseDTypeSetting("--dtype", "fp8").status().message()),
              HasSubstr("--dtype: unknown dtype 'fp8'"));
}

TEST(DTypeTest, NarrowRoundsToNearestEven) {
  auto bf16 = [](uint32_t bits) { return Narrow<BFloat16>(std::bit_cast<float>(bits)).bits; };
  EXPECT_EQ(bf16(0x3f808000u), 0x3f80);  // tie, to even
  EXPECT_EQ(bf16(0x3f818000u), 0x3f82);  // tie, to even
  EXPECT_EQ(bf16(0x3f808001u), 0x3f81);  // above the tie
  EXPECT_EQ(bf16(0x7f7fffffu), 0x7f80);  // float max rounds to infinity
  EXPECT_EQ(bf16(0xff800000u), 0xff80);  // -infinity stays
  EXPECT_TRUE(std::isnan(Widen(Narrow<BFloat16>(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isnan(Widen(BFloat16{bf16(0x7f800001u)})));  // a NaN never becomes infinity
  EXPECT_EQ(Widen(Narrow<Float16>(1.0f / 3)), 0.333251953125f);
  EXPECT_EQ(Widen(Narrow<Float16>(65504.0f)), 65504.0f);
  EXPECT_TRUE(std::isinf(Widen(Narrow<Float16>(65520.0f))));
}

TEST(ModelTest, HalfModelsKeepRoundedWeightsInHalfTheMemory) {
  const Matrix a = Ramp(37, 11);
  auto rounded = [&](DType dtype, size_t i, size_t j) {
    return VisitDType(dtype, [&](auto tag) { return Widen(Narrow<decltype(tag)>(a.at(i, j))); });
  };
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    absl::StatusOr<std::shared_ptr<const Model>> model =
        Model::Create(Ramp(37, 11), {}, dtype);
    ASSERT_TRUE(model.ok()) << model.status();
    EXPECT_EQ((*model)->dtype(), dtype);
    // The sampler's copy: float16 for float32 weights, else the weights' own dtype.
    const DType copy = dtype == DType::kFloat32 ? DType::kFloat16 : dtype;
    EXPECT_EQ((*model)->sampling_dtype(), copy);
    EXPECT_EQ((*model)->memory_bytes(), 37 * 11 * (ElementBytes(dtype) + ElementBytes(copy)));
    double error_norm = 0;
    for (size_t i = 0; i < 37; ++i) {
      double error_sq = 0;
      for (size_t j = 0; j < 11; ++j) {
        ASSERT_EQ((*model)->weight(i, j), rounded(dtype, i, j)) << DTypeName(dtype) << i << j;
        const float in_copy = WidenAt(copy, (*model)->panel(j, i), 0);
        ASSERT_EQ(in_copy, rounded(copy, i, j)) << DTypeName(dtype) << " " << i << "," << j;
        error_sq += std::pow(static_cast<double>(in_copy) - (*model)->weight(i, j), 2);
      }
      error_norm = std::max(error_norm, std::sqrt(error_sq));
    }
    EXPECT_DOUBLE_EQ((*model)->sampling_error_norm(), error_norm) << DTypeName(dtype);
    EXPECT_EQ(error_norm > 0, dtype == DType::kFloat32) << DTypeName(dtype);
    if (dtype != DType::kFloat32) {
      EXPECT_NE((*model)->weight(0, 1), a.at(0, 1)) << "sin(0.37) is not representable";
    }
  }
}

TEST(ModelTest, SamplingCopyInAnyDtypeAndFloat32WhereFloat16FallsShort) {
  const auto exact = *Model::Create(Ramp(37, 11), {}, DType::kFloat32, DType::kFloat32);
  EXPECT_EQ(exact->sampling_dtype(), DType::kFloat32);
  EXPECT_EQ(exact->sampling_error_norm(), 0);
  EXPECT_EQ(exact->memory_bytes(), 2 * 37 * 11 * sizeof(float));
  const auto coarse = *Model::Create(Ramp(37, 11), {}, DType::kFloat32, DType::kBFloat16);
  EXPECT_GT(coarse->sampling_error_norm(),
            (*Model::Create(Ramp(37, 11), {}))->sampling_error_norm());

  Matrix wide = Ramp(3, 2);
  wide.mutable_data()[3] = 1e5f;  // beyond float16
  const auto kept = *Model::Create(wide.Copy(Layout::kRowMajor), {});
  EXPECT_EQ(kept->sampling_dtype(), DType::kFloat32);
  const absl::StatusOr<std::shared_ptr<const Model>> told =
      Model::Create(std::move(wide), {}, DType::kFloat32, DType::kFloat16);
  EXPECT_EQ(told.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(told.status().message()),
              AllOf(HasSubstr("100000"), HasSubstr("row 1, column 1"), HasSubstr("float16")));
}

// max_bytes bounds both layouts, checked before each is allocated: the copy's dtype, when
// the weights decide it, only once the rows are read.
TEST(ModelTest, AModelLargerThanMaxBytesIsRefusedNamingItsSize) {
  constexpr size_t kHalfCopy = 37 * 11 * (4 + 2), kFullCopy = 37 * 11 * (4 + 4);
  EXPECT_TRUE(Model::Create(Ramp(37, 11), {}, DType::kFloat32, std::nullopt, kHalfCopy).ok());
  const absl::StatusOr<std::shared_ptr<const Model>> over =
      Model::Create(Ramp(37, 11), {}, DType::kFloat32, std::nullopt, kHalfCopy - 1);
  EXPECT_EQ(over.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(over.status().message()),
              AllOf(HasSubstr("37 x 11 x (4 + 2) bytes"), HasSubstr("more than")));
  EXPECT_EQ(
      Model::Create(Ramp(37, 11), {}, DType::kFloat32, DType::kFloat32, kHalfCopy).status().code(),
      absl::StatusCode::kResourceExhausted);
  Matrix wide = Ramp(37, 11);
  wide.mutable_data()[3] = 1e5f;  // beyond float16: the copy is float32
  const absl::StatusOr<std::shared_ptr<const Model>> kept =
      Model::Create(wide.Copy(Layout::kRowMajor), {}, DType::kFloat32, std::nullopt, kHalfCopy);
  EXPECT_EQ(kept.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(kept.status().message()), HasSubstr("37 x 11 x (4 + 4) bytes"));
  EXPECT_TRUE(Model::Create(std::move(wide), {}, DType::kFloat32, std::nullopt, kFullCopy).ok());
}

TEST(ModelTest, KeepsTheLargestRowNormAndBias) {
  Matrix m = Matrix::Owned(3, 2, Layout::kRowMajor);
  const float values[] = {3, 4, -1, 1, 0, -6};  // row norms 5, sqrt(2), 6
  std::memcpy(m.mutable_data(), values, sizeof(values));
  const auto model = *Model::Create(std::move(m), {0.5f, -2, 1});
  EXPECT_DOUBLE_EQ(model->max_row_norm(), 6);
  EXPECT_DOUBLE_EQ(model->max_abs_bias(), 2);
  EXPECT_EQ((*Model::Create(Ramp(2, 2), {}))->max_abs_bias(), 0);
}

TEST(ModelTest, ColumnMajorWeightsAreConvertedToRows) {
  const Matrix a = Ramp(5, 3, Layout::kColMajor);
  absl::StatusOr<std::shared_ptr<const Model>> model =
      Model::Create(Ramp(5, 3, Layout::kColMajor), {}, DType::kBFloat16);
  ASSERT_TRUE(model.ok()) << model.status();
  for (size_t i = 0; i < 5; ++i) {
    for (size_t j = 0; j < 3; ++j) EXPECT_EQ((*model)->weight(i, j), Widen(Narrow<BFloat16>(a.at(i, j))));
  }
}

TEST(ModelTest, ValuesBeyondFloat16RangeAreRejectedByName) {
  Matrix a = Ramp(3, 4);
  a.mutable_data()[1 * 4 + 2] = 1e5f;
  const absl::StatusOr<std::shared_ptr<const Model>> half =
      Model::Create(Ramp(3, 4), {}, DType::kFloat16);
  EXPECT_TRUE(half.ok());
  Matrix copy = a.Copy(Layout::kRowMajor);
  const absl::StatusOr<std::shared_ptr<const Model>> bad =
      Model::Create(std::move(copy), {}, DType::kFloat16);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()),
              AllOf(HasSubstr("100000"), HasSubstr("row 1, column 2"), HasSubstr("float16")));
  // bfloat16 has float32's range.
  EXPECT_TRUE(Model::Create(std::move(a), {}, DType::kBFloat16).ok());
}

// A float16 .npy file of `a`'s rounded values.
std::string WriteFloat16Npy(const std::string& name, const Matrix& a) {
  std::string dict = absl::StrCat("{'descr': '<f2', 'fortran_order': False, 'shape': (", a.rows(),
                                  ", ", a.cols(), "), }");
  dict.append(63 - (10 + dict.size()) % 64, ' ');
  dict.push_back('\n');
  std::string bytes = absl::StrCat("\x93NUMPY", std::string(1, '\1'), std::string(1, '\0'));
  bytes.push_back(static_cast<char>(dict.size() & 0xff));
  bytes.push_back(static_cast<char>(dict.size() >> 8));
  bytes += dict;
  for (size_t k = 0; k < a.size(); ++k) {
    const Float16 h = Narrow<Float16>(a.data()[k]);
    bytes.append(reinterpret_cast<const char*>(&h), 2);
  }
  const std::string path = absl::StrCat(::testing::TempDir(), "/", name);
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  return path;
}

TEST(ModelTest, LoadKeepsTheStoredDtypeUnlessTold) {
  const Matrix a = Ramp(9, 6);
  const std::string path = WriteFloat16Npy("model_test_f16.npy", a);
  absl::StatusOr<std::shared_ptr<const Model>> stored = Model::Load({.weights = path});
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ((*stored)->dtype(), DType::kFloat16);
  EXPECT_EQ((*stored)->memory_bytes(), 2 * 9 * 6 * 2);
  for (DType dtype : {DType::kFloat32, DType::kBFloat16}) {
    absl::StatusOr<std::shared_ptr<const Model>> told =
        Model::Load({.weights = path, .dtype = dtype});
    ASSERT_TRUE(told.ok()) << told.status();
    EXPECT_EQ((*told)->dtype(), dtype);
    for (size_t k = 0; k < a.size(); ++k) {
      const float half = Widen(Narrow<Float16>(a.data()[k]));
      EXPECT_EQ((*stored)->weight(k / 6, k % 6), half);
      EXPECT_EQ((*told)->weight(k / 6, k % 6),
                dtype == DType::kFloat32 ? half : Widen(Narrow<BFloat16>(half)));
    }
  }
}

}  // namespace
}  // namespace adasoftmax
