#ifndef ADASOFTMAX_CORE_SWEEP_PASSES_H_
#define ADASOFTMAX_CORE_SWEEP_PASSES_H_

#include <cstddef>
#include <cstdint>
#include <utility>

namespace adasoftmax {

// How SweepColumns (panel_kernels.h) splits `count` columns into passes over the arms: full
// passes of kSweepPassColumns columns (as many read streams, and that fraction of the partial
// sums' traffic), then one pass with the 1 to kSweepPassColumns left, so that a small bin is a
// single pass. Calls pass.template operator()<kColumns, kFirstPass, kLastPass>(k) for the pass
// over columns [k, k + kColumns). Inline: every caller is compiled for its own instruction set.
// Eight columns a pass suit the README's machine: BM_SweepColumnsFromMemory/0/1/8 takes
// 11.3-11.5 us in one pass against 14.7-15.2 in two of four, and sixteen a pass were slower
// again (29.8-32.7 us against 22.8-24.6 for 16 columns).
// REQUIRES: count >= 1.
inline constexpr size_t kSweepPassColumns = 8;

// How far ahead of a sequential read the row kernels prefetch (InterleavedDots in
// panel_kernels.cc).
inline constexpr size_t kPrefetchAheadBytes = 1024;

// How far ahead of its columns a sweep pass prefetches (SweepPass in panel_kernels.cc and in
// hwy_kernels.cc), by entry size. BM_SweepColumnsFromMemory/{1,2}/1/{4,8}, seven runs each,
// half precision 256 bytes ahead against 1024: float16 0.97-1.24x, bfloat16 1.05-1.43x as fast
// (8 columns: 1.43x); float32 ran as fast 512 and 1024 bytes ahead and 5-8% slower 256. Through
// the server (deploy/benchmark-server.sh, two alternated runs a side), W2's float16 sampler
// served 388 and 432 queries/s batched against 335 and 363, W1's within the noise (732, 821
// against 810, 850).
inline constexpr size_t SweepPrefetchBytes(size_t entry_bytes) {
  return entry_bytes == 4 ? 1024 : 256;
}

// Prefetches the cache lines of the `bytes` bytes `distance` bytes past p: an address, not a
// pointer, as it may lie past the end of p's array, which prefetching ignores.
[[gnu::always_inline]] inline void PrefetchAhead(const void* p, size_t bytes,
                                                 size_t distance = kPrefetchAheadBytes) {
  const uintptr_t ahead = reinterpret_cast<uintptr_t>(p) + distance;
  for (size_t b = 0; b < bytes; b += 64) {
    __builtin_prefetch(reinterpret_cast<const void*>(ahead + b));
  }
}

template <typename Pass>
[[gnu::always_inline]] inline void ForEachSweepPass(size_t count, Pass&& pass) {
  constexpr size_t kWidth = kSweepPassColumns;
  const size_t passes = (count + kWidth - 1) / kWidth;
  for (size_t k = 0; k + 1 < passes; ++k) {
    if (k == 0) {
      pass.template operator()<kWidth, true, false>(0);
    } else {
      pass.template operator()<kWidth, false, false>(kWidth * k);
    }
  }
  const size_t last = kWidth * (passes - 1);
  const bool alone = passes == 1;
  // The last pass, its 1 to kWidth columns a compile-time count.
  [&]<size_t... kLeft>(std::index_sequence<kLeft...>) __attribute__((always_inline)) {
    ((count - last == kLeft + 1 &&
      (alone ? pass.template operator()<kLeft + 1, true, true>(last)
             : pass.template operator()<kLeft + 1, false, true>(last),
       true)) ||
     ...);
  }(std::make_index_sequence<kWidth>());
}

}  // namespace adasoftmax

#endif  // ADASOFTMAX_CORE_SWEEP_PASSES_H_
