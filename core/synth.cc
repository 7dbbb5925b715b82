#include "core/synth.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <system_error>
#include <thread>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/blas.h"
#include "core/random.h"
#include "core/resources.h"

namespace adasoftmax {
namespace {

// Stream ids for StreamSeed.
constexpr uint64_t kColumnScaleStream = 1;
constexpr uint64_t kMassiveChannelStream = 2;
constexpr uint64_t kBiasStream = 3;
constexpr uint64_t kWeightStreamBase = uint64_t{1} << 32;  // + block of rows
constexpr uint64_t kQueryStreamBase = uint64_t{2} << 32;   // + query index

constexpr size_t kWeightRowsPerStream = 256;
constexpr size_t kQueriesPerChunk = 32;
constexpr int kMaxDraws = 100;
constexpr double kMinLogitMargin = 1e-3;
constexpr int kStudentTDof = 3;

// Runs work(first, step) for each first in [0, step), where step = min(tasks, 8, usable
// CPUs), in parallel; work(first, step) handles tasks first, first + step, ... < tasks.
void RunStrided(size_t tasks, const std::function<void(size_t, size_t)>& work) {
  const size_t step = std::min(UsableCpus(), std::clamp<size_t>(tasks, 1, 8));
  std::vector<std::thread> workers;
  size_t first = 1;
  try {
    for (; first < step; ++first) workers.emplace_back(work, first, step);
  } catch (const std::system_error&) {  // No more threads: run the rest here.
  }
  for (; first < step; ++first) work(first, step);
  work(0, step);
  for (std::thread& worker : workers) worker.join();
}

// Seed of the independent random stream `stream` derived from the user's seed.
uint64_t StreamSeed(uint64_t seed, uint64_t stream) {
  return SplitMix64(SplitMix64(seed) ^ SplitMix64(~stream));
}

absl::Status ValidateOptions(const SynthOptions& o) {
  auto invalid = [](auto... parts) {
    return absl::InvalidArgumentError(absl::StrCat("SynthOptions: ", parts...));
  };
  constexpr size_t kMaxDim = std::numeric_limits<int32_t>::max();  // BLAS int arguments
  constexpr size_t kMaxElements = size_t{1} << 32;
  if (o.n < 2 || o.n > kMaxDim) return invalid("n must be in [2, 2^31) (got ", o.n, ")");
  if (o.d < 1 || o.d > kMaxDim) return invalid("d must be in [1, 2^31) (got ", o.d, ")");
  if (o.n > kMaxElements / o.d) return invalid("n x d is too large (", o.n, " x ", o.d, ")");
  if (o.queries > kMaxElements / o.d) {
    return invalid("queries x d is too large (", o.queries, " x ", o.d, ")");
  }
  if (!(o.logit_spread > 0) || !std::isfinite(o.logit_spread)) {
    return invalid("logit_spread must be positive and finite (got ", o.logit_spread, ")");
  }
  if (!(o.top1_min > 0 && o.top1_min <= o.top1_max && o.top1_max < 1)) {
    return invalid("need 0 < top1_min <= top1_max < 1 (got ", o.top1_min, ", ", o.top1_max, ")");
  }
  if (!(o.column_scale_spread >= 0 && o.column_scale_spread <= 3)) {
    return invalid("column_scale_spread must be in [0, 3] (got ", o.column_scale_spread, ")");
  }
  return absl::OkStatus();
}

Matrix MakeWeights(const SynthOptions& o) {
  std::vector<double> column_scale(o.d);
  Rng scale_rng(StreamSeed(o.seed, kColumnScaleStream));
  const double base = 1.0 / std::sqrt(static_cast<double>(o.d));
  for (double& s : column_scale) s = base * std::exp(o.column_scale_spread * scale_rng.Normal());

  Matrix weights = Matrix::Owned(o.n, o.d, Layout::kRowMajor);
  float* a = weights.mutable_data();
  // Each block of rows has its own stream, so the result does not depend on the thread count.
  const size_t blocks = (o.n + kWeightRowsPerStream - 1) / kWeightRowsPerStream;
  auto fill_blocks = [&](size_t first, size_t step) {
    for (size_t block = first; block < blocks; block += step) {
      Rng rng(StreamSeed(o.seed, kWeightStreamBase + block));
      const size_t row1 = std::min(o.n, (block + 1) * kWeightRowsPerStream);
      for (size_t row = block * kWeightRowsPerStream; row < row1; ++row) {
        float* out = a + row * o.d;
        for (size_t j = 0; j < o.d; ++j)
          out[j] = static_cast<float>(rng.Normal() * column_scale[j]);
      }
    }
  };
  RunStrided(blocks, fill_blocks);
  return weights;
}

// Channels and signs of the massive activations shared by all heavy-tailed queries.
struct MassiveChannels {
  std::vector<size_t> channels;
  std::vector<double> signs;
};

MassiveChannels DrawMassiveChannels(const SynthOptions& o) {
  MassiveChannels massive;
  Rng rng(StreamSeed(o.seed, kMassiveChannelStream));
  const size_t count = std::min<size_t>(o.d, 2 + rng.Below(5));
  std::vector<size_t> all(o.d);
  for (size_t j = 0; j < o.d; ++j) all[j] = j;
  for (size_t i = 0; i < count; ++i) {  // Partial Fisher-Yates shuffle.
    std::swap(all[i], all[i + rng.Below(o.d - i)]);
    massive.channels.push_back(all[i]);
    massive.signs.push_back(rng.Sign());
  }
  return massive;
}

// One attempt at a query: base direction, target row and target probability.
struct Draw {
  std::vector<float> z;
  uint32_t row = 0;
  double p = 0;
};

Draw DrawQuery(const SynthOptions& o, const MassiveChannels& massive, Rng& rng) {
  Draw draw;
  draw.z.resize(o.d);
  if (o.heavy_tailed) {
    for (float& v : draw.z) v = static_cast<float>(rng.StudentT(kStudentTDof));
    const double rms = std::sqrt(kStudentTDof / (kStudentTDof - 2.0));
    for (size_t i = 0; i < massive.channels.size(); ++i) {
      draw.z[massive.channels[i]] =
          static_cast<float>(massive.signs[i] * rng.Uniform(20, 100) * rms);
    }
  } else {
    for (float& v : draw.z) v = static_cast<float>(rng.Normal());
  }
  draw.row = static_cast<uint32_t>(rng.Below(o.n));
  draw.p = rng.Uniform(o.top1_min, o.top1_max);
  return draw;
}

double Dot(const float* a, const float* b, size_t d) {
  double sum = 0;
  for (size_t j = 0; j < d; ++j) sum += static_cast<double>(a[j]) * b[j];
  return sum;
}

// Logits base_i + c * slope_i and the log-softmax of `row` along that line.
class LogitLine {
 public:
  // Keeps references to `base` and `slope`.
  LogitLine(const std::vector<double>& base, const std::vector<double>& slope, size_t row)
      : base_(base), slope_(slope), row_(row), logits_(base_.size()) {}

