// Offline subcommands: run, bench, calibrate, synth, demo. Each loads local files, answers
// queries in-process and prints JSON (or, for demo, a table).

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/commands.h"
#include "client/flags.h"
#include "core/adaptive_softmax.h"
#include "core/blas_kernels.h"
#include "core/calibration.h"
#include "core/exact_softmax.h"
#include "core/model.h"
#include "core/pac.h"
#include "core/status_macros.h"
#include "core/synth.h"
#include "core/tensor_io.h"
#include "core/topk_softmax.h"
#include "nlohmann/json.hpp"

namespace adasoftmax::client {
namespace {

using Json = nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;

// ---------------------------------------------------------------------------------------------
// Flags shared by the commands that answer queries.

struct InputFlags {
  std::string weights;
  std::string tensor;
  std::string bias;
  std::string bias_tensor;
  std::string dtype;
  std::string sampling_dtype;
  std::string queries;
  std::string labels;
  uint64_t k = 1;
  double epsilon = 0.3;
  double delta = 0.01;
  double temperature = 1;
  bool multiplier_flags = false;  // whether the command takes the two below (calibrate does not)
  std::vector<double> multipliers;
  double lognormal_correction = 0;
  double warmup_fraction = AdaptiveOptions{}.warmup_fraction;
  std::string calibration;
  double sample_cost = kDefaultSampleCost;
  bool measure_sample_cost = false;
  uint64_t seed = 0;
};

void AddModelFlags(FlagSet& flags, InputFlags* f, bool required = true) {
  Flag& weights = flags.AddString("weights", &f->weights,
                                  "weights A, n x d (.npy or .safetensors; row i = class i)");
  weights.Placeholder("PATH");
  if (required) weights.Required();
  flags.AddString("tensor", &f->tensor, "tensor name of the weights in a .safetensors file")
      .Placeholder("NAME");
  flags.AddString("bias", &f->bias, "bias b, length n (.npy or .safetensors)").Placeholder("PATH");
  flags.AddString("bias-tensor", &f->bias_tensor, "tensor name of the bias in a .safetensors file")
      .Placeholder("NAME");
  flags.AddString("dtype", &f->dtype,
                  "keep the weights in float32, float16 or bfloat16 (default: as stored)")
      .Placeholder("DTYPE");
  flags
      .AddString("sampling-dtype", &f->sampling_dtype,
                 "the sampler's copy of the weights in float32, float16 or bfloat16 (default: "
                 "float16 for float32 weights that fit it, else as the weights)")
      .Placeholder("DTYPE");
  Flag& queries = flags.AddString("queries", &f->queries,
                                  "queries, .npy matrix with one query (d values) a row");
  queries.Placeholder("PATH");
  if (required) queries.Required();
}

void AddQueryFlags(FlagSet& flags, InputFlags* f) {
  flags.AddUint64("k", &f->k, "number of top classes returned").Min(1);
  flags.AddDouble("epsilon", &f->epsilon, "relative error allowed on each probability")
      .Min(0, true)
      .Max(1, true);
  flags.AddDouble("delta", &f->delta, "allowed failure probability").Min(0, true).Max(1, true);
  flags.AddDouble("temperature", &f->temperature, "multiplies the logits").Min(0, true);
}

void AddWarmupFlag(FlagSet& flags, InputFlags* f) {
  flags
      .AddDouble("warmup-fraction", &f->warmup_fraction,
                 "the warm-up reads at most this fraction of a query's columns for every class")
      .Min(0, true)
      .Max(1)
      .Placeholder("F");
}

void AddMultiplierFlags(FlagSet& flags, InputFlags* f) {
  f->multiplier_flags = true;
  AddWarmupFlag(flags, f);
  flags
      .AddDoubleList("multipliers", &f->multipliers,
                     "top-k and normaliser variance multipliers (default: 1,1, theory, whose "
                     "queries with epsilon below 0.1 the adaptive path answers exactly; given, "
                     "every query samples)")
      .Count(2)
      .Min(0, true)
      .Placeholder("T,Z");
  flags
      .AddDouble("lognormal-correction", &f->lognormal_correction,
                 "the partition function sums exp(estimate - C x variance / 2) over the arms; "
                 "0: the paper's estimator")
      .Min(0)
      .Max(1)
      .Placeholder("C");
  flags
      .AddString("calibration", &f->calibration,
                 "calibration file (from `adasoftmax calibrate`) giving the multipliers, the "
                 "lognormal correction and the warm-up fraction; its k, epsilon, delta and "
                 "temperature are the defaults")
      .Placeholder("PATH");
}

void AddFallbackFlag(FlagSet& flags, InputFlags* f) {
  flags
      .AddDouble("sample-cost", &f->sample_cost,
                 "cost of a sampled entry in streamed exact entries; a query whose remaining "
                 "sampling would cost more than the exact path is answered exactly (0: never)")
      .Min(0)
      .Placeholder("C");
  flags.AddBool("measure-sample-cost", &f->measure_sample_cost,
                "start at --sample-cost, then price a sample at what samples and exact passes "
                "cost while running");
}

// What the inputs resolve to.
struct Inputs {
  std::shared_ptr<const Model> model;
  Matrix queries;  // row-major, one query a row
  std::vector<std::string> labels;
  QueryOptions query;
  AdaptiveOptions adaptive;
  std::shared_ptr<SampleCostMeter> meter;  // with --measure-sample-cost
  std::string multiplier_mode = "theory";  // "theory", "manual" or "calibrated"
  // The process's resident bytes just before and just after loading the model.
  double resident_before_model = 0, resident_after_model = 0;

