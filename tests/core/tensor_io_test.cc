#include "core/tensor_io.h"

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/temp_dir.h"

namespace adasoftmax {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

constexpr char kDataDir[] = "tests/data/ppocrv4-rec/";

// A file path, unique per test, in a directory removed when the tests end.
std::string TempPath(const std::string& name) {
  static const testing::TempDir dir;
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  return dir.Sub(absl::StrCat(info->test_suite_name(), "_", info->name(), "_", name));
}

std::string WriteBytes(const std::string& name, const std::string& bytes) {
  const std::string path = TempPath(name);
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  return path;
}

template <typename T>
std::string Bytes(const std::vector<T>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T));
}

std::string LittleEndian(uint64_t value, int bytes) {
  std::string out;
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
  return out;
}

// A .npy file with header dict `dict`, padded with spaces so that the data starts at a
// multiple of `align`, followed by `data`.
std::string NpyFile(const std::string& dict, const std::string& data, int major = 1,
                    size_t align = 64) {
  const size_t prefix = major == 1 ? 10 : 12;
  std::string header = dict;
  const size_t unpadded = prefix + header.size() + 1;
  header.append((align - unpadded % align) % align, ' ');
  header.push_back('\n');
  return absl::StrCat("\x93NUMPY", std::string(1, static_cast<char>(major)), std::string(1, '\0'),
                      LittleEndian(header.size(), major == 1 ? 2 : 4), header, data);
}

std::string NpyDict(const std::string& descr, const std::string& shape, bool fortran = false) {
  return absl::StrCat("{'descr': '", descr, "', 'fortran_order': ", fortran ? "True" : "False",
                      ", 'shape': ", shape, ", }");
}

std::string SafetensorsFile(const std::string& json, const std::string& data) {
  return absl::StrCat(LittleEndian(json.size(), 8), json, data);
}

Matrix MakeMatrix(size_t rows, size_t cols, Layout layout) {
  Matrix m = Matrix::Owned(rows, cols, layout);
  for (size_t k = 0; k < m.size(); ++k) m.mutable_data()[k] = 0.5f * k - 3.25f;
  return m;
}

void ExpectSameValues(const Matrix& actual, const Matrix& expected) {
  ASSERT_EQ(actual.rows(), expected.rows());
  ASSERT_EQ(actual.cols(), expected.cols());
  for (size_t r = 0; r < expected.rows(); ++r) {
    for (size_t c = 0; c < expected.cols(); ++c) {
      EXPECT_EQ(actual.at(r, c), expected.at(r, c)) << "at " << r << ", " << c;
    }
  }
}

void ExpectError(const absl::Status& status, absl::StatusCode code, const std::string& path,
                 const std::string& keyword) {
  EXPECT_EQ(status.code(), code) << status;
  EXPECT_THAT(std::string(status.message()), AllOf(HasSubstr(path), HasSubstr(keyword)));
}

// Float16 bit patterns of 1, -2, 1/3 (rounded), 65504, 2^-24, 1023 * 2^-24, 2^-14, -0.
const std::vector<uint16_t> kHalfBits = {0x3c00, 0xc000, 0x3555, 0x7bff,
                                         0x0001, 0x03ff, 0x0400, 0x8000};
const std::vector<float> kHalfValues = {
    1.0f, -2.0f, 0.333251953125f, 65504.0f, 0x1.0p-24f, 1023 * 0x1.0p-24f, 0x1.0p-14f, -0.0f};

TEST(HalfConversionTest, Float16KnownValues) {
  for (size_t i = 0; i < kHalfBits.size(); ++i) {
    const float value = Widen(Float16{kHalfBits[i]});
    EXPECT_EQ(value, kHalfValues[i]) << std::hex << kHalfBits[i];
    EXPECT_EQ(std::signbit(value), std::signbit(kHalfValues[i]));
  }
  EXPECT_EQ(Widen(Float16{0x7c00}), std::numeric_limits<float>::infinity());
  EXPECT_EQ(Widen(Float16{0xfc00}), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(Widen(Float16{0x7e00})));
  EXPECT_TRUE(std::isnan(Widen(Float16{0x7c01})));
  EXPECT_EQ(Widen(Float16{0x0000}), 0.0f);
}

