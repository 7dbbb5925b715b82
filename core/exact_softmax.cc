#include "core/exact_softmax.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <queue>
#include <tuple>
#include <utility>

#include "core/blas.h"
#include "core/panel_kernels.h"
#include "core/softmax_kernels.h"
#include "core/worker_pool.h"

namespace adasoftmax {
namespace {

// Orders (logit, index) pairs so that "greater" means ranked higher.
struct RanksHigher {
  bool operator()(const std::pair<double, uint32_t>& a,
                  const std::pair<double, uint32_t>& b) const {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  }
};

// The k best (logit, index) pairs offered, in a min-heap on rank: the top is the weakest.
class BestK {
 public:
  explicit BestK(uint32_t k) : k_(k) {}

  // Offers an entry; returns the logit below which later entries cannot enter (-inf until k
  // are held). Out of line, so that the loop that finds the rare entries worth offering keeps
  // its registers.
  [[gnu::noinline]] double Offer(double logit, uint32_t index) {
    const std::pair<double, uint32_t> entry(logit, index);
    if (heap_.size() < k_) {
      heap_.push(entry);
    } else if (RanksHigher()(entry, heap_.top())) {
      heap_.pop();
      heap_.push(entry);
    }
    return heap_.size() < k_ ? -std::numeric_limits<double>::infinity() : heap_.top().first;
  }

  size_t size() const { return heap_.size(); }
  // Removes and returns the weakest.
  std::pair<double, uint32_t> PopWeakest() {
    const std::pair<double, uint32_t> weakest = heap_.top();
    heap_.pop();
    return weakest;
  }

 private:
  uint32_t k_;
  std::priority_queue<std::pair<double, uint32_t>, std::vector<std::pair<double, uint32_t>>,
                      RanksHigher>
      heap_;
};

// The fused pass over some of a query's entries: the running max of the logits, the sum of
// their exponentials shifted by it, and the k best. Passes over disjoint entries merge.
class SoftmaxPass {
 public:
  explicit SoftmaxPass(uint32_t k) : best_(k) {}

  // Adds entries [first, first + count): raw products raw[0, count), bias (may be null)
  // aligned with raw.
  void Add(const float* raw, const float* bias, double temperature, size_t count, size_t first) {
    // Blocks small enough to stay in L1: logits and top-k first, then the block's exponentials
    // in one vectorised pass.
    constexpr size_t kBlock = 1024;
    float mu[kBlock];
    for (size_t begin = 0; begin < count; begin += kBlock) {
      const size_t block = std::min(kBlock, count - begin);
      const double block_max = ScaledLogits(raw + begin, bias ? bias + begin : nullptr,
                                            static_cast<float>(temperature), block, mu);
      // Most blocks, and most entries of the rest, rank below the current k-th best.
      for (size_t j = 0; block_max >= threshold_ && j < block; ++j) {
        if (mu[j] >= threshold_) [[unlikely]] {
          threshold_ = best_.Offer(mu[j], static_cast<uint32_t>(first + begin + j));
        }
      }
      Rescale(block_max);
      sum_ += SumExp(mu, block, max_);
    }
  }

  void Merge(SoftmaxPass& other) {
    while (other.best_.size() > 0) {
      const auto [logit, index] = other.best_.PopWeakest();
      threshold_ = best_.Offer(logit, index);
    }
    if (other.sum_ == 0) return;  // it held no entries
    Rescale(other.max_);
    sum_ += other.sum_ * std::exp(other.max_ - max_);
  }

  TopKResult Finish() {
    TopKResult result;
    result.log_partition = max_ + std::log(sum_);
    result.indices.resize(best_.size());
    result.logits.resize(best_.size());
    result.probabilities.resize(best_.size());
    for (size_t r = best_.size(); r-- > 0;) {
      std::tie(result.logits[r], result.indices[r]) = best_.PopWeakest();
      result.probabilities[r] = std::exp(result.logits[r] - result.log_partition);
    }
    result.exact = true;
    return result;
  }

 private:
  // Raises the shift to `max` if it is larger.
  void Rescale(double max) {
    if (max <= max_) return;
    sum_ *= std::exp(max_ - max);
    max_ = max;
  }