  absl::Span<const float> Row(size_t r) const {
    return absl::MakeConstSpan(queries.data() + r * queries.cols(), queries.cols());
  }
  std::string Label(uint32_t i) const {
    return i < labels.size() ? labels[i] : absl::StrCat("#", i);
  }
};

absl::StatusOr<std::vector<std::string>> ReadLabels(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::vector<std::string> labels;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    labels.push_back(line);
  }
  return labels;
}

// Checks flag combinations that need no file; returns an exit code on a usage error.
std::optional<int> CheckMultiplierFlags(const FlagSet& flags) {
  for (const char* manual : {"multipliers", "lognormal-correction", "warmup-fraction"}) {
    if (flags.Seen(manual) && flags.Seen("calibration")) {
      return flags.UsageError(
          absl::StrCat("--", manual, " and --calibration are mutually exclusive"));
    }
  }
  return std::nullopt;
}

// The process's resident memory now (0 if /proc is unavailable).
double ResidentBytes() {
  std::ifstream statm("/proc/self/statm");
  double pages = 0, resident = 0;
  if (!(statm >> pages >> resident)) return 0;
  return resident * static_cast<double>(sysconf(_SC_PAGESIZE));
}

// Loads the model, queries, labels and calibration. Every error names the file. `before_model`
// runs once the queries and options are read, just before Inputs::resident_before_model is
// measured and the model loaded from the files it is given; its Inputs has no model.
absl::StatusOr<Inputs> LoadInputs(
    const FlagSet& flags, const InputFlags& f,
    const std::function<void(const Inputs&, const ModelFiles&)>& before_model = {}) {
  Inputs in;
  in.query.k = static_cast<uint32_t>(std::min<uint64_t>(f.k, UINT32_MAX));
  in.query.epsilon = f.epsilon;
  in.query.delta = f.delta;
  in.query.temperature = f.temperature;
  in.adaptive.sample_cost = f.sample_cost;
  in.adaptive.lognormal_correction = f.lognormal_correction;
  in.adaptive.warmup_fraction = f.warmup_fraction;
  if (f.measure_sample_cost && f.sample_cost > 0) {
    in.meter = std::make_shared<SampleCostMeter>(f.sample_cost);
  }
  if (!f.multipliers.empty()) {
    in.adaptive.topk_multiplier = f.multipliers[0];
    in.adaptive.normalizer_multiplier = f.multipliers[1];
    in.multiplier_mode = f.multipliers[0] == 1 && f.multipliers[1] == 1 ? "theory" : "manual";
  } else if (f.multiplier_flags && f.calibration.empty()) {
    in.adaptive.min_epsilon = kTheoryMinEpsilon;
    if (in.query.epsilon < kTheoryMinEpsilon) {
      std::fprintf(stderr,
                   "adasoftmax %s: warning: theory mode's guarantee was measured to fail below "
                   "--epsilon %g; the adaptive path answers exactly (calibrate, or pass "
                   "--multipliers 1,1 to sample anyway)\n",
                   flags.command().c_str(), kTheoryMinEpsilon);
    }
  }
  std::optional<Calibration> calibration;
  if (!f.calibration.empty()) {
    ASSIGN_OR_RETURN(calibration, ReadCalibration(f.calibration));
    const Calibration& c = *calibration;
    ApplyCalibration(c, in.adaptive);
    in.multiplier_mode = "calibrated";
    // The calibrated parameters are the defaults; overriding them voids the calibration, and a
    // stricter epsilon or delta is answered exactly (see ApplyCalibration).
    auto take = [&](const char* name, auto calibrated, auto* value, bool lower_is_exact) {
      if (!flags.Seen(name)) {
        *value = calibrated;
      } else if (*value != calibrated) {
        std::fprintf(
            stderr,
            "adasoftmax %s: warning: --%s differs from the value %s was calibrated "
            "for (%s); %s\n",
            flags.command().c_str(), name, f.calibration.c_str(), absl::StrCat(calibrated).c_str(),
            lower_is_exact && *value < calibrated ? "the adaptive path answers exactly"
                                                  : "the calibrated failure bound does not apply");
      }
    };
    take("k", c.k, &in.query.k, false);
    take("epsilon", c.epsilon, &in.query.epsilon, true);
    take("delta", c.delta, &in.query.delta, true);
    take("temperature", c.temperature, &in.query.temperature, false);
  }
  ModelFiles files;
  files.weights = f.weights;
  files.tensor = f.tensor;
  files.bias = f.bias;
  files.bias_tensor = f.bias_tensor;
  ASSIGN_OR_RETURN(files.dtype, ParseDTypeSetting("--dtype", f.dtype));
  ASSIGN_OR_RETURN(files.sampling_dtype, ParseDTypeSetting("--sampling-dtype", f.sampling_dtype));
  ASSIGN_OR_RETURN(in.queries, ReadQueries(f.queries));
  if (!f.labels.empty()) {
    ASSIGN_OR_RETURN(in.labels, ReadLabels(f.labels));
  }
  if (before_model) before_model(in, files);
  in.resident_before_model = ResidentBytes();
  ASSIGN_OR_RETURN(in.model, Model::Load(files));
  in.resident_after_model = ResidentBytes();
  if (calibration) RETURN_IF_ERROR(CheckCalibrationFits(*calibration, f.calibration, *in.model));
  // Options first (so "--k: ..." is not blamed on a row), then every row.
  for (size_t r = 0; r < in.queries.rows(); ++r) {
    const absl::Status s = ValidateQuery(*in.model, Query{in.Row(r), in.query, {}});
    if (s.ok()) continue;
    if (absl::StartsWith(s.message(), "query:")) {
      return absl::InvalidArgumentError(absl::StrCat(f.queries, ": row ", r, ": ", s.message()));
    }
    return absl::InvalidArgumentError(absl::StrCat("--", s.message()));
  }
  return in;
}

// ---------------------------------------------------------------------------------------------
// Helpers.

// Calls fn(i) for every i in [0, count) on `threads` threads.
void ParallelFor(size_t count, size_t threads, const std::function<void(size_t)>& fn) {
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t i = next.fetch_add(1); i < count; i = next.fetch_add(1)) fn(i);
  };
  std::vector<std::thread> pool;
  for (size_t t = 1; t < std::min(threads, count); ++t) pool.emplace_back(worker);
  worker();
  for (std::thread& t : pool) t.join();
}

