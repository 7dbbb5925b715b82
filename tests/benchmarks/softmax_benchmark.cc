// Microbenchmarks of the sampler's kernels and of exact vs adaptive top-k softmax end to end.
//   build/bin/adasoftmax_benchmarks --benchmark_filter=EndToEnd

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <random>
#include <vector>

#include "benchmark/benchmark.h"
#include "core/adaptive_softmax.h"
#include "core/arm_kernels.h"
#include "core/blas.h"
#include "core/blas_kernels.h"
#include "core/dtype.h"
#include "core/exact_softmax.h"
#include "core/panel_kernels.h"
#include "core/panel_order.h"
#include "core/softmax_kernels.h"
#include "core/synth.h"
#include "core/worker_pool.h"

namespace adasoftmax {
namespace {

// Before any benchmark runs, as the binaries' main() does; the context names the kernels.
const bool kBlasChosen = [] {
  benchmark::AddCustomContext("blas_kernels", ChooseBlasKernels().name);
  return true;
}();

std::vector<float> RandomFloats(size_t count, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<float> v(count);
  for (float& x : v) x = static_cast<float>(static_cast<double>(rng() >> 11) * 0x1.0p-53 - 0.5);
  return v;
}

// A dense sweep: consecutive arms' slices of four columns into every arm's sums, in cache.
void BM_SweepColumns(benchmark::State& state) {
  const size_t arms = state.range(0);
  const std::vector<float> slices = RandomFloats(4 * arms, 1);
  const std::vector<float> x = RandomFloats(4, 2);
  const void* columns[4] = {&slices[0], &slices[arms], &slices[2 * arms], &slices[3 * arms]};
  const std::vector<uint8_t> mask(arms, 1);
  std::vector<float> sum(arms), sum_sq(arms), scratch(2 * arms);
  for (auto _ : state) {
    SweepColumns(DType::kFloat32, columns, x.data(), 4, arms, mask.data(), false, sum.data(),
                 sum_sq.data(), scratch.data());
    benchmark::DoNotOptimize(sum.data());
  }
  state.SetBytesProcessed(state.iterations() * 4 * arms * sizeof(float));
}
BENCHMARK(BM_SweepColumns)->Arg(kChunk)->Arg(1 << 16);

// A 50257 x 768 matrix of random entries in `dtype` (154 MB as float32), out of cache.
std::vector<std::byte> RandomMatrix(DType dtype, size_t entries, uint64_t seed) {
  const std::vector<float> values = RandomFloats(entries, seed);
  std::vector<std::byte> out(entries * ElementBytes(dtype));
  VisitDType(dtype, [&](auto tag) {
    using T = decltype(tag);
    T* typed = reinterpret_cast<T*>(out.data());
    for (size_t k = 0; k < entries; ++k) typed[k] = Narrow<T>(values[k]);
  });
  return out;
}
DType DTypeArg(const benchmark::State& state) { return static_cast<DType>(state.range(0)); }
constexpr int kF32 = static_cast<int>(DType::kFloat32), kF16 = static_cast<int>(DType::kFloat16),
              kBF16 = static_cast<int>(DType::kBFloat16);

// The same sweep out of cache, as the sampler runs it: chunk-long slices of C random columns of
// a 50257 x 768 column-major matrix, per dtype (first argument: 0 float32, 1 float16, 2
// bfloat16), into the sums of a random one arm in N (second argument; 1: every arm); C is the
// third argument (4 unless given; a pass reads up to kSweepPassColumns).
void BM_SweepColumnsFromMemory(benchmark::State& state) {
  const DType dtype = DTypeArg(state);
  const size_t n = 50257, d = 768, arms = kChunk, bytes = ElementBytes(dtype);
  const size_t count = state.range(2);
  const std::vector<std::byte> matrix = RandomMatrix(dtype, n * d, 6);
  const std::vector<float> x = RandomFloats(count, 7);
  std::mt19937_64 rng(8);
  std::vector<uint8_t> mask(arms);
  for (uint8_t& m : mask) m = rng() % state.range(1) == 0;
  std::vector<float> sum(arms), sum_sq(arms), scratch(2 * arms);
  std::vector<const void*> columns(count);
  for (auto _ : state) {
    const size_t first = rng() % (n - arms);
    for (const void*& c : columns) c = &matrix[((rng() % d) * n + first) * bytes];
    SweepColumns(dtype, columns.data(), x.data(), count, arms, mask.data(), false, sum.data(),
                 sum_sq.data(), scratch.data());
    benchmark::DoNotOptimize(sum.data());
  }
  state.SetBytesProcessed(state.iterations() * count * arms * bytes);
}
BENCHMARK(BM_SweepColumnsFromMemory)
    ->ArgsProduct({{kF32, kF16, kBF16}, {1}, {4, 8}})
    ->ArgsProduct({{kF32}, {8, 16, 32}, {4}})
    ->ArgsProduct({{kF32}, {1}, {16, 32}});

// The exact path's GEMV for half dtypes (float32 for comparison; the exact path uses OpenBLAS
// there): all 50257 rows of 768, one thread.
void BM_RowsDotVector(benchmark::State& state) {
  const DType dtype = DTypeArg(state);
  const size_t n = 50257, d = 768;
  const std::vector<std::byte> matrix = RandomMatrix(dtype, n * d, 14);
  const std::vector<float> x = RandomFloats(d, 15);
  std::vector<float> out(n);
  for (auto _ : state) {
    RowsDotVector(dtype, matrix.data(), n, d, x.data(), out.data());
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(state.iterations() * matrix.size());
}
BENCHMARK(BM_RowsDotVector)->Arg(kF32)->Arg(kF16)->Arg(kBF16)->Unit(benchmark::kMillisecond);

// Loading's rounding of a row to the sampler's copy: 4096 floats to the argument's dtype.
void BM_NarrowTo(benchmark::State& state) {
  const DType dtype = DTypeArg(state);
  const std::vector<float> row = RandomFloats(4096, 16);
  std::vector<std::byte> out(row.size() * ElementBytes(dtype));
  for (auto _ : state) {
    NarrowTo(dtype, row.data(), row.size(), out.data());
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations() * row.size());
}
BENCHMARK(BM_NarrowTo)->Arg(kF32)->Arg(kF16)->Arg(kBF16);

// The sampler's whole-row reads: 1,500 random rows (in index order) of a 50257 x 768 row-major
// matrix in the first argument's dtype, read in groups of the second's rows (1: one by one).
void BM_RowDots(benchmark::State& state) {
  const DType dtype = DTypeArg(state);
  const size_t n = 50257, d = 768, group = state.range(1), bytes = ElementBytes(dtype);
  const std::vector<std::byte> matrix = RandomMatrix(dtype, n * d, 16);
  const std::vector<float> x = RandomFloats(d, 17);
  std::mt19937_64 rng(18);
  std::vector<const void*> rows(1500);
  std::vector<double> out(rows.size());
  for (auto _ : state) {
    state.PauseTiming();
    std::vector<size_t> ids(rows.size());
    for (size_t& i : ids) i = rng() % n;
    std::sort(ids.begin(), ids.end());
    for (size_t k = 0; k < ids.size(); ++k) rows[k] = &matrix[ids[k] * d * bytes];
    state.ResumeTiming();
    for (size_t k = 0; k < rows.size(); k += group) {
      RowDots(dtype, &rows[k], std::min(group, rows.size() - k), x.data(), d, &out[k]);
    }
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(state.iterations() * rows.size() * d * bytes);
}
BENCHMARK(BM_RowDots)->ArgsProduct({{kF32, kF16, kBF16}, {1, 32}});

// Single-arm gathers of 32 random panels from a 50257 x 768 column-major matrix.
void BM_GatherArm(benchmark::State& state) {
  const size_t n = 50257, panels = 768;
  const std::vector<float> matrix = RandomFloats(n * panels * kLanes, 3);
  std::vector<uint32_t> ids(32);
  std::mt19937_64 rng(4);
  for (uint32_t& id : ids) id = rng() % panels;
  const std::vector<float> xs = RandomFloats(ids.size() * kLanes, 5);
  size_t arm = 0;
  for (auto _ : state) {
    arm = (arm * 7919 + 1) % n;
    benchmark::DoNotOptimize(GatherArm(matrix.data(), n * kLanes, ids.data(), xs.data(),
                                       ids.size(), arm * kLanes));
  }
  state.SetItemsProcessed(state.iterations() * ids.size());
}
BENCHMARK(BM_GatherArm);

// One level step of a chunk's bookkeeping with half its arms pulled: select them, recompute
// their estimates and test what each arm still needs.
void BM_ChunkBookkeeping(benchmark::State& state) {
  const std::vector<float> sums = RandomFloats(2 * kBins * kChunk, 9);
  const std::vector<float> weights = RandomFloats(2 * kBins, 11);
  std::vector<float> work = sums, estimate(kChunk), variance(kChunk, 1.0f);
  std::vector<uint8_t> level(kChunk, 3), want(kChunk), mask(kChunk);
  for (size_t r = 0; r < kChunk; ++r) want[r] = r % 2;
  const Demand demand{.search = true, .threshold = 0.1f, .radius_scale = 20.0f};
  for (auto _ : state) {
    std::fill(level.begin(), level.end(), 3);
    benchmark::DoNotOptimize(SelectLevel(want.data(), level.data(), 3, kChunk, mask.data()));
    Advance(mask.data(), work.data(), {&weights[0], &weights[kBins], 1.0f, kBins, 4}, nullptr,
            kChunk, level.data(), estimate.data(), variance.data());
    benchmark::DoNotOptimize(UpdateWants(demand, level.data(), estimate.data(), variance.data(),
                                         kChunk, want.data()));
    for (size_t r = 0; r < kChunk; ++r) want[r] = r % 2;
  }
  state.SetItemsProcessed(state.iterations() * kChunk);
}
BENCHMARK(BM_ChunkBookkeeping);

// The fallback's prediction over every arm of a 50257-arm head, as the sampler makes it before
// the search (first argument 0) and before the normaliser's pulls (1), with the arms spread over
// 8 levels (second argument 0) or, as after the warm-up, all at level 4 (1); one in 64 exact,
// variances 0 to 1 and one in 16 infinite.
void BM_PredictedEntries(benchmark::State& state) {
  const size_t n = 50257;
  const std::vector<float> estimate = RandomFloats(n, 19), target = RandomFloats(n, 20);
  std::vector<float> variance = RandomFloats(n, 21), positive_target(n);
  std::vector<uint8_t> level(n);
  for (size_t i = 0; i < n; ++i) {
    level[i] = i % 64 == 0           ? kExactLevel
               : state.range(1) == 0 ? static_cast<uint8_t>(i * 7 % 8)
                                     : 4;
    variance[i] = i % 16 == 0 ? INFINITY : variance[i] + 0.5f;
    positive_target[i] = target[i] + 0.5f;
  }
  std::vector<uint64_t> entries(9);
  for (size_t l = 0; l < entries.size(); ++l) entries[l] = 8 << l;
  const Demand demand =
      state.range(0) == 0
          ? Demand{.search = true, .threshold = 0.3f, .radius_scale = 20.0f, .max_level = 8}
          : Demand{.target = positive_target.data(), .max_level = 8};
  for (auto _ : state) {
    benchmark::DoNotOptimize(PredictedEntries(demand, level.data(), estimate.data(),
                                              variance.data(), entries.data(), n));
  }
  state.SetItemsProcessed(state.iterations() * n);
}
BENCHMARK(BM_PredictedEntries)->Args({0, 0})->Args({0, 1})->Args({1, 0});

// The serial start of every sampled batch: one query's column order over a head of d columns
// (argument), heavy-tailed as W1 (d = 768) and W2 (d = 4096) are.
void BM_PanelOrderDraw(benchmark::State& state) {
  const size_t d = state.range(0);
  SynthData data =
      *Synthesize({.n = 2000, .d = d, .queries = 1, .seed = 22, .heavy_tailed = true});
  const auto model = *Model::Create(std::move(data.weights), {});
  const std::vector<absl::Span<const float>> xs = {
      absl::MakeConstSpan(data.queries.data(), data.queries.cols())};
  uint64_t seed = 1;
  for (auto _ : state) {
    benchmark::DoNotOptimize(PanelOrder::Draw(*model, xs, {}, seed++).size());
  }
}
BENCHMARK(BM_PanelOrderDraw)->Arg(768)->Arg(4096);

// The exact read of one arm the sampler does for references, winners and large sparse blocks.
void BM_RowDot(benchmark::State& state) {
  const size_t d = state.range(0);
  const std::vector<float> row = RandomFloats(d, 12), x = RandomFloats(d, 13);
  for (auto _ : state) benchmark::DoNotOptimize(RowDot(DType::kFloat32, row.data(), x.data(), d));
  state.SetBytesProcessed(state.iterations() * d * sizeof(float));
}
BENCHMARK(BM_RowDot)->Arg(768)->Arg(4096);

struct Workload {
  std::shared_ptr<const Model> model;
  Matrix queries;
};

constexpr SynthOptions kHeavyTailedHead{
    .n = 50257, .d = 768, .queries = 64, .seed = 12, .heavy_tailed = true};
const Workload& HeavyTailedHead() {
  static const Workload* w = [] {
    SynthData data = *Synthesize(kHeavyTailedHead);
    auto model = *Model::Create(std::move(data.weights), {});
    return new Workload{model, std::move(data.queries)};
  }();
  return *w;
}

// The exact path's parts on the same head: its products (RowsDotVector on 154 MB, see
// kStreamMinBytes) beside the bare SGEMV, and the fused softmax + top-1 pass.
void BM_Products(benchmark::State& state, bool sgemv) {
  const Workload& w = HeavyTailedHead();
  const Query query{absl::MakeConstSpan(w.queries.data(), w.queries.cols()), {}};
  std::vector<float> products(w.model->n());
  for (auto _ : state) {
    if (sgemv) {
      SgemvProducts(*w.model, query.x, absl::MakeSpan(products));
    } else {
      RawProducts(*w.model, {&query, 1}, absl::MakeSpan(products));
    }
    benchmark::DoNotOptimize(products.data());
  }
  state.SetBytesProcessed(state.iterations() * w.model->n() * w.model->d() * sizeof(float));
}
BENCHMARK_CAPTURE(BM_Products, sgemv, true)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Products, exact_path, false)->Unit(benchmark::kMillisecond);

// The exact path on a head of the OCR head's shape (6625 x 120, 3 MB, with a bias): in cache
// and below kParallelMinEntries, so on one thread, where the fused pass weighs beside the bare
// SGEMV.
void BM_SmallHead(benchmark::State& state, int path) {
  static const Workload* w = [] {
    SynthData data = *Synthesize({.n = 6625, .d = 120, .queries = 1, .seed = 16});
    auto model = *Model::Create(std::move(data.weights), RandomFloats(6625, 17));
    return new Workload{model, std::move(data.queries)};
  }();
  const Query query{absl::MakeConstSpan(w->queries.data(), w->queries.cols()), {}};
  const ExactSoftmax exact(w->model);
  std::vector<float> products(w->model->n());
  for (auto _ : state) {
    if (path == 0) {
      SgemvProducts(*w->model, query.x, absl::MakeSpan(products));
    } else if (path == 1) {
      RawProducts(*w->model, {&query, 1}, absl::MakeSpan(products));
    } else {
      benchmark::DoNotOptimize(exact.Run({&query, 1}));
    }
    benchmark::DoNotOptimize(products.data());
  }
}
BENCHMARK_CAPTURE(BM_SmallHead, sgemv, 0);
BENCHMARK_CAPTURE(BM_SmallHead, products, 1);
BENCHMARK_CAPTURE(BM_SmallHead, exact_path, 2);

// The same head kept in `dtype`.
const Model& HeavyTailedHeadIn(DType dtype) {
  if (dtype == DType::kFloat32) return *HeavyTailedHead().model;
  static std::shared_ptr<const Model> halves[3];
  std::shared_ptr<const Model>& m = halves[static_cast<int>(dtype)];
  if (m == nullptr) {
    m = *Model::Create(std::move(Synthesize(kHeavyTailedHead)->weights), {}, dtype);
  }
  return *m;
}

// A batch's products (arguments: batch size, dtype) by the exact path's blocked SGEMMs, and by
// one SGEMM per thread over its half of the rows, the plain way to call BLAS (float32 only).
std::vector<Query> BatchOfQueries(const Workload& w, size_t batch) {
  std::vector<Query> queries;
  const size_t d = w.queries.cols();
  for (size_t q = 0; q < batch; ++q) {
    queries.push_back({absl::MakeConstSpan(w.queries.data() + q * d, d), {}});
  }
  return queries;
}
void BM_ExactBatch(benchmark::State& state) {
  const Workload& w = HeavyTailedHead();
  const Model& model = HeavyTailedHeadIn(static_cast<DType>(state.range(1)));
  const std::vector<Query> queries = BatchOfQueries(w, state.range(0));
  std::vector<float> products(queries.size() * w.model->n());
  for (auto _ : state) {
    RawProducts(model, queries, absl::MakeSpan(products));
    benchmark::DoNotOptimize(products.data());
  }
  state.SetItemsProcessed(state.iterations() * queries.size());
}
void BM_SgemmBatch(benchmark::State& state) {
  const Workload& w = HeavyTailedHead();
  const int batch = static_cast<int>(state.range(0));
  const int n = static_cast<int>(w.model->n()), d = static_cast<int>(w.model->d());
  const float* a = static_cast<const float*>(w.model->row(0));
  std::vector<float> products(static_cast<size_t>(batch) * n);
  openblas_set_num_threads(1);  // one BLAS thread per worker, as RawProducts runs it
  for (auto _ : state) {
    ParallelFor(ParallelWidth(), [&](size_t b) {
      const int begin = n * b / ParallelWidth(), end = n * (b + 1) / ParallelWidth();
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, batch, end - begin, d, 1.0f,
                  w.queries.data(), d, a + static_cast<size_t>(begin) * d, d, 0.0f,
                  &products[begin], n);
    });
    benchmark::DoNotOptimize(products.data());
  }
  state.SetItemsProcessed(state.iterations() * batch);
}
BENCHMARK(BM_ExactBatch)
    ->ArgsProduct({{2, 4, 8, 16, 32}, {kF32, kF16, kBF16}})
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_SgemmBatch)->RangeMultiplier(2)->Range(2, 32)->Unit(benchmark::kMillisecond);

// The exact path's fused pass: {entries, with a bias (1) or without (0)}. 6625 entries with a
// bias are the OCR head's; 50257 without, GPT-2's.
void BM_SoftmaxTopK(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  const std::vector<float> raw = RandomFloats(n, 9);
  const std::vector<float> bias = state.range(1) != 0 ? RandomFloats(n, 10) : std::vector<float>();
  for (auto _ : state) benchmark::DoNotOptimize(SoftmaxTopK(raw, bias, 1.0, 1));
  state.SetItemsProcessed(state.iterations() * raw.size());
}
BENCHMARK(BM_SoftmaxTopK)->Args({6625, 1})->Args({50257, 0});

// The normaliser's kernels over a 50257-arm head, as one pass: lower bounds, the two sums of
// their exponentials and the per-arm variance targets (the sampler runs them per chunk).
void BM_NormalizerTargets(benchmark::State& state) {
  constexpr size_t kArms = 50257;
  std::vector<float> estimate = RandomFloats(kArms, 14), variance = RandomFloats(kArms, 15);
  for (size_t i = 0; i < kArms; ++i) {
    estimate[i] *= 40;  // logits spread over 40 nats, as a heavy-tailed query's
    variance[i] = std::abs(variance[i]);
  }
  std::vector<float> lower(kArms), target(kArms);
  for (auto _ : state) {
    const double shift = LowerBounds(estimate.data(), variance.data(), 30.0f, kArms, lower.data());
    const auto [gamma, alpha] = HalfExp(lower.data(), kArms, shift);
    NormalizerTargets(lower.data(), kArms, gamma / 1e3, alpha / 1e2, target.data());
    benchmark::DoNotOptimize(target.data());
  }
  state.SetItemsProcessed(state.iterations() * kArms);
}
BENCHMARK(BM_NormalizerTargets);

// The search's candidates for its exact references, the k + 32 = 33 best estimates of a chunk of
// kChunk arms (argument 0) or of a 50257-arm head (1), estimates spread over 40 nats.
void BM_BestArms(benchmark::State& state) {
  const uint32_t arms = state.range(0) == 0 ? kChunk : 50257;
  std::vector<float> estimate = RandomFloats(arms, 22);
  for (float& e : estimate) e *= 40;
  for (auto _ : state) benchmark::DoNotOptimize(BestArms(estimate.data(), 0, arms, 33));
  state.SetItemsProcessed(state.iterations() * arms);
}
BENCHMARK(BM_BestArms)->Arg(0)->Arg(1);

// End to end on a 50257 x 768 heavy-tailed head; adaptive with the given multipliers (x1000 and
// x1e6) and sample cost (0: no exact fallback).
void BM_EndToEnd(benchmark::State& state, bool adaptive) {
  const Workload& w = HeavyTailedHead();
  std::unique_ptr<TopKSoftmax> softmax;
  if (adaptive) {
    softmax = std::make_unique<AdaptiveSoftmax>(
        w.model, AdaptiveOptions{.topk_multiplier = state.range(0) / 1000.0,
                                 .normalizer_multiplier = state.range(1) / 1e6,
                                 .sample_cost = static_cast<double>(state.range(2))});
  } else {
    softmax = std::make_unique<ExactSoftmax>(w.model);
  }
  const size_t d = w.queries.cols();
  size_t q = 0;
  double samples = 0;
  for (auto _ : state) {
    const Query query{absl::MakeConstSpan(w.queries.data() + (q % w.queries.rows()) * d, d),
                      {.seed = q + 1}};
    samples += softmax->Run({&query, 1})[0].sample_fraction;
    ++q;
  }
  state.counters["fraction"] = samples / static_cast<double>(q);
}
BENCHMARK_CAPTURE(BM_EndToEnd, exact, false)->Args({0, 0, 0})->Unit(benchmark::kMillisecond);
// Theory mode (1, 1) and the calibrated multipliers of deploy/benchmark.sh (1, 1e-3), without
// and with the default exact fallback.
BENCHMARK_CAPTURE(BM_EndToEnd, adaptive, true)
    ->Args({1000, 1000000, 0})
    ->Args({1000, 1000, 0})
    ->Args({1000, 1000, static_cast<int64_t>(kDefaultSampleCost)})
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace adasoftmax
