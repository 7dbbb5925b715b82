#ifndef ADASOFTMAX_CORE_RANDOM_H_
#define ADASOFTMAX_CORE_RANDOM_H_

// Internal to adasoftmax_core: reproducible random numbers. Seeded results must not depend on
// the standard library, so variates are built from SplitMix64 or std::mt19937_64's raw output
// (specified exactly by the standard) rather than from the implementation-defined <random>
// distributions.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>

namespace adasoftmax {

// SplitMix64's increment: SplitMix64(seed + i * kSplitMix64Gamma) is the i-th output of the
// SplitMix64 generator seeded with `seed`.
inline constexpr uint64_t kSplitMix64Gamma = 0x9e3779b97f4a7c15ULL;

// The SplitMix64 finaliser: derives well-mixed seeds from related ones (seed + index).
inline uint64_t SplitMix64(uint64_t x) {
  x += kSplitMix64Gamma;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// A uniform in the open interval (0, 1) from 64 random bits: -log of it is a standard
// exponential, positive.
inline double OpenUniform(uint64_t bits) {
  return (static_cast<double>(bits >> 11) + 0.5) * 0x1.0p-53;
}

// Portable variates. Thread-compatible.
class Rng {
 public:
  explicit Rng(uint64_t seed) : engine_(seed) {}

  // Uniform in [0, 1).
  double Uniform() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }
  double Uniform(double lo, double hi) { return lo + (hi - lo) * Uniform(); }

  // Uniform integer in [0, n). REQUIRES: n > 0.
  uint64_t Below(uint64_t n) {
    const uint64_t limit =
        std::numeric_limits<uint64_t>::max() - std::numeric_limits<uint64_t>::max() % n;
    uint64_t bits;
    do {
      bits = engine_();
    } while (bits >= limit);
    return bits % n;
  }

  // Standard normal (Marsaglia's polar method; the second variate of each pair is kept for the
  // next call).
  double Normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    double u, v, s;
    do {
      u = 2 * Uniform() - 1;
      v = 2 * Uniform() - 1;
      s = u * u + v * v;
    } while (s >= 1 || s == 0);
    const double factor = std::sqrt(-2 * std::log(s) / s);
    spare_ = v * factor;
    has_spare_ = true;
    return u * factor;
  }

  // Student-t with `dof` degrees of freedom (a positive integer).
  double StudentT(int dof) {
    const double numerator = Normal();
    double chi_squared = 0;
    for (int i = 0; i < dof; ++i) {
      const double g = Normal();
      chi_squared += g * g;
    }
    return numerator / std::sqrt(std::max(chi_squared, 1e-300) / dof);
  }

  double Sign() { return (engine_() >> 63) ? 1.0 : -1.0; }

 private:
  std::mt19937_64 engine_;
  bool has_spare_ = false;
  double spare_ = 0;
};

}  // namespace adasoftmax

#endif  // ADASOFTMAX_CORE_RANDOM_H_