  double Logit(size_t i, double c) const { return base_[i] + c * slope_[i]; }

  // log softmax_row at c and its derivative 1 - sum_i softmax_i * slope_i.
  std::pair<double, double> LogProbability(double c) {
    double max = -std::numeric_limits<double>::infinity();
    for (size_t i = 0; i < logits_.size(); ++i) {
      logits_[i] = Logit(i, c);
      max = std::max(max, logits_[i]);
    }
    double sum = 0, slope_sum = 0;
    for (size_t i = 0; i < logits_.size(); ++i) {
      const double w = std::exp(logits_[i] - max);
      sum += w;
      slope_sum += w * slope_[i];
    }
    return {logits_[row_] - max - std::log(sum), 1.0 - slope_sum / sum};
  }

 private:
  const std::vector<double>& base_;
  const std::vector<double>& slope_;
  size_t row_;
  std::vector<double> logits_;
};

// Solves log_probability(c) = log_p for c, starting from `initial`. log_probability is
// concave and increasing when the target's slope (1) exceeds every other slope, so safeguarded
// Newton converges. Returns NaN when it does not.
double SolveShift(LogitLine& line, double log_p, double initial) {
  double lo = -std::numeric_limits<double>::infinity();
  double hi = std::numeric_limits<double>::infinity();
  double c = initial;
  for (int iteration = 0; iteration < 200; ++iteration) {
    const auto [value, derivative] = line.LogProbability(c);
    const double f = value - log_p;
    if (!std::isfinite(f)) return std::nan("");
    if (std::abs(f) < 1e-9) return c;
    (f < 0 ? lo : hi) = c;
    double next = derivative > 0 ? c - f / derivative : std::nan("");
    if (!(next > lo && next < hi)) {  // Outside the bracket (or NaN): bisect or expand.
      if (std::isfinite(lo) && std::isfinite(hi)) {
        next = 0.5 * (lo + hi);
      } else {
        next = std::isfinite(lo) ? lo + 2 * (1 + std::abs(lo)) : hi - 2 * (1 + std::abs(hi));
      }
    }
    if (next == c) return std::nan("");
    c = next;
  }
  return std::nan("");
}

// Builds query x = s z + c A_r / |A_r|^2 from g = A z and h = A A_r (float BLAS products) and
// writes it to `x`. Returns false when the draw is infeasible.
bool BuildQuery(const SynthOptions& o, const Matrix& weights, const std::vector<float>& bias,
                const Draw& draw, const float* g, const float* h, float* x) {
  const size_t n = o.n, d = o.d, r = draw.row;
  const float* a_r = weights.data() + r * d;
  const double norm2 = Dot(a_r, a_r, d);
  if (!(norm2 > 0)) return false;
  // Logit i moves by slope_i = A_i.A_r / |A_r|^2 per unit of shift.
  std::vector<double> slope(n);
  for (size_t i = 0; i < n; ++i) {
    slope[i] = i == r ? 1.0 : h[i] / norm2;
    if (i != r && slope[i] > 1 - 1e-6) return false;  // r can never dominate row i.
  }
  // Moments over the background rows (all but r, unless n = 2), for the spread of
  // scale * g + shift * slope.
  const bool background_only = n > 2;
  const double count = background_only ? n - 1 : n;
  double g_mean = 0, slope_mean = 0;
  for (size_t i = 0; i < n; ++i) {
    if (background_only && i == r) continue;
    g_mean += g[i] / count;
    slope_mean += slope[i] / count;
  }
  double g_var = 0, slope_var = 0, covariance = 0;
  for (size_t i = 0; i < n; ++i) {
    if (background_only && i == r) continue;
    g_var += (g[i] - g_mean) * (g[i] - g_mean) / count;
    slope_var += (slope[i] - slope_mean) * (slope[i] - slope_mean) / count;
    covariance += (g[i] - g_mean) * (slope[i] - slope_mean) / count;
  }
  if (!(g_var > 0)) return false;

  // Alternate: solve the shift for the scale, then rescale so that the background logits
  // (without bias) keep std logit_spread despite the shift's side effect on them.
  const double spread2 = o.logit_spread * o.logit_spread;
  double scale = o.logit_spread / std::sqrt(g_var);
  std::vector<double> base(n);
  auto set_base = [&] {
    for (size_t i = 0; i < n; ++i) base[i] = scale * g[i] + (bias.empty() ? 0.0 : bias[i]);
  };
  set_base();
  // First guess: the shift that gives probability p if the other logits stayed put.
  double others = -std::numeric_limits<double>::infinity();
  for (size_t i = 0; i < n; ++i) {
    if (i != r) others = std::max(others, base[i]);
  }
  double others_sum = 0;
  for (size_t i = 0; i < n; ++i) {
    if (i != r) others_sum += std::exp(base[i] - others);
  }
  double shift = std::log(draw.p / (1 - draw.p)) + others + std::log(others_sum) - base[r];
  LogitLine line(base, slope, r);
  for (int round = 0;; ++round) {
    shift = SolveShift(line, std::log(draw.p), shift);
    if (!std::isfinite(shift)) return false;
    // scale^2 g_var + 2 scale shift covariance + shift^2 slope_var = spread^2.
    const double half_b = shift * covariance;
    const double discriminant = half_b * half_b - g_var * (shift * shift * slope_var - spread2);
    // No root: the shift alone spreads the logits too much; a smaller scale needs less shift.
    const double next = discriminant >= 0 ? (-half_b + std::sqrt(discriminant)) / g_var : 0;
    if (!background_only || round == 7 || std::abs(next - scale) <= 1e-3 * scale) break;
    scale = next > 0 ? next : 0.5 * scale;
    set_base();
  }

  for (size_t j = 0; j < d; ++j) {
    x[j] = static_cast<float>(scale * draw.z[j] + shift / norm2 * a_r[j]);
    if (!std::isfinite(x[j])) return false;
  }
  // The line's logits come from float products; confirm the margin of r over every row that
  // comes close with exact (double-accumulated) logits of the float query.
  auto exact_logit = [&](size_t i) {
    return Dot(weights.data() + i * d, x, d) + (bias.empty() ? 0.0 : bias[i]);
  };
  const double target_logit = exact_logit(r);
  const double window = 0.05 + 1e-4 * std::abs(line.Logit(r, shift));
  for (size_t i = 0; i < n; ++i) {
    if (i == r || line.Logit(i, shift) < line.Logit(r, shift) - window) continue;
    if (exact_logit(i) > target_logit - kMinLogitMargin) return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<SynthData> Synthesize(const SynthOptions& options) {
  if (absl::Status status = ValidateOptions(options); !status.ok()) return status;
  const SynthOptions& o = options;
  SynthData data;
  data.weights = MakeWeights(o);
  if (o.bias) {
    Rng rng(StreamSeed(o.seed, kBiasStream));
    data.bias.resize(o.n);
    for (float& b : data.bias) b = static_cast<float>(std::sqrt(0.5) * rng.Normal());
  }
  data.queries = Matrix::Owned(o.queries, o.d, Layout::kRowMajor);
  data.target_rows.assign(o.queries, 0);
  const MassiveChannels massive = DrawMassiveChannels(o);

  // Queries go in chunks; each draw of a chunk's pending queries costs one BLAS product of
  // [z; A_r] (2m x d) with A^T.
  std::vector<float> stacked, products;
  for (size_t q0 = 0; q0 < o.queries; q0 += kQueriesPerChunk) {
    const size_t q1 = std::min(o.queries, q0 + kQueriesPerChunk);
    std::vector<Rng> rngs;
    std::vector<size_t> pending;
    for (size_t q = q0; q < q1; ++q) {
      rngs.emplace_back(StreamSeed(o.seed, kQueryStreamBase + q));
      pending.push_back(q);
    }
    for (int round = 0; !pending.empty(); ++round) {
      if (round == kMaxDraws) {
        return absl::InvalidArgumentError(absl::StrCat(
            "SynthOptions: could not make the target row top-1 with probability in [", o.top1_min,
            ", ", o.top1_max, "] for query ", pending.front(), " after ", kMaxDraws,
            " draws; n or d is too small or column_scale_spread too large"));
      }
      const size_t m = pending.size();
      std::vector<Draw> draws;
      stacked.resize(2 * m * o.d);
      for (size_t k = 0; k < m; ++k) {
        draws.push_back(DrawQuery(o, massive, rngs[pending[k] - q0]));
        std::copy(draws[k].z.begin(), draws[k].z.end(), stacked.begin() + k * o.d);
        const float* a_r = data.weights.data() + size_t{draws[k].row} * o.d;
        std::copy(a_r, a_r + o.d, stacked.begin() + (m + k) * o.d);
      }
      products.resize(2 * m * o.n);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(2 * m),
                  static_cast<int>(o.n), static_cast<int>(o.d), 1.0f, stacked.data(),
                  static_cast<int>(o.d), data.weights.data(), static_cast<int>(o.d), 0.0f,
                  products.data(), static_cast<int>(o.n));
      std::vector<char> built(m);
      RunStrided(m, [&](size_t first, size_t step) {
        for (size_t k = first; k < m; k += step) {
          float* x = data.queries.mutable_data() + pending[k] * o.d;
          built[k] = BuildQuery(o, data.weights, data.bias, draws[k], products.data() + k * o.n,
                                products.data() + (m + k) * o.n, x);
        }
      });
      std::vector<size_t> still_pending;
      for (size_t k = 0; k < m; ++k) {
        if (built[k]) {
          data.target_rows[pending[k]] = draws[k].row;
        } else {
          still_pending.push_back(pending[k]);
        }
      }
      pending = std::move(still_pending);
    }
  }
  return data;
}

}  // namespace adasoftmax