// Answers one query alone and measures the wall-clock time of the call.
TopKResult TimedAnswer(const TopKSoftmax& solver, const Query& query, double* micros) {
  const Clock::time_point start = Clock::now();
  TopKResult result = std::move(solver.Run(absl::MakeConstSpan(&query, 1)).front());
  *micros = std::chrono::duration<double, std::micro>(Clock::now() - start).count();
  return result;
}

// The process's peak resident memory so far: at least `observed`, a size it was seen to have.
// The kernel's high-water mark comes from per-CPU counters that lag by up to a few hundred KB.
double PeakRssBytes(double observed) {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return std::max({1024.0 * usage.ru_maxrss, observed, ResidentBytes()});  // ru_maxrss: KB
}

// Nearest-rank percentile (q in (0, 1]) of a non-empty sample.
double Percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  const size_t rank = static_cast<size_t>(std::ceil(q * v.size()));
  return v[std::clamp<size_t>(rank, 1, v.size()) - 1];
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

uint64_t QuerySeed(uint64_t seed, size_t row) { return seed == 0 ? 0 : seed + row; }

Json ResultJson(const Inputs& in, size_t row, const TopKResult& r, double micros,
                bool with_labels) {
  Json j;
  j["query"] = row;
  j["indices"] = r.indices;
  j["probabilities"] = r.probabilities;
  j["logits"] = r.logits;
  j["log_partition"] = r.log_partition;
  j["samples"] = r.samples;
  j["sample_fraction"] = r.sample_fraction;
  j["exact"] = r.exact;
  j["latency_us"] = micros;
  if (with_labels) {
    Json labels = Json::array();
    for (uint32_t i : r.indices) labels.push_back(in.Label(i));
    j["labels"] = std::move(labels);
  }
  return j;
}

// The directory of the running executable, or empty.
std::filesystem::path ExecutableDir() {
  std::error_code ec;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::filesystem::path() : exe.parent_path();
}

// A path relative to the repository root: as given when it exists from the working directory,
// else relative to build/bin/../.. (where the executable normally lives), else relative to the
// source directory the executable was built from.
std::string ResolveRepoPath(const std::string& path) {
  if (path.empty() || std::filesystem::exists(path)) return path;
  if (std::filesystem::path(path).is_absolute()) return path;
  std::vector<std::filesystem::path> roots;
  if (const std::filesystem::path dir = ExecutableDir(); !dir.empty()) {
    roots.push_back(dir / ".." / "..");
  }
#ifdef ADASOFTMAX_SOURCE_DIR
  roots.push_back(ADASOFTMAX_SOURCE_DIR);
#endif
  for (const std::filesystem::path& root : roots) {
    const std::filesystem::path candidate = root / path;
    if (std::filesystem::exists(candidate)) return candidate.lexically_normal().string();
  }
  return path;
}

// ---------------------------------------------------------------------------------------------
// run

int Run(int argc, char** argv) {
  InputFlags f;
  std::string mode = "adaptive";
  uint64_t threads = 1;
  std::string out_path;
  FlagSet flags("run", "--weights PATH --queries PATH --out PATH [flags]",
                "Answers every query (row of --queries) and writes one JSON object a line: query, "
                "indices,\nprobabilities, logits, log_partition, samples, sample_fraction, exact, "
                "latency_us\n(and labels with --labels).");
  AddModelFlags(flags, &f);
  flags.AddString("labels", &f.labels, "class names, one a line (line i = class i)")
      .Placeholder("PATH");
  AddQueryFlags(flags, &f);
  flags.AddString("mode", &mode, "adaptive or exact").Placeholder("MODE");
  AddMultiplierFlags(flags, &f);
  AddFallbackFlag(flags, &f);
  flags.AddUint64("seed", &f.seed, "query q samples with seed S + q (reproducible); 0: fresh")
      .Placeholder("S");
  flags.AddUint64("threads", &threads, "queries answered in parallel, each alone").Min(1);
  flags.AddString("out", &out_path, "output .jsonl file ('-': stdout)")
      .Placeholder("PATH")
      .Required();
  if (std::optional<int> code = flags.Parse(argc, argv)) return *code;
  if (mode != "adaptive" && mode != "exact") {
    return flags.UsageError(
        absl::StrCat("--mode: expected 'adaptive' or 'exact', got '", mode, "'"));
  }
  if (std::optional<int> code = CheckMultiplierFlags(flags)) return *code;
  if (mode == "exact" && (flags.Seen("multipliers") || flags.Seen("calibration"))) {
    return flags.UsageError("--multipliers and --calibration apply to --mode adaptive only");
  }
  absl::StatusOr<Inputs> in = LoadInputs(flags, f);
  if (!in.ok()) return flags.Error(in.status());

  // Opened before the work, so an unwritable path fails fast.
  std::FILE* out = out_path == "-" ? stdout : std::fopen(out_path.c_str(), "w");
  if (out == nullptr) {
    return flags.Error(absl::StrCat(out_path, ": cannot open for writing"));
  }
  std::unique_ptr<TopKSoftmax> solver;
  if (mode == "exact") {
    solver = std::make_unique<ExactSoftmax>(in->model);
  } else {
    auto adaptive = std::make_unique<AdaptiveSoftmax>(in->model, in->adaptive, in->meter);
    adaptive->PrimeMeter();
    solver = std::move(adaptive);
  }
  const size_t count = in->queries.rows();
  std::vector<TopKResult> results(count);
  std::vector<double> micros(count);
  ParallelFor(count, threads, [&](size_t r) {
    Query q{in->Row(r), in->query, {}};
    q.options.seed = QuerySeed(f.seed, r);
    results[r] = TimedAnswer(*solver, q, &micros[r]);
  });

  for (size_t r = 0; r < count; ++r) {
    const std::string line = ResultJson(*in, r, results[r], micros[r], !f.labels.empty()).dump();
    std::fprintf(out, "%s\n", line.c_str());
  }
  if (out != stdout && std::fclose(out) != 0) {
    return flags.Error(absl::StrCat(out_path, ": write failed"));
  }
  return 0;
}