TEST(HalfConversionTest, BFloat16KnownValues) {
  EXPECT_EQ(Widen(BFloat16{0x3f80}), 1.0f);
  EXPECT_EQ(Widen(BFloat16{0xc040}), -3.0f);
  EXPECT_EQ(Widen(BFloat16{0x4049}), 3.140625f);
  EXPECT_EQ(Widen(BFloat16{0x0001}), 0x1.0p-133f);  // Smallest subnormal.
  EXPECT_EQ(Widen(BFloat16{0x7f7f}), 0x1.fep127f);  // Largest finite.
  EXPECT_EQ(Widen(BFloat16{0x7f80}), std::numeric_limits<float>::infinity());
  EXPECT_EQ(Widen(BFloat16{0xff80}), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(Widen(BFloat16{0x7fc0})));
  EXPECT_TRUE(std::signbit(Widen(BFloat16{0x8000})));
}

TEST(NpyTest, RoundTripRowMajorIsReadWithoutDecoding) {
  const Matrix m = MakeMatrix(3, 5, Layout::kRowMajor);
  const std::string path = TempPath("m.npy");
  ASSERT_TRUE(WriteNpy(path, m).ok());
  // The data starts at a multiple of 64 bytes, right after the header.
  std::ifstream file(path, std::ios::binary | std::ios::ate);
  EXPECT_EQ(static_cast<size_t>(file.tellg()), 128 + 15 * sizeof(float));

  absl::StatusOr<LoadedMatrix> loaded = ReadMatrix(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->dtype, "float32");
  EXPECT_EQ(loaded->matrix.layout(), Layout::kRowMajor);
  EXPECT_FALSE(loaded->matrix.owned());
  ExpectSameValues(loaded->matrix, m);
}

TEST(NpyTest, RoundTripColumnMajorUsesFortranOrder) {
  const Matrix m = MakeMatrix(4, 3, Layout::kColMajor);
  const std::string path = TempPath("m.npy");
  ASSERT_TRUE(WriteNpy(path, m).ok());
  std::ifstream file(path, std::ios::binary);
  std::string header(128, '\0');
  file.read(header.data(), 128);
  EXPECT_THAT(header, HasSubstr("'fortran_order': True, 'shape': (4, 3)"));

  absl::StatusOr<LoadedMatrix> loaded = ReadMatrix(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->matrix.layout(), Layout::kColMajor);
  EXPECT_FALSE(loaded->matrix.owned());
  ExpectSameValues(loaded->matrix, m);
}

