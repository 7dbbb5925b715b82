#ifndef ADASOFTMAX_CORE_SWEEP_PASSES_H_
#define ADASOFTMAX_CORE_SWEEP_PASSES_H_

#include <cstddef>

namespace adasoftmax {

// How SweepColumns (panel_kernels.h) splits `count` columns into passes over the arms: full
// passes of four columns (four read streams, and a quarter of the partial sums' traffic), then
// one pass with the one to four left, so that a small bin is a single pass. Calls
// pass.template operator()<kColumns, kFirstPass, kLastPass>(k) for the pass over columns
// [k, k + kColumns). Inline: every caller is compiled for its own instruction set.
// REQUIRES: count >= 1.
template <typename Pass>
[[gnu::always_inline]] inline void ForEachSweepPass(size_t count, Pass&& pass) {
  const size_t passes = (count + 3) / 4;
  for (size_t k = 0; k + 1 < passes; ++k) {
    if (k == 0) {
      pass.template operator()<4, true, false>(0);
    } else {
      pass.template operator()<4, false, false>(4 * k);
    }
  }
  const size_t last = 4 * (passes - 1);
  const bool alone = passes == 1;
  switch (count - last) {
    case 1:
      return alone ? pass.template operator()<1, true, true>(last)
                   : pass.template operator()<1, false, true>(last);
    case 2:
      return alone ? pass.template operator()<2, true, true>(last)
                   : pass.template operator()<2, false, true>(last);
    case 3:
      return alone ? pass.template operator()<3, true, true>(last)
                   : pass.template operator()<3, false, true>(last);
    default:
      return alone ? pass.template operator()<4, true, true>(last)
                   : pass.template operator()<4, false, true>(last);
  }
}

}  // namespace adasoftmax

#endif  // ADASOFTMAX_CORE_SWEEP_PASSES_H_
