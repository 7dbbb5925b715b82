#include "core/softmax_kernels.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace adasoftmax {
namespace {

// Lower bounds as the normaliser sees them: spread over 60 nats below the largest, an odd count
// so that every vectorised loop has a tail.
std::vector<float> Lower(size_t count, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> unit(0, 1);
  std::vector<float> lower(count);
  for (float& l : lower) l = 5 - 60 * unit(rng);
  return lower;
}

TEST(SoftmaxKernelsTest, HalfExpReplacesValuesAndSumsThemAndTheirSquares) {
  const std::vector<float> lower = Lower(1001, 1);
  const double shift = 5;
  double sum = 0, sum_sq = 0;
  for (float l : lower) {
    sum += std::exp((l - shift) / 2);
    sum_sq += std::exp(l - shift);
  }
  std::vector<float> g = lower;
  const HalfExpSums sums = HalfExp(g.data(), g.size(), shift);
  EXPECT_NEAR(sums.sum, sum, 1e-6 * sum);
  EXPECT_NEAR(sums.sum_sq, sum_sq, 1e-6 * sum_sq);
  for (size_t i = 0; i < g.size(); ++i) {
    const double expected = std::exp((lower[i] - shift) / 2);
    ASSERT_NEAR(g[i], expected, 1e-6 * expected) << "value " << i;
  }
}

}  // namespace
}  // namespace adasoftmax
