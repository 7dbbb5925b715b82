#ifndef ADASOFTMAX_CORE_SOFTMAX_KERNELS_H_
#define ADASOFTMAX_CORE_SOFTMAX_KERNELS_H_

// Vectorised loops over logits, their estimates and the column order's exponentials. Compiled
// for AVX-512, AVX2 and baseline x86-64 and picked at load time. REQUIRES (all): finite inputs.

#include <cstddef>

namespace adasoftmax {

// mu[i] = temperature * (raw[i] + bias[i]) (bias may be null) for i < count; returns the
// largest mu[i].
double ScaledLogits(const float* raw, const float* bias, double temperature, size_t count,
                    double* mu);

// sum_i exp(values[i] - shift) for values[i] <= shift: each exponential in float (relative
// error about 1e-7, that of float products) through glibc's vector expf (libmvec), summed in
// double. The summation order differs from a scalar loop's, so results may differ from it, and
// between CPUs, in the last bits.
double SumExp(const double* values, size_t count, double shift);

// The same for float values.
double SumExp(const float* values, size_t count, double shift);
// max_i values[i].
float MaxOf(const float* values, size_t count);
// Replaces values[i] with g_i = exp((values[i] - shift) / 2) and returns sum_i g_i and
// sum_i g_i^2: one exp per value.
struct HalfExpSums {
  double sum;
  double sum_sq;
};
HalfExpSums HalfExp(float* values, size_t count, double shift);

// The normaliser's per-arm weights (paper Algorithm 2): lower[i] = estimate[i] -
// sqrt(scale * variance[i]); returns the largest lower[i].
float LowerBounds(const float* estimate, const float* variance, float scale, size_t count,
                  float* lower);

// values[i] = -log(values[i]) through glibc's vector log (libmvec), which may differ from the
// scalar log in the last bit. REQUIRES: every values[i] in (0, 1].
void NegativeLogs(double* values, size_t count);

}  // namespace adasoftmax

#endif  // ADASOFTMAX_CORE_SOFTMAX_KERNELS_H_
