#ifndef ADASOFTMAX_CORE_TARGET_CLONES_H_
#define ADASOFTMAX_CORE_TARGET_CLONES_H_

#include <bit>
#include <cstdint>

// Marks a kernel to be compiled for x86-64-v4 (AVX-512 F/BW/DQ/VL), x86-64-v3 (AVX2, FMA) and
// baseline x86-64, the variant picked at load time for the CPU it runs on (the CI machine may
// differ from the benchmarked one). The v4 level's byte instructions let loops that mix byte
// masks with floats vectorise.
#if defined(__x86_64__)
#define ADASOFTMAX_KERNEL \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define ADASOFTMAX_KERNEL
#endif

namespace adasoftmax {

// m ? a : b for m = 0 or ~0, without a branch or a conditional store, so that GCC vectorises
// the loops that apply byte masks to floats.
inline float Select(uint32_t m, float a, float b) {
  return std::bit_cast<float>((std::bit_cast<uint32_t>(a) & m) |
                              (std::bit_cast<uint32_t>(b) & ~m));
}
inline uint32_t AllOnes(uint8_t flag) { return -static_cast<uint32_t>(flag); }

}  // namespace adasoftmax

#endif  // ADASOFTMAX_CORE_TARGET_CLONES_H_
