#ifndef ADASOFTMAX_CORE_SOFTMAX_KERNELS_H_
#define ADASOFTMAX_CORE_SOFTMAX_KERNELS_H_

// The exact path's vectorised loops over a block of logits. Compiled for AVX-512, AVX2 and
// baseline x86-64 and picked at load time. REQUIRES (both): finite inputs.

#include <cstddef>

namespace adasoftmax {

// mu[i] = temperature * (raw[i] + bias[i]) (bias may be null) for i < count; returns the
// largest mu[i].
double ScaledLogits(const float* raw, const float* bias, double temperature, size_t count,
                    double* mu);

// sum_i exp(values[i] - shift), through glibc's vector exp (libmvec). The summation order
// differs from a scalar loop's, so results may differ from it, and between CPUs, in the last
// bits.
double SumExp(const double* values, size_t count, double shift);

}  // namespace adasoftmax

#endif  // ADASOFTMAX_CORE_SOFTMAX_KERNELS_H_