// ---------------------------------------------------------------------------------------------
// bench

struct BenchStats {
  std::vector<double> bare_us, exact_us, adaptive_us, fractions;
  // Per sampled (not exact) adaptive answer: its time over the exact answer's, per fraction of
  // A read; x ElementBytes / 4, the wall-clock cost of a sample in float32 entries streamed.
  std::vector<double> sample_costs;
  double bytes_touched = 0;  // by the adaptive answers, summed
  size_t pac_failures = 0;
  size_t exact_answers = 0;  // adaptive answers that fell back to (or ended as) exact ones
};

// The bare SGEMV, exact and adaptive interleaved per query, from one thread, after
// `warmup` untimed queries. The three take turns going first: whichever runs first after
// another query's work pays for memory the others left cold.
BenchStats Interleaved(const Inputs& in, size_t begin, size_t end, size_t warmup, uint64_t seed,
                       const std::function<void(size_t, const TopKResult&, double,
                                                const TopKResult&, double, bool)>& each = {}) {
  const ExactSoftmax exact(in.model);
  const AdaptiveSoftmax adaptive(in.model, in.adaptive, in.meter);
  adaptive.PrimeMeter();
  for (size_t i = 0; i < warmup && begin + i < end; ++i) {
    double ignored;
    Query q{in.Row(begin + i), in.query, {}};
    q.options.seed = QuerySeed(seed, begin + i);
    TimedAnswer(exact, q, &ignored);
    TimedAnswer(adaptive, q, &ignored);
  }
  BenchStats s;
  for (std::vector<double>* v : {&s.bare_us, &s.exact_us, &s.adaptive_us, &s.fractions}) {
    v->reserve(end - begin);
  }
  std::vector<float> products(in.model->n());
  for (size_t r = begin; r < end; ++r) {
    Query q{in.Row(r), in.query, {}};
    q.options.seed = QuerySeed(seed, r);
    double bare_us, exact_us, adaptive_us;
    TopKResult e, a;
    const std::function<void()> runs[] = {
        [&] {
          const Clock::time_point start = Clock::now();
          if (in.model->dtype() == DType::kFloat32) {
            SgemvProducts(*in.model, q.x, absl::MakeSpan(products));
          } else {  // half precision: the exact path's own widening products
            RawProducts(*in.model, absl::MakeConstSpan(&q, 1), absl::MakeSpan(products));
          }
          bare_us = std::chrono::duration<double, std::micro>(Clock::now() - start).count();
        },
        [&] { e = TimedAnswer(exact, q, &exact_us); },
        [&] { a = TimedAnswer(adaptive, q, &adaptive_us); },
    };
    for (size_t i = 0; i < 3; ++i) runs[(r + i) % 3]();
    s.bare_us.push_back(bare_us);
    const ReferenceAnswer reference = ComputeReference(*in.model, q.x, q.options.temperature);
    const bool pac = MeetsPac(a, reference, q.options.k, q.options.epsilon);
    if (!pac) ++s.pac_failures;
    s.exact_us.push_back(exact_us);
    s.adaptive_us.push_back(adaptive_us);
    s.fractions.push_back(a.sample_fraction);
    s.bytes_touched += static_cast<double>(a.bytes_touched);
    s.exact_answers += a.exact;
    if (!a.exact && a.sample_fraction > 0) {
      s.sample_costs.push_back(adaptive_us / exact_us / a.sample_fraction *
                               ElementBytes(in.model->dtype()) / sizeof(float));
    }
    if (each) each(r, e, exact_us, a, adaptive_us, pac);
  }
  return s;
}