TEST(NpyTest, VectorRoundTripAndVectorShapes) {
  const std::vector<float> v = {1.5f, -2.0f, 3.25f, 0.0f};
  const std::string path = TempPath("v.npy");
  ASSERT_TRUE(WriteNpy(path, v).ok());
  absl::StatusOr<std::vector<float>> read = ReadVector(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_THAT(*read, ElementsAreArray(v));

  for (const auto& [rows, cols] : {std::pair<size_t, size_t>{4, 1}, {1, 4}}) {
    const Matrix m = MakeMatrix(rows, cols, Layout::kRowMajor);
    const std::string matrix_path = TempPath(absl::StrCat(rows, "x", cols, ".npy"));
    ASSERT_TRUE(WriteNpy(matrix_path, m).ok());
    read = ReadVector(matrix_path);
    ASSERT_TRUE(read.ok()) << read.status();
    EXPECT_THAT(*read, ElementsAre(-3.25f, -2.75f, -2.25f, -1.75f));
  }
}

TEST(NpyTest, Float16IsDecoded) {
  const std::string path = WriteBytes("h.npy", NpyFile(NpyDict("<f2", "(2, 4)"), Bytes(kHalfBits)));
  absl::StatusOr<LoadedMatrix> loaded = ReadMatrix(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->dtype, "float16");
  EXPECT_TRUE(loaded->matrix.owned());
  ASSERT_EQ(loaded->matrix.rows(), 2);
  ASSERT_EQ(loaded->matrix.cols(), 4);
  for (size_t k = 0; k < 8; ++k) EXPECT_EQ(loaded->matrix.at(k / 4, k % 4), kHalfValues[k]);
}

TEST(NpyTest, Float16FortranOrder) {
  const std::string path =
      WriteBytes("h.npy", NpyFile(NpyDict("<f2", "(2, 4)", /*fortran=*/true), Bytes(kHalfBits)));
  absl::StatusOr<LoadedMatrix> loaded = ReadMatrix(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->matrix.layout(), Layout::kColMajor);
  for (size_t k = 0; k < 8; ++k) EXPECT_EQ(loaded->matrix.at(k % 2, k / 2), kHalfValues[k]);
}

TEST(NpyTest, RawReadKeepsTheStoredDtypeAndLayout) {
  const std::string path =
      WriteBytes("h.npy", NpyFile(NpyDict("<f2", "(2, 4)", /*fortran=*/true), Bytes(kHalfBits)));
  absl::StatusOr<RawMatrix> raw = ReadRawMatrix(path);
  ASSERT_TRUE(raw.ok()) << raw.status();
  EXPECT_EQ(raw->dtype, DType::kFloat16);
  EXPECT_EQ(raw->rows, 2);
  EXPECT_EQ(raw->cols, 4);
  EXPECT_EQ(raw->layout, Layout::kColMajor);
  EXPECT_EQ(std::memcmp(raw->data, kHalfBits.data(), 16), 0);
  EXPECT_NE(raw->keepalive, nullptr);

  // The same checks as ReadMatrix.
  const std::string inf =
      WriteBytes("inf.npy", NpyFile(NpyDict("<f2", "(2, 2)"), Bytes(std::vector<uint16_t>{
                                                                  0x3c00, 0x3c00, 0x3c00, 0xfc00})));
  ExpectError(ReadRawMatrix(inf).status(), absl::StatusCode::kInvalidArgument, inf,
              "non-finite value -inf at row 1, column 1");
  const std::string vector = WriteBytes("v.npy", NpyFile(NpyDict("<f2", "(8,)"), Bytes(kHalfBits)));
  ExpectError(ReadRawMatrix(vector).status(), absl::StatusCode::kInvalidArgument, vector,
              "wrong rank");
}

TEST(NpyTest, Versions2And3AndOldStyleHeaders) {
  const std::vector<float> values = {1, 2, 3, 4, 5, 6};
  for (int major : {2, 3}) {
    const std::string path = WriteBytes(absl::StrCat("v", major, ".npy"),
                                        NpyFile(NpyDict("<f4", "(3, 2)"), Bytes(values), major));
    absl::StatusOr<LoadedMatrix> loaded = ReadMatrix(path);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_EQ(loaded->matrix.at(2, 1), 6.0f);
  }
  // Double quotes, other key order, Python 2 long suffixes, no trailing comma.
  const std::string path = WriteBytes(
      "old.npy", NpyFile("{\"shape\": (3L, 2L), \"fortran_order\": False, \"descr\": \"<f4\"}",
                         Bytes(values)));
  absl::StatusOr<LoadedMatrix> loaded = ReadMatrix(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->matrix.at(1, 0), 3.0f);
}

// Data at an offset that is no multiple of 4 in the file is read into aligned memory.
TEST(NpyTest, UnalignedFloat32IsReadIntoAlignedMemory) {
  const std::vector<float> values = {1, 2, 3, 4, 5, 6};
  const std::string dict = NpyDict("<f4", "(2, 3)");
  std::string file = NpyFile(dict, Bytes(values), 1, /*align=*/1);
  if ((file.size() - 24) % 4 == 0) file = NpyFile(dict + " ", Bytes(values), 1, 1);
  ASSERT_NE((file.size() - 24) % 4, 0u);
  absl::StatusOr<LoadedMatrix> loaded = ReadMatrix(WriteBytes("u.npy", file));
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(reinterpret_cast<uintptr_t>(loaded->matrix.data()) % alignof(float), 0u);
  EXPECT_EQ(loaded->matrix.at(1, 2), 6.0f);
}

// A file rewritten between its header and its data being read (as `cp` over it does) fails
// with Aborted, whether it got shorter or kept its size; the header is checked first, so a file
// too large for the caller is never read.
TEST(NpyTest, AFileChangedWhileBeingReadFailsAndTheCallerMayRefuseItFirst) {
  const Matrix m = MakeMatrix(64, 32, Layout::kRowMajor);
  const std::string path = TempPath("changing.npy");
  ASSERT_TRUE(WriteNpy(path, m).ok());
  const auto truncate = [&](const RawMatrix& header) {
    EXPECT_EQ(header.data, nullptr);
    std::filesystem::resize_file(path, 100);
    return absl::OkStatus();
  };
  ExpectError(ReadRawMatrix(path, "", truncate).status(), absl::StatusCode::kAborted, path,
              "changed while being read");

  ASSERT_TRUE(WriteNpy(path, m).ok());
  const auto rewrite = [&](const RawMatrix&) {
    EXPECT_TRUE(WriteNpy(path, MakeMatrix(64, 32, Layout::kColMajor)).ok());  // same size
    std::filesystem::last_write_time(
        path, std::filesystem::last_write_time(path) + std::chrono::seconds(1));
    return absl::OkStatus();
  };
  ExpectError(ReadRawMatrix(path, "", rewrite).status(), absl::StatusCode::kAborted, path,
              "changed while being read");

  const auto refuse = [](const RawMatrix& header) {
    EXPECT_EQ(header.rows, 64u);
    EXPECT_EQ(header.cols, 32u);
    EXPECT_EQ(header.dtype, DType::kFloat32);
    return absl::ResourceExhaustedError("too large");
  };
  EXPECT_EQ(ReadRawMatrix(path, "", refuse).status().code(), absl::StatusCode::kResourceExhausted);
  absl::StatusOr<RawMatrix> raw = ReadRawMatrix(path);
  ASSERT_TRUE(raw.ok()) << raw.status();
}

TEST(SafetensorsTest, RoundTripSeveralTensorsByName) {
  const Matrix a = MakeMatrix(2, 3, Layout::kRowMajor);
  const Matrix b = MakeMatrix(3, 4, Layout::kColMajor);
  const std::string path = TempPath("t.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"lm_head.weight", &a}, {"other", &b}}).ok());

  absl::StatusOr<LoadedMatrix> loaded = ReadMatrix(path, "lm_head.weight");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->dtype, "float32");
  EXPECT_FALSE(loaded->matrix.owned());
  ExpectSameValues(loaded->matrix, a);

  loaded = ReadMatrix(path, "other");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->matrix.layout(), Layout::kRowMajor);
  EXPECT_FALSE(loaded->matrix.owned());
  ExpectSameValues(loaded->matrix, b);

  ExpectError(ReadMatrix(path).status(), absl::StatusCode::kInvalidArgument, path,
              "2 tensors (lm_head.weight, other)");
  ExpectError(ReadMatrix(path, "missing").status(), absl::StatusCode::kNotFound, path,
              "no tensor 'missing' (available: lm_head.weight, other)");
  ExpectError(ReadMatrix(path, "__metadata__").status(), absl::StatusCode::kNotFound, path,
              "available");
}