  BestK best_;
  double threshold_ = -std::numeric_limits<double>::infinity();  // best_'s entry bar
  double max_ = -std::numeric_limits<double>::infinity();
  double sum_ = 0;  // sum of exp(mu_i - max_)
};

// A batch's SGEMMs run on blocks of this many bytes of float32 rows, with at most kGemmQueries
// queries per call. One call over all rows made OpenBLAS pack A into a buffer too large for
// the cache: about two passes over A however small the batch. Blocks that stay in L2 read A
// once, and calls this small (up to 10^6 multiply-adds) take OpenBLAS 0.3.21's unpacked small-
// matrix kernels on AVX-512 CPUs. Measured on 50257 x 768 and 32000 x 4096, batches of 2 to 32
// ran 1.3-3.5x faster than one call per thread (see BM_ExactBatch).
constexpr size_t kGemmBlockBytes = size_t{128} << 10;
constexpr size_t kGemmQueries = 16;

// out[q * n + i] = A_i . x_q for rows [begin, end) and the `batch` queries in x (batch x d,
// row-major), by BLAS: SGEMV for one query, SGEMMs for more. Half-precision rows are widened
// into a buffer block by block first; float32 rows of one query are a single call.
void BlasProducts(const Model& m, const float* x, size_t batch, size_t begin, size_t end,
                  float* out) {
  const size_t d = m.d();
  const bool whole = m.dtype() == DType::kFloat32 && batch == 1;
  const size_t block =
      whole ? end - begin : std::max<size_t>(1, kGemmBlockBytes / (d * sizeof(float)));
  std::vector<float> widened;
  if (m.dtype() != DType::kFloat32) widened.resize(block * d);
  for (size_t first = begin; first < end; first += block) {
    const int rows = static_cast<int>(std::min(block, end - first)), cols = static_cast<int>(d);
    const float* a = static_cast<const float*>(m.row(first));
    if (!widened.empty()) {
      WidenTo(m.dtype(), m.row(first), rows * d, widened.data());
      a = widened.data();
    }
    if (batch == 1) {
      cblas_sgemv(CblasRowMajor, CblasNoTrans, rows, cols, 1.0f, a, cols, x, 1, 0.0f, out + first,
                  1);
      continue;
    }
    for (size_t q = 0; q < batch; q += kGemmQueries) {  // out[q.., first..] = X[q..] A[first..]^T
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans,
                  static_cast<int>(std::min(kGemmQueries, batch - q)), rows, cols, 1.0f, x + q * d,
                  cols, a, cols, 0.0f, out + q * m.n() + first, static_cast<int>(m.n()));
    }
  }
}

// OpenBLAS runs single-threaded on each block of rows, the blocks on the worker pool: as fast as
// OpenBLAS's own threads, which would otherwise spin after every call and slow down whatever
// runs next on the pool.
void SingleThreadedBlas() {
  [[maybe_unused]] static const bool single_threaded = [] {
    openblas_set_num_threads(1);
    return true;
  }();
}

// The number of consecutive shares of the n rows a pass over A splits into, one per thread.
size_t Shares(size_t n, size_t d) {
  return n * d < kExactParallelMinEntries ? 1 : std::min(ParallelWidth(), n);
}

// Runs body(share, begin, end) for each share [begin, end) of the n rows, on the worker pool.
template <typename Body>
void OnShares(size_t n, size_t d, Body body) {
  const size_t shares = Shares(n, d);
  ParallelFor(shares, [&](size_t s) { body(s, n * s / shares, n * (s + 1) / shares); });
}

// RawProducts, calling then(share, begin, end) on the thread that computed the products of the
// rows [begin, end), right after them.
template <typename Then>
void RawProductsThen(const Model& m, absl::Span<const Query> queries, absl::Span<float> out,
                     Then then) {
  SingleThreadedBlas();
  const size_t n = m.n(), d = m.d(), batch = queries.size();
  if (batch == 0) return;
  const bool stream = batch == 1 && n * d * ElementBytes(m.dtype()) >= kStreamMinBytes &&
                      (m.dtype() != DType::kFloat32 || d <= kStreamMaxColumns);
  std::vector<float> x;  // X (batch x d), for SGEMM
  if (batch > 1) {
    x.resize(batch * d);
    for (size_t q = 0; q < batch; ++q) {
      std::copy(queries[q].x.begin(), queries[q].x.end(), &x[q * d]);
    }
  }
  const float* xs = batch == 1 ? queries[0].x.data() : x.data();
  OnShares(n, d, [&](size_t share, size_t begin, size_t end) {
    if (stream) {
      RowsDotVector(m.dtype(), m.row(begin), end - begin, d, xs, &out[begin]);
    } else {
      BlasProducts(m, xs, batch, begin, end, out.data());
    }
    then(share, begin, end);
  });
}

}  // namespace

TopKResult SoftmaxTopK(absl::Span<const float> raw, absl::Span<const float> bias,
                       double temperature, uint32_t k) {
  SoftmaxPass pass(k);
  pass.Add(raw.data(), bias.empty() ? nullptr : bias.data(), temperature, raw.size(), 0);
  return pass.Finish();
}

size_t ExactPassThreads(const Model& model) { return Shares(model.n(), model.d()); }

void RawProducts(const Model& m, absl::Span<const Query> queries, absl::Span<float> out) {
  RawProductsThen(m, queries, out, [](size_t, size_t, size_t) {});
}

void SgemvProducts(const Model& m, absl::Span<const float> x, absl::Span<float> out) {
  SingleThreadedBlas();
  OnShares(m.n(), m.d(), [&](size_t, size_t begin, size_t end) {
    BlasProducts(m, x.data(), 1, begin, end, out.data());
  });
}

std::vector<TopKResult> ExactSoftmax::Run(absl::Span<const Query> queries) const {
  const Model& m = *model_;
  const size_t n = m.n();
  const size_t batch = queries.size();
  std::vector<TopKResult> results(batch);
  if (batch == 0) return results;

  // passes[s * batch + q]: query q's fused pass over share s of the rows, run by the thread
  // that computed the share's products, right after them; then each query's passes merge.
  const size_t shares = Shares(n, m.d());
  std::vector<SoftmaxPass> passes;
  passes.reserve(shares * batch);
  for (size_t s = 0; s < shares; ++s) {
    for (const Query& q : queries) passes.emplace_back(q.options.k);
  }
  std::vector<float> logits(n * batch);
  RawProductsThen(m, queries, absl::MakeSpan(logits), [&](size_t s, size_t begin, size_t end) {
    const float* bias = m.has_bias() ? &m.bias()[begin] : nullptr;
    for (size_t q = 0; q < batch; ++q) {
      passes[s * batch + q].Add(&logits[q * n + begin], bias, queries[q].options.temperature,
                                end - begin, begin);
    }
  });
  for (size_t q = 0; q < batch; ++q) {
    for (size_t s = 1; s < shares; ++s) passes[q].Merge(passes[s * batch + q]);
    TopKResult& r = results[q] = passes[q].Finish();
    r.samples = static_cast<uint64_t>(n) * m.d();
    r.sample_fraction = 1.0;
    r.bytes_touched = r.samples * ElementBytes(m.dtype());
  }
  return results;
}

}  // namespace adasoftmax
