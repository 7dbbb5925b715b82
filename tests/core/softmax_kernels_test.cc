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

TEST(SoftmaxKernelsTest, SumHalfExpSumsTheHalfExponentialsAndTheirSquares) {
  const std::vector<float> lower = Lower(1001, 1);
  const double shift = 5;
  double sum = 0, sum_sq = 0;
  for (float l : lower) {
    sum += std::exp((l - shift) / 2);
    sum_sq += std::exp(l - shift);
  }
  const HalfExpSums sums = SumHalfExp(lower.data(), lower.size(), shift);
  EXPECT_NEAR(sums.sum, sum, 1e-6 * sum);
  EXPECT_NEAR(sums.sum_sq, sum_sq, 1e-6 * sum_sq);
}

TEST(SoftmaxKernelsTest, NormalizerTargetsAreTheSmallerOfBothBounds) {
  std::vector<float> lower = Lower(1001, 2);
  lower[7] = -300;  // so far below that a / g overflows a float
  const double shift = 5, a = 0.02, b = 3e-4;
  std::vector<float> target(lower.size());
  NormalizerTargets(lower.data(), lower.size(), shift, a, b, target.data());
  int by_gamma = 0, by_alpha = 0;  // which bound set the target: both must occur
  for (size_t i = 0; i < lower.size(); ++i) {
    if (i == 7) continue;
    const double g = std::exp((lower[i] - shift) / 2);
    const double expected = std::min(a / g, b / (g * g));
    ASSERT_NEAR(target[i], expected, 1e-5 * expected) << "arm " << i;
    ++(a / g < b / (g * g) ? by_gamma : by_alpha);
  }
  EXPECT_GT(by_gamma, 0);
  EXPECT_GT(by_alpha, 0);
  EXPECT_EQ(target[7], std::numeric_limits<float>::infinity());
}

}  // namespace
}  // namespace adasoftmax