// Runs Interleaved over the first `queries` valid queries of `in` on a placeholder head of their
// width: 64 rows of Gaussian entries in `dtype` (the sampler's copy in `sampling`), with a bias
// when `bias`. What every model of a process shares (code, thread stacks and buffers, the
// sampler's per-thread scratch, whose sums take a whole chunk of arms however few) is then
// resident before the model loads, so that bench charges the model only with what it adds; the
// server's measurement likewise subtracts a server holding a 64-row head.
void WarmUpOnPlaceholder(const Inputs& in, DType dtype, std::optional<DType> sampling, bool bias,
                         size_t queries, uint64_t seed) {
  constexpr size_t kRows = 64;
  const size_t d = in.queries.cols();
  Matrix weights = Matrix::Owned(kRows, d, Layout::kRowMajor);
  std::mt19937 gen(1);
  std::normal_distribution<float> normal;
  for (size_t i = 0; i < weights.size(); ++i) weights.mutable_data()[i] = normal(gen);
  std::vector<float> b(bias ? kRows : 0);
  for (float& v : b) v = normal(gen);
  absl::StatusOr<std::shared_ptr<const Model>> model =
      Model::Create(std::move(weights), std::move(b), dtype, sampling);
  if (!model.ok()) return;
  size_t valid = 0;
  while (valid < std::min(queries, in.queries.rows()) &&
         ValidateQuery(**model, Query{in.Row(valid), in.query, {}}).ok()) {
    ++valid;
  }
  Inputs placeholder;
  placeholder.model = *model;
  placeholder.queries = Matrix::View(in.queries.data(), valid, d, Layout::kRowMajor, nullptr);
  placeholder.query = in.query;
  placeholder.adaptive = in.adaptive;
  Interleaved(placeholder, 0, valid, /*warmup=*/0, seed);
  placeholder.adaptive.sample_cost = 0;  // with the fallback, so small a head is not sampled
  Interleaved(placeholder, 0, valid, /*warmup=*/0, seed);
}

int Bench(int argc, char** argv) {
  InputFlags f;
  uint64_t warmup = 5, limit = 0, offset = 0;
  FlagSet flags("bench", "--weights PATH --queries PATH [flags]",
                "Times exact and adaptive answers, interleaved per query on one thread, and "
                "checks each\nadaptive answer against the exact double-precision one. Prints one "
                "JSON object.");
  AddModelFlags(flags, &f);
  AddQueryFlags(flags, &f);
  AddMultiplierFlags(flags, &f);
  AddFallbackFlag(flags, &f);
  flags.AddUint64("seed", &f.seed, "query q samples with seed S + q (reproducible); 0: fresh")
      .Placeholder("S");
  flags.AddUint64("warmup", &warmup, "untimed queries run first");
  flags.AddUint64("limit", &limit, "use at most this many queries (0: all)");
  flags.AddUint64("queries-offset", &offset,
                  "skip this many queries first (e.g. a held-out split)");
  if (std::optional<int> code = flags.Parse(argc, argv)) return *code;
  if (std::optional<int> code = CheckMultiplierFlags(flags)) return *code;
  absl::StatusOr<Inputs> in =
      LoadInputs(flags, f, [&](const Inputs& loaded, const ModelFiles& files) {
        WarmUpOnPlaceholder(loaded, files.dtype.value_or(DType::kFloat32), files.sampling_dtype,
                            !f.bias.empty(), /*queries=*/3, f.seed);
      });
  if (!in.ok()) return flags.Error(in.status());
  const size_t rows = in->queries.rows();
  if (offset >= rows) {
    return flags.Error(absl::StrFormat("--queries-offset: is %d but %s has only %d queries", offset,
                                       f.queries, rows));
  }
  const size_t end = limit == 0 ? rows : std::min<size_t>(rows, offset + limit);
  const BenchStats s = Interleaved(*in, offset, end, warmup, f.seed);

  const double exact_median = Median(s.exact_us) / 1000;
  const double adaptive_median = Median(s.adaptive_us) / 1000;
  double fraction_sum = 0;
  for (double x : s.fractions) fraction_sum += x;
  const size_t count = end - offset;
  Json j;
  j["n"] = in->model->n();
  j["d"] = in->model->d();
  j["dtype"] = DTypeName(in->model->dtype());
  j["sampling_dtype"] = DTypeName(in->model->sampling_dtype());
  j["k"] = in->query.k;
  j["epsilon"] = in->query.epsilon;
  j["delta"] = in->query.delta;
  j["temperature"] = in->query.temperature;
  j["mode"] = in->multiplier_mode;
  j["multipliers"] = {in->adaptive.topk_multiplier, in->adaptive.normalizer_multiplier};
  j["lognormal_correction"] = in->adaptive.lognormal_correction;
  j["queries"] = count;
  j["queries_offset"] = offset;
  j["exact_median_ms"] = exact_median;
  j["exact_p99_ms"] = Percentile(s.exact_us, 0.99) / 1000;
  j["adaptive_median_ms"] = adaptive_median;
  j["adaptive_p99_ms"] = Percentile(s.adaptive_us, 0.99) / 1000;
  j["speedup"] = exact_median / adaptive_median;
  j["mean_sample_fraction"] = fraction_sum / count;
  j["median_sample_fraction"] = Median(s.fractions);
  j["pac_success_rate"] = static_cast<double>(count - s.pac_failures) / count;
  j["pac_failures"] = s.pac_failures;
  j["sample_cost"] = in->adaptive.sample_cost;
  if (in->meter != nullptr) j["final_sample_cost"] = in->meter->Cost();
  j["exact_fallbacks"] = s.exact_answers;
  // What to set sample_cost to for this model on this machine (0 when nothing was sampled).
  j["measured_sample_cost"] = s.sample_costs.empty() ? 0.0 : Median(s.sample_costs);
  // The exact path's time over the bare SGEMV's, same thread count: below 1 where its own GEMV
  // outruns SGEMV (see kStreamMinBytes). For half dtypes the yardstick is its own products.
  const double bare_median = Median(s.bare_us) / 1000;
  j["sgemv_median_ms"] = bare_median;
  j["blas_kernels"] = ChooseBlasKernels().name;
  j["exact_over_sgemv"] = exact_median / bare_median;
  // Bandwidth: weight bytes streamed by SGEMV; the bytes of the entries the adaptive path
  // sampled, and the bytes its kernels touched to read them (TopKResult::bytes_touched).
  const double weight_bytes =
      static_cast<double>(ElementBytes(in->model->dtype())) * in->model->n() * in->model->d();
  j["sgemv_read_gb_per_s"] = weight_bytes / (bare_median * 1e6);
  j["adaptive_read_gb_per_s"] = weight_bytes * (fraction_sum / count) / (adaptive_median * 1e6);
  j["mean_bytes_touched"] = s.bytes_touched / count;
  j["adaptive_touched_gb_per_s"] = s.bytes_touched / count / (adaptive_median * 1e6);
  j["weight_bytes"] = weight_bytes;
  j["model_memory_bytes"] = in->model->memory_bytes();
  const double peak_rss = PeakRssBytes(in->resident_after_model);
  j["peak_rss_bytes"] = peak_rss;
  j["peak_rss_over_weight_bytes"] = peak_rss / weight_bytes;
  // What the model and the run added: the peak less what the process held before loading the
  // model, once it ran its first queries on a placeholder head (see WarmUpOnPlaceholder), and
  // that held the queries.
  const double model_peak_rss = peak_rss - in->resident_before_model;
  j["model_peak_rss_bytes"] = model_peak_rss;
  j["model_peak_rss_over_weight_bytes"] = model_peak_rss / weight_bytes;
  // What the loaded model holds between queries.
  j["model_resident_bytes"] = in->resident_after_model - in->resident_before_model;
  std::printf("%s\n", j.dump(2).c_str());
  return 0;
}

