#include "core/blas_kernels.h"

#include <cstdlib>

#include "gtest/gtest.h"

namespace adasoftmax {
namespace {

// On a CPU with AVX2 and FMA, OpenBLAS never runs its SSE3 fallback after the choice, whether
// OpenBLAS recognised the CPU or not (on an Emerald Rapids host it picks Prescott by itself).
TEST(BlasKernelsTest, NoFallbackKernelsOnAnAvx2Cpu) {
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr) GTEST_SKIP() << "OPENBLAS_CORETYPE chooses";
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
    GTEST_SKIP() << "no AVX2 and FMA: Prescott may be the best kernels";
  }
  const BlasKernels kernels = ChooseBlasKernels();
  EXPECT_NE(kernels.name, "Prescott");
  if (!kernels.replaced.empty()) {  // only the fallback is replaced, by kernels OpenBLAS has
    EXPECT_EQ(kernels.replaced, "Prescott");
    EXPECT_TRUE(kernels.name == "SkylakeX" || kernels.name == "Haswell") << kernels.name;
  }
  const BlasKernels again = ChooseBlasKernels();
  EXPECT_EQ(again.name, kernels.name);
  EXPECT_EQ(again.replaced, kernels.replaced);
}

}  // namespace
}  // namespace adasoftmax
