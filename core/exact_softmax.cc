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

// Runs products(begin, end) on `blocks` consecutive shares of the n rows, on the worker pool.
template <typename Products>
void OnShares(size_t n, size_t d, Products products) {
  const size_t blocks = n * d < kParallelMinEntries ? 1 : std::min(ParallelWidth(), n);
  ParallelFor(blocks, [&](size_t b) { products(n * b / blocks, n * (b + 1) / blocks); });
}

}  // namespace

TopKResult SoftmaxTopK(absl::Span<const float> raw, absl::Span<const float> bias,
                       double temperature, uint32_t k) {
  BestK best(k);
  double threshold = -std::numeric_limits<double>::infinity();  // best's entry bar
  double max = -std::numeric_limits<double>::infinity();
  double sum = 0;  // sum of exp(mu_i - max)
  // Blocks small enough to stay in L1: logits and top-k first, then the block's exponentials
  // in one vectorised pass.
  constexpr size_t kBlock = 1024;
  double mu[kBlock];  // in double: the temperature may take them past float's range
  for (size_t begin = 0; begin < raw.size(); begin += kBlock) {
    const size_t count = std::min(kBlock, raw.size() - begin);
    const double block_max = ScaledLogits(
        raw.data() + begin, bias.empty() ? nullptr : bias.data() + begin, temperature, count, mu);
    // Most blocks, and most entries of the rest, rank below the current k-th best.
    for (size_t j = 0; block_max >= threshold && j < count; ++j) {
      if (mu[j] >= threshold) [[unlikely]] {
        threshold = best.Offer(mu[j], static_cast<uint32_t>(begin + j));
      }
    }
    if (block_max > max) {
      sum *= std::exp(max - block_max);
      max = block_max;
    }
    sum += SumExp(mu, count, max);
  }
  TopKResult result;
  result.log_partition = max + std::log(sum);
  result.indices.resize(best.size());
  result.logits.resize(best.size());
  result.probabilities.resize(best.size());
  for (size_t r = best.size(); r-- > 0;) {
    std::tie(result.logits[r], result.indices[r]) = best.PopWeakest();
    result.probabilities[r] = std::exp(result.logits[r] - result.log_partition);
  }
  result.exact = true;
  return result;
}

void RawProducts(const Model& m, absl::Span<const Query> queries, absl::Span<float> out) {
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
  OnShares(n, d, [&](size_t begin, size_t end) {
    if (stream) {
      RowsDotVector(m.dtype(), m.row(begin), end - begin, d, xs, &out[begin]);
    } else {
      BlasProducts(m, xs, batch, begin, end, out.data());
    }
  });
}

void SgemvProducts(const Model& m, absl::Span<const float> x, absl::Span<float> out) {
  SingleThreadedBlas();
  OnShares(m.n(), m.d(),
           [&](size_t begin, size_t end) { BlasProducts(m, x.data(), 1, begin, end, out.data()); });
}

std::vector<TopKResult> ExactSoftmax::Run(absl::Span<const Query> queries) const {
  const Model& m = *model_;
  const size_t n = m.n();
  const size_t batch = queries.size();
  std::vector<TopKResult> results(batch);
  if (batch == 0) return results;

  // The calling thread's buffer, kept between calls: a fresh one is fresh pages every call
  // when it exceeds malloc's trim threshold, and faulting them in took a float16 50257 x 768
  // query 1.55 ms instead of 1.06-1.16 on a Zen 5 VM (`bench`, alternated). Holds the largest
  // batch the thread answered, n floats a query.
  thread_local std::vector<float> buffer;
  if (buffer.size() < n * batch) buffer.resize(n * batch);
  const absl::Span<float> logits(buffer.data(), n * batch);  // for the workers too
  RawProducts(m, queries, logits);
  auto answer = [&](size_t q) {
    TopKResult& r = results[q];
    r = SoftmaxTopK(absl::MakeConstSpan(&logits[q * n], n), m.bias(),
                    queries[q].options.temperature, queries[q].options.k);
    r.samples = static_cast<uint64_t>(n) * m.d();
    r.sample_fraction = 1.0;
    r.bytes_touched = r.samples * ElementBytes(m.dtype());
  };
  // A batch's fused passes in parallel, unless they take less than waking the workers.
  if (batch > 1 && n * batch >= kParallelMinEntries / 16) {
    ParallelFor(batch, answer);
  } else {
    for (size_t q = 0; q < batch; ++q) answer(q);
  }
  return results;
}

}  // namespace adasoftmax