// ---------------------------------------------------------------------------------------------
// calibrate

int Calibrate(int argc, char** argv) {
  InputFlags f;
  CalibrationOptions options;
  uint64_t threads = 1;
  std::string out_path;
  FlagSet flags(
      "calibrate", "--weights PATH --queries PATH --out PATH [flags]",
      "Evaluates every point of the grids and chooses the variance multipliers and lognormal\n"
      "correction that touch the fewest bytes of A among points whose Clopper-Pearson upper\n"
      "bound on the PAC failure rate over the calibration queries is at most --delta and whose\n"
      "grid neighbours failed at most a --delta share of them (else the cheapest qualifying\n"
      "point). Reports their failure rate on the held-out queries (the last --holdout-fraction\n"
      "of the rows). Writes the calibration file (for run/bench --calibration) and prints it;\n"
      "it records --warmup-fraction, the only one the multipliers hold with.");
  AddModelFlags(flags, &f);
  AddQueryFlags(flags, &f);
  flags.AddDouble("holdout-fraction", &options.holdout_fraction, "share of queries held out")
      .Min(0, true)
      .Max(1, true);
  flags.AddDouble("confidence", &options.confidence, "confidence of the failure-rate bound")
      .Min(0, true)
      .Max(1, true);
  flags.AddDoubleList("topk-grid", &options.topk_grid, "candidate top-k multipliers").Min(0, true);
  flags
      .AddDoubleList("normalizer-grid", &options.normalizer_grid,
                     "candidate normaliser multipliers")
      .Min(0, true);
  flags
      .AddDoubleList("correction-grid", &options.correction_grid,
                     "candidate lognormal corrections (see run --lognormal-correction)")
      .Min(0)
      .Max(1);
  AddWarmupFlag(flags, &f);
  flags.AddUint64("seed", &options.seed, "seed the per-query seeds derive from").Placeholder("S");
  flags.AddUint64("threads", &threads, "queries evaluated in parallel").Min(1);
  flags.AddString("out", &out_path, "calibration file to write (JSON)")
      .Placeholder("PATH")
      .Required();
  std::string grid_path;
  flags
      .AddString("grid-out", &grid_path,
                 "also write every evaluated grid point, a JSON line each, as it is evaluated")
      .Placeholder("PATH");
  if (std::optional<int> code = flags.Parse(argc, argv)) return *code;
  options.threads = static_cast<int>(std::min<uint64_t>(threads, 1024));
  absl::StatusOr<Inputs> in = LoadInputs(flags, f);
  if (!in.ok()) return flags.Error(in.status());
  std::ofstream grid;
  if (!grid_path.empty()) {
    grid.open(grid_path, std::ios::trunc);
    if (!grid) return flags.Error(absl::StrCat(grid_path, ": cannot open for writing"));
    options.on_point = [&grid](const EvaluatedPoint& p) {
      Json j;
      j["topk_multiplier"] = p.topk_multiplier;
      j["normalizer_multiplier"] = p.normalizer_multiplier;
      j["lognormal_correction"] = p.lognormal_correction;
      j["complete"] = p.complete;
      j["qualifies"] = p.point.qualifies;
      j["within_delta"] = p.point.within_delta;
      j["failures"] = p.point.failures;
      j["mean_log_partition_error"] = p.point.error;
      j["mean_bytes_touched"] = p.point.cost;
      j["mean_sample_fraction"] = p.mean_sample_fraction;
      grid << j.dump() << std::endl;
    };
  }
  absl::StatusOr<Calibration> c =
      adasoftmax::Calibrate(in->model, in->queries, in->query, in->adaptive, options);
  if (!c.ok()) return flags.Error(c.status());
  if (absl::Status s = WriteCalibration(out_path, *c); !s.ok()) return flags.Error(s);
  std::ifstream written(out_path);
  std::printf("%s", std::string(std::istreambuf_iterator<char>(written), {}).c_str());
  return 0;
}

// ---------------------------------------------------------------------------------------------
// synth