TEST(SafetensorsTest, HalfTypesAndUnalignedFloat32AreDecoded) {
  const std::vector<uint16_t> bf16 = {0x3f80, 0xc040, 0x4049};
  const std::vector<float> f32 = {7.5f, -8.25f};
  const std::string json =
      R"({"__metadata__": {"format": "pt"},
          "half": {"dtype": "F16", "shape": [4, 2], "data_offsets": [0, 16]},
          "brain": {"dtype": "BF16", "shape": [1, 3], "data_offsets": [16, 22]},
          "single": {"dtype": "F32", "shape": [2], "data_offsets": [22, 30]}})";
  // 8 + json size is padded to a multiple of 8 so only "single" is misaligned.
  std::string padded = json;
  padded.append((8 - padded.size() % 8) % 8, ' ');
  const std::string path = WriteBytes(
      "h.safetensors", SafetensorsFile(padded, Bytes(kHalfBits) + Bytes(bf16) + Bytes(f32)));

  absl::StatusOr<LoadedMatrix> half = ReadMatrix(path, "half");
  ASSERT_TRUE(half.ok()) << half.status();
  EXPECT_EQ(half->dtype, "float16");
  EXPECT_TRUE(half->matrix.owned());
  for (size_t k = 0; k < 8; ++k) EXPECT_EQ(half->matrix.at(k / 2, k % 2), kHalfValues[k]);

  absl::StatusOr<LoadedMatrix> brain = ReadMatrix(path, "brain");
  ASSERT_TRUE(brain.ok()) << brain.status();
  EXPECT_EQ(brain->dtype, "bfloat16");
  EXPECT_EQ(brain->matrix.at(0, 2), 3.140625f);

  absl::StatusOr<std::vector<float>> brain_vector = ReadVector(path, "brain");
  ASSERT_TRUE(brain_vector.ok()) << brain_vector.status();
  EXPECT_THAT(*brain_vector, ElementsAre(1.0f, -3.0f, 3.140625f));

  absl::StatusOr<std::vector<float>> single = ReadVector(path, "single");
  ASSERT_TRUE(single.ok()) << single.status();
  EXPECT_THAT(*single, ElementsAreArray(f32));
}

