#ifndef ADASOFTMAX_TESTS_SERVER_TEST_UTIL_H_
#define ADASOFTMAX_TESTS_SERVER_TEST_UTIL_H_

// Helpers shared by the server and end-to-end tests: small model repositories written by the
// test itself, in a TempDir (tests/temp_dir.h).

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/synth.h"
#include "core/tensor_io.h"
#include "gtest/gtest.h"
#include "tests/temp_dir.h"

namespace adasoftmax::testing {

inline void WriteTextFile(const std::string& path, const std::string& text) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream out(path, std::ios::binary);
  out << text;
  ASSERT_TRUE(out.good()) << path;
}

inline std::string ReadTextFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Writes a synthetic head into `dir` as weights.npy, bias.npy (when options.bias),
// labels.txt ("class0", "class1", ...) and queries.npy, plus a model.pbtxt holding the file
// references followed by `extra_config`. Returns the generated data.
inline SynthData WriteModel(const std::string& dir, const SynthOptions& options,
                            const std::string& extra_config = "") {
  absl::StatusOr<SynthData> data = Synthesize(options);
  EXPECT_TRUE(data.ok()) << data.status();
  std::filesystem::create_directories(dir);
  EXPECT_TRUE(WriteNpy(dir + "/weights.npy", data->weights).ok());
  EXPECT_TRUE(WriteNpy(dir + "/queries.npy", data->queries).ok());
  std::string config = "weights: \"weights.npy\"\nlabels: \"labels.txt\"\n";
  if (options.bias) {
    EXPECT_TRUE(WriteNpy(dir + "/bias.npy", absl::Span<const float>(data->bias)).ok());
    config += "bias: \"bias.npy\"\n";
  }
  std::string labels;
  for (size_t i = 0; i < options.n; ++i) absl::StrAppend(&labels, "class", i, "\n");
  WriteTextFile(dir + "/labels.txt", labels);
  WriteTextFile(dir + "/model.pbtxt", config + extra_config);
  return *std::move(data);
}

inline absl::Span<const float> QueryRow(const Matrix& queries, size_t r) {
  return absl::MakeConstSpan(queries.data() + r * queries.cols(), queries.cols());
}

}  // namespace adasoftmax::testing

#endif  // ADASOFTMAX_TESTS_SERVER_TEST_UTIL_H_