int Synth(int argc, char** argv) {
  const SynthOptions defaults;
  uint64_t n = defaults.n, d = defaults.d, queries = defaults.queries, seed = defaults.seed;
  double logit_spread = defaults.logit_spread, top1_min = defaults.top1_min,
         top1_max = defaults.top1_max, column_scale_spread = defaults.column_scale_spread;
  bool heavy_tailed = defaults.heavy_tailed, bias = defaults.bias;
  std::string out_dir;
  FlagSet flags("synth", "--out-dir DIR [flags]",
                "Writes a synthetic LM-head-like model and queries: DIR/weights.npy (n x d),\n"
                "DIR/queries.npy (queries x d), DIR/bias.npy (with --bias) and DIR/targets.txt\n"
                "(each query's planted top class, one a line). Prints a JSON summary.");
  flags.AddUint64("n", &n, "classes (rows of the weights)").Min(1);
  flags.AddUint64("d", &d, "features (columns)").Min(1);
  flags.AddUint64("queries", &queries, "number of queries").Min(1);
  flags.AddUint64("seed", &seed, "random seed").Placeholder("S");
  flags.AddDouble("logit-spread", &logit_spread, "standard deviation of the logits").Min(0);
  flags.AddDouble("top1-min", &top1_min, "smallest planted top-1 probability")
      .Min(0, true)
      .Max(1, true);
  flags.AddDouble("top1-max", &top1_max, "largest planted top-1 probability")
      .Min(0, true)
      .Max(1, true);
  flags.AddBool("heavy-tailed", &heavy_tailed, "heavy-tailed (Student-t) query entries");
  flags
      .AddDouble("column-scale-spread", &column_scale_spread,
                 "spread of per-column scales (log-normal sigma)")
      .Min(0);
  flags.AddBool("bias", &bias, "add a bias vector");
  flags.AddString("out-dir", &out_dir, "output directory (created if missing)")
      .Placeholder("DIR")
      .Required();
  if (std::optional<int> code = flags.Parse(argc, argv)) return *code;
  if (top1_min > top1_max) {
    return flags.UsageError(
        absl::StrFormat("--top1-min (%g) exceeds --top1-max (%g)", top1_min, top1_max));
  }
  SynthOptions options = defaults;
  options.n = static_cast<decltype(options.n)>(n);
  options.d = static_cast<decltype(options.d)>(d);
  options.queries = static_cast<decltype(options.queries)>(queries);
  options.seed = static_cast<decltype(options.seed)>(seed);
  options.logit_spread = logit_spread;
  options.top1_min = top1_min;
  options.top1_max = top1_max;
  options.heavy_tailed = heavy_tailed;
  options.column_scale_spread = column_scale_spread;
  options.bias = bias;
  absl::StatusOr<SynthData> data = Synthesize(options);
  if (!data.ok()) return flags.Error(data.status());

  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  if (ec) return flags.Error(absl::StrCat(out_dir, ": cannot create: ", ec.message()));
  const std::filesystem::path dir(out_dir);
  Json files;
  auto path = [&](const char* name) { return (dir / name).string(); };
  if (absl::Status s = WriteNpy(path("weights.npy"), data->weights); !s.ok()) {
    return flags.Error(s);
  }
  files["weights"] = path("weights.npy");
  if (absl::Status s = WriteNpy(path("queries.npy"), data->queries); !s.ok()) {
    return flags.Error(s);
  }
  files["queries"] = path("queries.npy");
  if (!data->bias.empty()) {
    if (absl::Status s = WriteNpy(path("bias.npy"), absl::MakeConstSpan(data->bias)); !s.ok()) {
      return flags.Error(s);
    }
    files["bias"] = path("bias.npy");
  }
  {
    std::ofstream targets(path("targets.txt"), std::ios::trunc);
    for (uint32_t t : data->target_rows) targets << t << "\n";
    targets.close();
    if (!targets) return flags.Error(absl::StrCat(path("targets.txt"), ": write failed"));
    files["targets"] = path("targets.txt");
  }
  Json j;
  j["n"] = data->weights.rows();
  j["d"] = data->weights.cols();
  j["queries"] = data->queries.rows();
  j["seed"] = seed;
  j["logit_spread"] = logit_spread;
  j["top1_min"] = top1_min;
  j["top1_max"] = top1_max;
  j["heavy_tailed"] = heavy_tailed;
  j["column_scale_spread"] = column_scale_spread;
  j["bias"] = !data->bias.empty();
  j["files"] = std::move(files);
  std::printf("%s\n", j.dump(2).c_str());
  return 0;
}

// ---------------------------------------------------------------------------------------------
// demo

// Terminal columns of a UTF-8 string: CJK and other wide code points count 2.
size_t DisplayWidth(const std::string& s) {
  size_t width = 0;
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = s[i];
    uint32_t cp = c;
    size_t len = 1;
    if (c >= 0xF0) {
      len = 4, cp = c & 0x07;
    } else if (c >= 0xE0) {
      len = 3, cp = c & 0x0F;
    } else if (c >= 0xC0) {
      len = 2, cp = c & 0x1F;
    }
    for (size_t b = 1; b < len && i + b < s.size(); ++b) cp = (cp << 6) | (s[i + b] & 0x3F);
    i += len;
    width += (cp >= 0x1100 &&
              (cp <= 0x115F || (cp >= 0x2E80 && cp <= 0xA4CF) || (cp >= 0xAC00 && cp <= 0xD7A3) ||
               (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0xFE30 && cp <= 0xFE4F) ||
               (cp >= 0xFF00 && cp <= 0xFF60) || (cp >= 0xFFE0 && cp <= 0xFFE6) || cp >= 0x20000))
                 ? 2
                 : 1;
  }
  return width;
}

std::string PadRight(std::string s, size_t width) {
  const size_t w = DisplayWidth(s);
  if (w < width) s.append(width - w, ' ');
  return s;
}

