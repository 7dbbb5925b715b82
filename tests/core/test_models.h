#ifndef ADASOFTMAX_TESTS_CORE_TEST_MODELS_H_
#define ADASOFTMAX_TESTS_CORE_TEST_MODELS_H_

// Models and queries shared by the core tests.

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/types/span.h"
#include "core/matrix.h"
#include "core/model.h"
#include "core/synth.h"
#include "core/tensor_io.h"
#include "gtest/gtest.h"

namespace adasoftmax::testing {

struct ModelAndQueries {
  std::shared_ptr<const Model> model;
  Matrix queries;  // one query per row

  absl::Span<const float> query(size_t q) const {
    return absl::MakeConstSpan(queries.data() + q * queries.cols(), queries.cols());
  }
};

// The shipped real OCR head with bias and its real queries (tests run from the repository root),
// its weights kept in `dtype` and the sampler's copy in `sampling` (none: the default).
inline ModelAndQueries OcrHead(DType dtype = DType::kFloat32,
                               std::optional<DType> sampling = std::nullopt) {
  const std::string dir = "tests/data/ppocrv4-rec/";
  absl::StatusOr<std::shared_ptr<const Model>> model = Model::Load({.weights = dir + "weights.npy",
                                                                    .bias = dir + "bias.npy",
                                                                    .dtype = dtype,
                                                                    .sampling_dtype = sampling});
  EXPECT_TRUE(model.ok()) << model.status();
  absl::StatusOr<LoadedMatrix> queries = ReadMatrix(dir + "queries.npy");
  EXPECT_TRUE(queries.ok()) << queries.status();
  return {*std::move(model), std::move(queries->matrix)};
}

inline ModelAndQueries SynthHead(const SynthOptions& options, DType dtype = DType::kFloat32,
                                 std::optional<DType> sampling = std::nullopt) {
  absl::StatusOr<SynthData> data = Synthesize(options);
  EXPECT_TRUE(data.ok()) << data.status();
  absl::StatusOr<std::shared_ptr<const Model>> model =
      Model::Create(std::move(data->weights), std::move(data->bias), dtype, sampling);
  EXPECT_TRUE(model.ok()) << model.status();
  return {*std::move(model), std::move(data->queries)};
}

}  // namespace adasoftmax::testing

#endif  // ADASOFTMAX_TESTS_CORE_TEST_MODELS_H_
