#include "core/blas_kernels.h"

#include <cstdlib>

#include "core/blas.h"

// OpenBLAS's DYNAMIC_ARCH builds (Debian's) export these: the choice of kernels made at load,
// which reads OPENBLAS_CORETYPE, and its reset.
extern "C" void gotoblas_dynamic_init(void);
extern "C" void gotoblas_dynamic_quit(void);

namespace adasoftmax {
namespace {

// The best OpenBLAS 0.3.21 kernels this CPU runs, by its features; null for none better than
// the fallback.
const char* KernelsForFeatures() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    return "SkylakeX";
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
  return nullptr;
}

}  // namespace

BlasKernels ChooseBlasKernels() {
  static const BlasKernels chosen = [] {
    BlasKernels kernels{openblas_get_corename(), ""};
    const char* better = KernelsForFeatures();
    if (kernels.name != "Prescott" || std::getenv("OPENBLAS_CORETYPE") != nullptr ||
        better == nullptr) {
      return kernels;
    }
    setenv("OPENBLAS_CORETYPE", better, /*overwrite=*/0);
    gotoblas_dynamic_quit();
    gotoblas_dynamic_init();
    kernels.replaced = kernels.name;
    kernels.name = openblas_get_corename();
    return kernels;
  }();
  return chosen;
}

}  // namespace adasoftmax
