#ifndef ADASOFTMAX_CORE_TENSOR_IO_H_
#define ADASOFTMAX_CORE_TENSOR_IO_H_

// Reading and writing float tensors in NumPy .npy and .safetensors files.
//
// Readers validate every header field against the file size before touching data, reject
// unsupported dtypes, wrong ranks, zero-sized dimensions and non-finite values, and report
// errors as "<path>: <problem>": absl::NotFoundError for a missing file or tensor,
// absl::InvalidArgumentError for bad content, absl::AbortedError when the file changes while it
// is read (e.g. copied over). Files are read, not memory-mapped: a mapping would fault with
// SIGBUS, ending the process, when another process truncates the file. Only the requested
// tensor's bytes are read (and a safetensors file's header); float32 data is then used as read,
// float16 and bfloat16 are decoded into owned float32. All functions are thread-safe.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/dtype.h"
#include "core/matrix.h"

namespace adasoftmax {

struct LoadedMatrix {
  Matrix matrix;      // float32; row r = row r of the stored tensor
  std::string dtype;  // dtype as stored: "float32", "float16" or "bfloat16"
};

// Reads a rank-2 tensor. `path` ends in ".npy" or ".safetensors". For safetensors, `tensor`
// names the tensor (e.g. "lm_head.weight"); it may be empty only when the file holds exactly
// one tensor. For .npy, `tensor` must be empty. C-order data gives a Layout::kRowMajor matrix,
// Fortran-order data a Layout::kColMajor one.
absl::StatusOr<LoadedMatrix> ReadMatrix(const std::string& path, std::string_view tensor = "");

// A rank-2 tensor's elements in their stored dtype, read from the file, alive while
// `keepalive` is.
struct RawMatrix {
  DType dtype = DType::kFloat32;
  size_t rows = 0;
  size_t cols = 0;
  Layout layout = Layout::kRowMajor;
  const void* data = nullptr;  // rows x cols elements in `layout`
  std::shared_ptr<const void> keepalive;
};

// Like ReadMatrix (same checks, same errors) without decoding. `admit`, when given, is shown the
// header (data null) before the data is read, and an error it returns is returned instead.
absl::StatusOr<RawMatrix> ReadRawMatrix(
    const std::string& path, std::string_view tensor = "",
    const std::function<absl::Status(const RawMatrix&)>& admit = {});

// Reads a rank-1 tensor (shape (n,)); also accepts shapes (n,1) and (1,n).
absl::StatusOr<std::vector<float>> ReadVector(const std::string& path,
                                              std::string_view tensor = "");

// Reads queries for the solvers: a rank-2 tensor with one query a row (returned row-major), or
// a rank-1 tensor as a single query.
absl::StatusOr<Matrix> ReadQueries(const std::string& path);

// Writes float32 .npy (version 1.0, header padded to 64 bytes); a column-major matrix is
// written with fortran_order True.
absl::Status WriteNpy(const std::string& path, const Matrix& m);
// Writes float32 .npy of shape (n,).
absl::Status WriteNpy(const std::string& path, absl::Span<const float> v);

// Writes a .safetensors file holding the given named float32 rank-2 tensors (C order), in the
// given order. Names must be non-empty, distinct and not "__metadata__"; pointers non-null.
absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<std::pair<std::string, const Matrix*>>& tensors);


}  // namespace adasoftmax

#endif  // ADASOFTMAX_CORE_TENSOR_IO_H_