TEST(SafetensorsTest, SingleTensorNeedsNoName) {
  const Matrix a = MakeMatrix(2, 2, Layout::kRowMajor);
  const std::string path = TempPath("one.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"only", &a}}).ok());
  absl::StatusOr<LoadedMatrix> loaded = ReadMatrix(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ExpectSameValues(loaded->matrix, a);
}

TEST(SafetensorsTest, WriterRejectsBadNames) {
  const Matrix a = MakeMatrix(2, 2, Layout::kRowMajor);
  const std::string path = TempPath("bad.safetensors");
  EXPECT_EQ(WriteSafetensors(path, {{"x", &a}, {"x", &a}}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(WriteSafetensors(path, {{"", &a}}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(WriteSafetensors(path, {{"__metadata__", &a}}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(WriteSafetensors(path, {{"x", nullptr}}).code(), absl::StatusCode::kInvalidArgument);
}

TEST(TensorIoTest, RealPpocrData) {
  absl::StatusOr<LoadedMatrix> weights = ReadMatrix(absl::StrCat(kDataDir, "weights.npy"));
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_EQ(weights->matrix.rows(), 6625);
  EXPECT_EQ(weights->matrix.cols(), 120);
  EXPECT_EQ(weights->dtype, "float32");
  EXPECT_FALSE(weights->matrix.owned());

  absl::StatusOr<std::vector<float>> bias = ReadVector(absl::StrCat(kDataDir, "bias.npy"));
  ASSERT_TRUE(bias.ok()) << bias.status();
  EXPECT_EQ(bias->size(), 6625);

  absl::StatusOr<LoadedMatrix> queries = ReadMatrix(absl::StrCat(kDataDir, "queries.npy"));
  ASSERT_TRUE(queries.ok()) << queries.status();
  EXPECT_EQ(queries->matrix.rows(), 2560);
  EXPECT_EQ(queries->matrix.cols(), 120);
}

TEST(TensorIoTest, FileLevelErrors) {
  const std::string missing = TempPath("missing.npy");
  ExpectError(ReadMatrix(missing).status(), absl::StatusCode::kNotFound, missing, "cannot open");
  const std::string missing_st = TempPath("missing.safetensors");
  ExpectError(ReadVector(missing_st, "x").status(), absl::StatusCode::kNotFound, missing_st,
              "cannot open");

  for (const std::string name : {"empty.npy", "empty.safetensors"}) {
    const std::string path = WriteBytes(name, "");
    ExpectError(ReadMatrix(path).status(), absl::StatusCode::kInvalidArgument, path, "empty");
  }
  const std::string other = WriteBytes("m.bin", "data");
  ExpectError(ReadMatrix(other).status(), absl::StatusCode::kInvalidArgument, other,
              "unsupported file type");
  const std::string npy = WriteBytes("named.npy", NpyFile(NpyDict("<f4", "(1, 1)"), "abcd"));
  ExpectError(ReadMatrix(npy, "x").status(), absl::StatusCode::kInvalidArgument, npy, "'x'");
  const std::string dir = TempPath("dir.npy");
  std::filesystem::create_directories(dir);
  ExpectError(ReadMatrix(dir).status(), absl::StatusCode::kInvalidArgument, dir,
              "not a regular file");
}

struct BadFileCase {
  std::string name;      // file name; its extension selects the format
  std::string contents;  // file bytes
  bool read_vector;      // ReadVector instead of ReadMatrix
  std::string tensor;    // tensor name
  std::string keyword;   // expected in the message
};

std::vector<BadFileCase> BadFileCases() {
  const std::string six = Bytes(std::vector<float>{1, 2, 3, 4, 5, 6});
  const std::string f64 = NpyDict("<f8", "(2, 3)");
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  auto st = [](const std::string& entry, const std::string& data) {
    return SafetensorsFile(absl::StrCat(R"({"t": )", entry, "}"), data);
  };
  return {
      {"magic.npy", "hello, world: not numpy", false, "", "bad magic"},
      {"short.npy", "\x93NUM", false, "", "truncated header"},
      {"shortmagic.npy", "\x93NUX", false, "", "bad magic"},
      {"header.npy", std::string("\x93NUMPY\x01\x00", 8), false, "", "truncated header"},
      {"hlen.npy", std::string("\x93NUMPY\x01\x00\xff\x7f{}", 12), false, "",
       "header length 32767 exceeds"},
      {"version.npy", NpyFile(NpyDict("<f4", "(2, 3)"), six, 1).replace(6, 1, "\x04"), false, "",
       "unsupported .npy version 4.0"},
      {"dict.npy", NpyFile("{'descr': '<f4' 'fortran_order': False}", six), false, "",
       "malformed .npy header"},
      {"nokey.npy", NpyFile("{'descr': '<f4', 'fortran_order': False}", six), false, "",
       "malformed .npy header: missing"},
      {"dupkey.npy", NpyFile("{'descr': '<f4', 'descr': '<f4'}", six), false, "", "repeated key"},
      {"shape.npy", NpyFile(NpyDict("<f4", "(2, -3)"), six), false, "", "malformed .npy header"},
      {"bool.npy", NpyFile("{'descr': '<f4', 'fortran_order': 0, 'shape': (2, 3)}", six), false, "",
       "expected True or False"},
      {"unterminated.npy", NpyFile("{'descr': '<f4", ""), false, "", "unterminated"},
      {"after.npy", NpyFile(NpyDict("<f4", "(2, 3)") + " x", six), false, "", "after '}'"},
      {"f8.npy", NpyFile(f64, six + six), false, "", "unsupported dtype '<f8'"},
      {"i4.npy", NpyFile(NpyDict("<i4", "(2, 3)"), six), false, "", "unsupported dtype '<i4'"},
      {"bigendian.npy", NpyFile(NpyDict(">f4", "(2, 3)"), six), false, "",
       "unsupported dtype '>f4'"},
      {"pipe.npy", NpyFile(NpyDict("|f4", "(2, 3)"), six), false, "", "unsupported dtype"},
      {"struct.npy",
       NpyFile("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (6,), }", six), false,
       "", "structured"},
      {"rank1.npy", NpyFile(NpyDict("<f4", "(6,)"), six), false, "", "wrong rank"},
      {"rank3.npy", NpyFile(NpyDict("<f4", "(1, 2, 3)"), six), false, "", "wrong rank"},
      {"rank0.npy", NpyFile(NpyDict("<f4", "()"), six.substr(0, 4)), false, "", "shape is scalar"},
      {"vector.npy", NpyFile(NpyDict("<f4", "(2, 3)"), six), true, "", "wrong rank"},
      {"vector3.npy", NpyFile(NpyDict("<f4", "(6, 1, 1)"), six), true, "", "wrong rank"},
      {"zero.npy", NpyFile(NpyDict("<f4", "(0, 3)"), ""), false, "", "zero-sized"},
      {"zerovec.npy", NpyFile(NpyDict("<f4", "(0,)"), ""), true, "", "zero-sized"},
      {"truncated.npy", NpyFile(NpyDict("<f4", "(2, 3)"), six.substr(0, 8)), false, "",
       "truncated: header says 2x3 float32 (24 bytes) but only 8 data bytes follow"},
      {"trailing.npy", NpyFile(NpyDict("<f4", "(2, 3)"), six + "xx"), false, "",
       "trailing data: header says 2x3 float32 (24 bytes) but 26 data bytes follow"},
      {"huge.npy", NpyFile(NpyDict("<f4", "(4294967296, 4294967296)"), six), false, "",
       "too large"},
      {"hugedim.npy", NpyFile(NpyDict("<f4", "(99999999999999999999, 1)"), six), false, "",
       "dimension too large"},
      {"nan.npy", NpyFile(NpyDict("<f4", "(2, 3)"), Bytes(std::vector<float>{1, 2, 3, 4, 5, nan})),
       false, "", "non-finite value nan at row 1, column 2"},
      {"inf.npy",
       NpyFile(NpyDict("<f4", "(2, 3)", true), Bytes(std::vector<float>{1, 2, 3, -inf, 5, 6})),
       false, "", "non-finite value -inf at row 1, column 1"},
      {"infvec.npy", NpyFile(NpyDict("<f4", "(3,)"), Bytes(std::vector<float>{1, inf, 3})), true,
       "", "non-finite value inf at element 1"},
      {"nan16.npy", NpyFile(NpyDict("<f2", "(1, 2)"), Bytes(std::vector<uint16_t>{0x3c00, 0x7e00})),
       false, "", "non-finite value nan at row 0, column 1"},

      {"short.safetensors", "1234", false, "", "truncated header"},
      {"hlen.safetensors", LittleEndian(1000, 8) + "{}", false, "", "header length 1000 exceeds"},
      {"hlenmax.safetensors", LittleEndian(~uint64_t{0}, 8) + "{}", false, "", "header length"},
      {"json.safetensors", SafetensorsFile("{\"t\": ", six), false, "", "invalid JSON"},
      {"array.safetensors", SafetensorsFile("[1, 2]", six), false, "", "not a JSON object"},
      {"utf8.safetensors", SafetensorsFile("{\"\xff\": 1}", six), false, "", "invalid JSON"},
      {"none.safetensors", SafetensorsFile("{\"__metadata__\": {}}", ""), false, "",
       "holds no tensors"},
      {"entry.safetensors", st("7", six), false, "t", "entry is not an object"},
      {"nodtype.safetensors", st(R"({"shape": [2, 3], "data_offsets": [0, 24]})", six), false, "t",
       "no string 'dtype'"},
      {"i64.safetensors",
       st(R"({"dtype": "I64", "shape": [2, 3], "data_offsets": [0, 48]})", six + six), false, "t",
       "unsupported dtype 'I64'"},
      {"f64.safetensors", st(R"({"dtype": "F64", "shape": [3], "data_offsets": [0, 24]})", six),
       true, "t", "unsupported dtype 'F64'"},
      {"negshape.safetensors",
       st(R"({"dtype": "F32", "shape": [-2, 3], "data_offsets": [0, 24]})", six), false, "t",
       "not a non-negative integer"},
      {"floatshape.safetensors",
       st(R"({"dtype": "F32", "shape": [2.0, 3], "data_offsets": [0, 24]})", six), false, "t",
       "not a non-negative integer"},
      {"noshape.safetensors", st(R"({"dtype": "F32", "data_offsets": [0, 24]})", six), false, "t",
       "no array 'shape'"},
      {"offsets.safetensors", st(R"({"dtype": "F32", "shape": [2, 3], "data_offsets": [0]})", six),
       false, "t", "data_offsets"},
      {"reversed.safetensors",
       st(R"({"dtype": "F32", "shape": [2, 3], "data_offsets": [24, 0]})", six), false, "t",
       "invalid 'data_offsets'"},
      {"bounds.safetensors",
       st(R"({"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]})", six.substr(0, 20)),
       false, "t",
       "truncated: tensor 't' has data_offsets [0, 24] but the data section holds only 20"},
      {"far.safetensors",
       st(R"({"dtype": "F32", "shape": [2, 3], "data_offsets": [18446744073709551600, 18446744073709551615]})",
          six),
       false, "t", "truncated"},
      {"span.safetensors", st(R"({"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]})", six),
       false, "t", "span 20 bytes but shape 2x3 F32 needs 24"},
      {"huge.safetensors",
       st(R"({"dtype": "F32", "shape": [4611686018427387904, 4], "data_offsets": [0, 24]})", six),
       false, "t", "too large"},
      {"rank3.safetensors",
       st(R"({"dtype": "F32", "shape": [1, 2, 3], "data_offsets": [0, 24]})", six), false, "t",
       "wrong rank"},
      {"zero.safetensors", st(R"({"dtype": "F32", "shape": [2, 0], "data_offsets": [0, 0]})", six),
       false, "t", "zero-sized"},
      {"nan.safetensors",
       st(R"({"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]})",
          Bytes(std::vector<uint16_t>{0x3f80, 0x3f80, 0x7fc0, 0x3f80})),
       false, "t", "tensor 't': non-finite value nan at row 1, column 0"},
  };
}

TEST(TensorIoTest, BadFilesGiveInvalidArgumentNamingPathAndProblem) {
  for (const BadFileCase& c : BadFileCases()) {
    SCOPED_TRACE(c.name);
    const std::string path = WriteBytes(c.name, c.contents);
    const absl::Status status =
        c.read_vector ? ReadVector(path, c.tensor).status() : ReadMatrix(path, c.tensor).status();
    ExpectError(status, absl::StatusCode::kInvalidArgument, path, c.keyword);
  }
}

}  // namespace
}  // namespace adasoftmax
