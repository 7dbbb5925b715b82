#ifndef ADASOFTMAX_CORE_MATRIX_H_
#define ADASOFTMAX_CORE_MATRIX_H_

#include <cstddef>
#include <memory>
#include <vector>

namespace adasoftmax {

enum class Layout {
  kRowMajor,  // element (r, c) at r * cols + c
  kColMajor,  // element (r, c) at c * rows + r
};

// A dense float32 matrix that either owns its storage or views memory kept alive by an
// opaque handle (for example a memory-mapped file). Immutable after construction except
// through mutable_data() on an owned matrix. Thread-compatible.
class Matrix {
 public:
  Matrix() = default;
  Matrix(Matrix&&) = default;
  Matrix& operator=(Matrix&&) = default;
  // Not copyable: a copy would alias an owned buffer. Use Copy().
  Matrix(const Matrix&) = delete;
  Matrix& operator=(const Matrix&) = delete;

  // A zero-filled matrix that owns its storage.
  static Matrix Owned(size_t rows, size_t cols, Layout layout);
  // A view of rows * cols floats at `data`, valid while `keepalive` lives.
  static Matrix View(const float* data, size_t rows, size_t cols, Layout layout,
                     std::shared_ptr<const void> keepalive);

  size_t rows() const { return rows_; }
  size_t cols() const { return cols_; }
  size_t size() const { return rows_ * cols_; }
  Layout layout() const { return layout_; }
  bool owned() const { return !owned_.empty() || size() == 0; }

  const float* data() const { return data_; }
  // REQUIRES: owned().
  float* mutable_data() { return owned_.data(); }

  float at(size_t r, size_t c) const {
    return layout_ == Layout::kRowMajor ? data_[r * cols_ + c] : data_[c * rows_ + r];
  }

  // An owned copy in `layout`.
  Matrix Copy(Layout layout) const;

 private:
  size_t rows_ = 0;
  size_t cols_ = 0;
  Layout layout_ = Layout::kRowMajor;
  const float* data_ = nullptr;
  std::vector<float> owned_;
  std::shared_ptr<const void> keepalive_;
};

}  // namespace adasoftmax

#endif  // ADASOFTMAX_CORE_MATRIX_H_
