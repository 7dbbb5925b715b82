// Compiled with -ffast-math (see core/CMakeLists.txt): that is what lets GCC vectorise the max
// reduction and makes glibc's <cmath> declare the SIMD variants of exp, so SumExp calls
// libmvec. Keep this file to kernels whose inputs are validated finite.
#include "core/softmax_kernels.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/target_clones.h"

namespace adasoftmax {

ADASOFTMAX_KERNEL
double ScaledLogits(const float* raw, const float* bias, double temperature, size_t count,
                    double* mu) {
  double max = std::numeric_limits<double>::lowest();
  // Two loops: with the null test inside one, GCC left the loop without a bias scalar.
  if (bias == nullptr) {
#pragma omp simd reduction(max : max)
    for (size_t i = 0; i < count; ++i) {
      mu[i] = temperature * static_cast<double>(raw[i]);
      max = mu[i] > max ? mu[i] : max;
    }
    return max;
  }
#pragma omp simd reduction(max : max)
  for (size_t i = 0; i < count; ++i) {
    mu[i] = temperature * (static_cast<double>(raw[i]) + bias[i]);
    max = mu[i] > max ? mu[i] : max;
  }
  return max;
}

ADASOFTMAX_KERNEL
double SumExp(const double* values, size_t count, double shift) {
  double sum = 0;
#pragma omp simd reduction(+ : sum)
  for (size_t i = 0; i < count; ++i) {
    // Below -104 the float exponential is 0, and the conversion stays in range.
    sum += std::exp(static_cast<float>(std::max(values[i] - shift, -104.0)));
  }
  return sum;
}

ADASOFTMAX_KERNEL
double SumExp(const float* values, size_t count, double shift) {
  const float shift_f = static_cast<float>(shift);
  double sum = 0;
#pragma omp simd reduction(+ : sum)
  for (size_t i = 0; i < count; ++i) sum += std::exp(values[i] - shift_f);
  return sum;
}

ADASOFTMAX_KERNEL
HalfExpSums HalfExp(float* values, size_t count, double shift) {
  const float shift_f = static_cast<float>(shift);
  double sum = 0, sum_sq = 0;
#pragma omp simd reduction(+ : sum, sum_sq)
  for (size_t i = 0; i < count; ++i) {
    const float g = std::exp(0.5f * (values[i] - shift_f));
    values[i] = g;
    sum += g;
    sum_sq += static_cast<double>(g) * g;
  }
  return {sum, sum_sq};
}

ADASOFTMAX_KERNEL
float MaxOf(const float* values, size_t count) {
  float max = std::numeric_limits<float>::lowest();
#pragma omp simd reduction(max : max)
  for (size_t i = 0; i < count; ++i) max = values[i] > max ? values[i] : max;
  return max;
}

ADASOFTMAX_KERNEL
float LowerBounds(const float* estimate, const float* variance, float scale, size_t count,
                  float* lower) {
  float max = std::numeric_limits<float>::lowest();
#pragma omp simd reduction(max : max)
  for (size_t i = 0; i < count; ++i) {
    lower[i] = estimate[i] - std::sqrt(scale * variance[i]);
    max = lower[i] > max ? lower[i] : max;
  }
  return max;
}

ADASOFTMAX_KERNEL
void NegativeLogs(double* values, size_t count) {
#pragma omp simd
  for (size_t i = 0; i < count; ++i) values[i] = -std::log(values[i]);
}

}  // namespace adasoftmax
