#ifndef ADASOFTMAX_CORE_HUGE_BUFFER_H_
#define ADASOFTMAX_CORE_HUGE_BUFFER_H_

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstring>
#include <new>
#include <utility>

namespace adasoftmax {

// A zero-initialised array of trivially copyable T in anonymous memory that asks the kernel for
// transparent huge pages. Arrays the sampler reads at random (a cache line per arm) would
// otherwise miss the TLB on almost every access. Movable, not copyable; thread-compatible.
template <typename T>
class HugeBuffer {
 public:
  HugeBuffer() = default;
  explicit HugeBuffer(size_t count) { Reset(count); }
  HugeBuffer(HugeBuffer&& other) noexcept { *this = std::move(other); }
  HugeBuffer& operator=(HugeBuffer&& other) noexcept {
    std::swap(data_, other.data_);
    std::swap(size_, other.size_);
    std::swap(bytes_, other.bytes_);
    return *this;
  }
  HugeBuffer(const HugeBuffer&) = delete;
  HugeBuffer& operator=(const HugeBuffer&) = delete;
  ~HugeBuffer() { Release(); }

  // Resizes to `count` zeros, reusing the mapping when it is large enough.
  // Aborts like operator new when memory is exhausted.
  void Reset(size_t count) {
    const size_t bytes = count * sizeof(T);
    if (bytes > bytes_) {
      Release();
      const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
      bytes_ = (bytes + page - 1) / page * page;
      void* p = mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) throw std::bad_alloc();
      madvise(p, bytes_, MADV_HUGEPAGE);
      data_ = static_cast<T*>(p);
    } else if (bytes > 0) {
      std::memset(static_cast<void*>(data_), 0, bytes);
    }
    size_ = count;
  }

  T* data() { return data_; }
  const T* data() const { return data_; }
  size_t size() const { return size_; }
  T& operator[](size_t i) { return data_[i]; }
  const T& operator[](size_t i) const { return data_[i]; }

 private:
  void Release() {
    if (data_ != nullptr) munmap(data_, bytes_);
    data_ = nullptr;
    size_ = bytes_ = 0;
  }

  T* data_ = nullptr;
  size_t size_ = 0;
  size_t bytes_ = 0;
};

}  // namespace adasoftmax

#endif  // ADASOFTMAX_CORE_HUGE_BUFFER_H_