int Demo(int argc, char** argv) {
  InputFlags f;
  f.weights = "tests/data/ppocrv4-rec/weights.npy";
  f.bias = "tests/data/ppocrv4-rec/bias.npy";
  f.labels = "tests/data/ppocrv4-rec/labels.txt";
  f.queries = "tests/data/ppocrv4-rec/queries.npy";
  f.seed = 1;
  f.sample_cost = 0;  // the demo shows the sampler at work, never the exact fallback
  uint64_t shown = 8;
  FlagSet flags("demo", "[flags]",
                "Answers real queries of the PaddleOCR PP-OCRv4 recognition head (6625 classes x "
                "120 features)\nexactly and adaptively, shows a few side by side and summarises "
                "all of them. Default\npaths are relative to the repository root (found from the "
                "working directory or the\nexecutable's location).");
  AddModelFlags(flags, &f, /*required=*/false);
  flags.AddString("labels", &f.labels, "class names, one a line").Placeholder("PATH");
  AddQueryFlags(flags, &f);
  AddMultiplierFlags(flags, &f);
  flags.AddUint64("seed", &f.seed, "query q samples with seed S + q; 0: fresh").Placeholder("S");
  flags.AddUint64("queries-count", &shown, "queries shown in the table");
  if (std::optional<int> code = flags.Parse(argc, argv)) return *code;
  if (std::optional<int> code = CheckMultiplierFlags(flags)) return *code;
  for (std::string* path : {&f.weights, &f.bias, &f.labels, &f.queries}) {
    *path = ResolveRepoPath(*path);
  }
  absl::StatusOr<Inputs> in = LoadInputs(flags, f);
  if (!in.ok()) return flags.Error(in.status());
  const size_t count = in->queries.rows();
  struct Row {
    uint32_t exact_top, adaptive_top;
    double exact_p, adaptive_p, exact_us, adaptive_us, fraction;
    uint64_t samples;
    bool pac;
  };
  std::vector<Row> rows(count);
  const BenchStats s = Interleaved(
      *in, 0, count, /*warmup=*/5, f.seed,
      [&](size_t r, const TopKResult& e, double e_us, const TopKResult& a, double a_us, bool pac) {
        rows[r] = Row{e.indices[0],       a.indices[0], e.probabilities[0],
                      a.probabilities[0], e_us,         a_us,
                      a.sample_fraction,  a.samples,    pac};
      });

  // Show rows spread over the file whose exact top-1 is not the most common class (on the OCR
  // head that is the CTC blank, ~70% of the rows), falling back to any rows.
  std::vector<size_t> votes(in->model->n(), 0);
  for (const Row& row : rows) ++votes[row.exact_top];
  const uint32_t common =
      static_cast<uint32_t>(std::max_element(votes.begin(), votes.end()) - votes.begin());
  std::vector<size_t> candidates;
  for (size_t r = 0; r < count; ++r) {
    if (rows[r].exact_top != common) candidates.push_back(r);
  }
  if (candidates.size() < shown) {
    candidates.resize(count);
    for (size_t r = 0; r < count; ++r) candidates[r] = r;
  }
  shown = std::min<uint64_t>(shown, candidates.size());

  std::printf(
      "adaptive vs exact top-%u softmax: n = %zu classes, d = %zu, epsilon = %g, "
      "delta = %g, multipliers %g, %g (%s)\n\n",
      in->query.k, in->model->n(), in->model->d(), in->query.epsilon, in->query.delta,
      in->adaptive.topk_multiplier, in->adaptive.normalizer_multiplier,
      in->multiplier_mode.c_str());
  std::printf("%6s  %-14s %8s  %-14s %8s  %18s  %8s  %8s\n", "query", "exact top-1", "p",
              "adaptive top-1", "p", "samples (fraction)", "exact us", "adapt us");
  auto label = [&](uint32_t i) {
    std::string l = in->Label(i);
    return l.empty() || l == " " ? absl::StrCat("'", l, "'") : l;
  };
  for (size_t i = 0; i < shown; ++i) {
    const size_t r = candidates[i * candidates.size() / shown];
    const Row& row = rows[r];
    const std::string samples = absl::StrFormat("%d (%.3f)", row.samples, row.fraction);
    std::printf("%6zu  %s %8.4f  %s %8.4f  %18s  %8.1f  %8.1f%s\n", r,
                PadRight(label(row.exact_top), 14).c_str(), row.exact_p,
                PadRight(label(row.adaptive_top), 14).c_str(), row.adaptive_p, samples.c_str(),
                row.exact_us, row.adaptive_us, row.pac ? "" : "  PAC failure");
  }
  double fraction_sum = 0;
  for (double x : s.fractions) fraction_sum += x;
  const double exact_median = Median(s.exact_us), adaptive_median = Median(s.adaptive_us);
  std::printf(
      "\nall %zu queries: median latency exact %.1f us, adaptive %.1f us (%.2fx); mean "
      "sample fraction %.3f; PAC success %zu/%zu (%.2f%%)\n",
      count, exact_median, adaptive_median, exact_median / adaptive_median, fraction_sum / count,
      count - s.pac_failures, count, 100.0 * (count - s.pac_failures) / count);
  return 0;
}

}  // namespace

int RunCommand(int argc, char** argv) { return Run(argc, argv); }
int BenchCommand(int argc, char** argv) { return Bench(argc, argv); }
int CalibrateCommand(int argc, char** argv) { return Calibrate(argc, argv); }
int SynthCommand(int argc, char** argv) { return Synth(argc, argv); }
int DemoCommand(int argc, char** argv) { return Demo(argc, argv); }

}  // namespace adasoftmax::client
