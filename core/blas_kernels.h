#ifndef ADASOFTMAX_CORE_BLAS_KERNELS_H_
#define ADASOFTMAX_CORE_BLAS_KERNELS_H_

#include <string>

namespace adasoftmax {

// OpenBLAS picks its kernels by CPU model when it loads. Debian 12's OpenBLAS (0.3.21) does not
// know models newer than itself, such as Emerald Rapids (family 6, model 207), and falls back to
// its SSE3 "Prescott" kernels (fixed upstream in 0.3.25): a batch's SGEMM then runs 3-4x slower.
struct BlasKernels {
  std::string name;      // the kernels in use, as OpenBLAS names them, e.g. "SkylakeX"
  std::string replaced;  // what OpenBLAS had picked, when ChooseBlasKernels replaced it
};

// When OpenBLAS fell back to Prescott and OPENBLAS_CORETYPE is unset, sets that variable from
// the CPU's features (SkylakeX with AVX-512 F/BW/VL/DQ, Haswell with AVX2 and FMA) and has
// OpenBLAS choose again. Call it at the top of main(), before any BLAS call and before the
// program starts threads (it sets an environment variable). Later calls return the first
// call's result.
BlasKernels ChooseBlasKernels();

}  // namespace adasoftmax

#endif  // ADASOFTMAX_CORE_BLAS_KERNELS_H_
