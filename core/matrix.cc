#include "core/matrix.h"

#include <algorithm>
#include <utility>

namespace adasoftmax {

Matrix Matrix::Owned(size_t rows, size_t cols, Layout layout) {
  Matrix m;
  m.rows_ = rows;
  m.cols_ = cols;
  m.layout_ = layout;
  m.owned_.assign(rows * cols, 0.0f);
  m.data_ = m.owned_.data();
  return m;
}

Matrix Matrix::View(const float* data, size_t rows, size_t cols, Layout layout,
                    std::shared_ptr<const void> keepalive) {
  Matrix m;
  m.rows_ = rows;
  m.cols_ = cols;
  m.layout_ = layout;
  m.data_ = data;
  m.keepalive_ = std::move(keepalive);
  return m;
}

Matrix Matrix::Copy(Layout layout) const {
  Matrix out = Owned(rows_, cols_, layout);
  float* dst = out.mutable_data();
  if (layout == layout_) {
    std::copy(data_, data_ + size(), dst);
    return out;
  }
  // Blocked transpose keeps both sides cache-friendly.
  const size_t outer = layout_ == Layout::kRowMajor ? rows_ : cols_;
  const size_t inner = layout_ == Layout::kRowMajor ? cols_ : rows_;
  constexpr size_t kBlock = 64;
  for (size_t o0 = 0; o0 < outer; o0 += kBlock) {
    const size_t o1 = std::min(outer, o0 + kBlock);
    for (size_t i0 = 0; i0 < inner; i0 += kBlock) {
      const size_t i1 = std::min(inner, i0 + kBlock);
      for (size_t o = o0; o < o1; ++o) {
        for (size_t i = i0; i < i1; ++i) dst[i * outer + o] = data_[o * inner + i];
      }
    }
  }
  return out;
}

}  // namespace adasoftmax
