#include "server/model_repository.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <set>
#include <sstream>
#include <system_error>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/calibration.h"
#include "core/resources.h"
#include "core/sample_cost_meter.h"
#include "core/status_macros.h"
#include "core/synth.h"
#include "core/tensor_io.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/text_format.h"

namespace adasoftmax::server {
namespace {

namespace fs = std::filesystem;

constexpr char kConfigFile[] = "model.pbtxt";

// Collects the text-format parser's complaints as "path:line:column: message".
class ErrorCollector final : public google::protobuf::io::ErrorCollector {
 public:
  explicit ErrorCollector(std::string path) : path_(std::move(path)) {}
  void AddError(int line, int column, const std::string& message) override {
    if (errors_.empty()) errors_ = absl::StrFormat("%s:%d:%d: %s", path_, line + 1, column + 1, message);
  }
  const std::string& errors() const { return errors_; }

 private:
  std::string path_;
  std::string errors_;
};

absl::Status NameTaken(const std::string& dir, const ServedModel& model) {
  return absl::InvalidArgumentError(
      absl::StrFormat("model %s: the name '%s' is already taken", dir, model.name));
}

std::string Resolve(const std::string& dir, const std::string& path) {
  if (path.empty() || fs::path(path).is_absolute()) return path;
  return (fs::path(dir) / path).string();
}

absl::Status ValidateName(const std::string& name) {
  if (name.empty()) return absl::InvalidArgumentError("name: is empty");
  if (name == kServiceName) {
    return absl::InvalidArgumentError(
        absl::StrFormat("name: '%s' is the server's own health service name", name));
  }
  for (char c : name) {
    if (!(absl::ascii_isalnum(c) || c == '_' || c == '-' || c == '.')) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "name: '%s' may hold only letters, digits, '_', '-' and '.'", name));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckOpenUnit(std::string_view field, double value) {
  if (!(value > 0 && value < 1)) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: is %g but must be in (0, 1)", field, value));
  }
  return absl::OkStatus();
}

// A stable 64-bit FNV-1a hash (std::hash and absl::Hash may change between runs).
uint64_t Fnv1a(std::string_view bytes) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h;
}

absl::StatusOr<SynthOptions> ToSynthOptions(const v1::SyntheticModel& s) {
  if (s.n() < 2 || s.d() < 1) {
    return absl::InvalidArgumentError("synthetic: n must be >= 2 and d >= 1");
  }
  SynthOptions o;
  o.n = s.n();
  o.d = s.d();
  o.seed = s.seed();
  if (s.has_queries()) o.queries = s.queries();
  if (s.has_logit_spread()) o.logit_spread = s.logit_spread();
  if (s.has_top1_min()) o.top1_min = s.top1_min();
  if (s.has_top1_max()) o.top1_max = s.top1_max();
  if (s.has_heavy_tailed()) o.heavy_tailed = s.heavy_tailed();
  if (s.has_column_scale_spread()) o.column_scale_spread = s.column_scale_spread();
  if (s.has_bias()) o.bias = s.bias();
  return o;
}

// Writes through a temporary file and a rename, so a reader never sees a partial file.
template <typename T>
absl::Status WriteNpyAtomically(const std::string& path, const T& data) {
  const std::string tmp = absl::StrCat(path, ".tmp.", getpid());
  if (absl::Status s = WriteNpy(tmp, data); !s.ok()) {
    std::error_code ec;
    fs::remove(tmp, ec);
    return s;
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) return absl::InternalError(absl::StrCat(path, ": ", ec.message()));
  return absl::OkStatus();
}

// Reads the cached copy of a synthetic model; any failure means "regenerate".
absl::StatusOr<std::shared_ptr<const Model>> ReadCachedSynthetic(const std::string& dir,
                                                                 const SynthOptions& o,
                                                                 std::optional<DType> dtype,
                                                                 std::optional<DType> sampling,
                                                                 std::optional<size_t> max_bytes) {
  ModelFiles files;
  files.dtype = dtype;
  files.sampling_dtype = sampling;
  files.max_bytes = max_bytes;
  files.weights = (fs::path(dir) / "weights.npy").string();
  if (o.bias) files.bias = (fs::path(dir) / "bias.npy").string();
  // The queries are written last: their presence marks a complete cache.
  if (!fs::exists(fs::path(dir) / "queries.npy")) {
    return absl::NotFoundError(absl::StrCat(dir, ": no complete cached copy"));
  }
  ASSIGN_OR_RETURN(std::shared_ptr<const Model> model, Model::Load(files));
  if (model->n() != o.n || model->d() != o.d) {
    return absl::DataLossError(absl::StrFormat("%s: cached weights are %d x %d, expected %d x %d",
                                               files.weights, model->n(), model->d(), o.n, o.d));
  }
  return model;
}

absl::StatusOr<std::shared_ptr<const Model>> LoadSynthetic(
    const std::string& name, const v1::SyntheticModel& synthetic, const std::string& cache_dir,
    std::optional<DType> dtype, std::optional<DType> sampling, std::optional<size_t> max_bytes,
    const std::function<void(const std::string&)>& log, std::string* source, std::string* queries) {
  ASSIGN_OR_RETURN(const SynthOptions o, ToSynthOptions(synthetic));
  if (cache_dir.empty()) return absl::InvalidArgumentError("synthetic: no --cache_dir to cache it in");
  // Before anything is read or generated: the float32 head is held as a weights file would be.
  RETURN_IF_ERROR(
      Model::CheckLoadFits("synthetic", o.n, o.d, DType::kFloat32, dtype, sampling, max_bytes));
  const std::string dir = SyntheticCacheDir(cache_dir, name, synthetic);
  *queries = (fs::path(dir) / "queries.npy").string();
  absl::StatusOr<std::shared_ptr<const Model>> cached =
      ReadCachedSynthetic(dir, o, dtype, sampling, max_bytes);
  if (cached.ok()) {
    *source = absl::StrCat("synthetic, cached in ", dir);
    return cached;
  }
  if (log) {
    log(absl::StrFormat("model %s: generating a synthetic %d x %d head into %s (%s)", name, o.n, o.d,
                        dir, cached.status().message()));
  }
  ASSIGN_OR_RETURN(SynthData data, Synthesize(o));
  std::error_code ec;
  fs::create_directories(dir, ec);
  absl::Status written =
      ec ? absl::InternalError(absl::StrCat(dir, ": ", ec.message())) : absl::OkStatus();
  if (written.ok()) written = WriteNpyAtomically((fs::path(dir) / "weights.npy").string(), data.weights);
  if (written.ok() && o.bias) {
    written = WriteNpyAtomically((fs::path(dir) / "bias.npy").string(),
                                 absl::Span<const float>(data.bias));
  }
  if (written.ok()) written = WriteNpyAtomically((fs::path(dir) / "queries.npy").string(), data.queries);
  if (written.ok()) {
    *source = absl::StrCat("synthetic, generated into ", dir);
  } else {
    // Serving from memory is still correct; only the next start pays for generation again.
    *source = "synthetic, generated (not cached)";
    queries->clear();
    if (log) log(absl::StrCat("model ", name, ": could not cache: ", written.message()));
  }
  return Model::Create(std::move(data.weights), std::move(data.bias),
                       dtype.value_or(DType::kFloat32), sampling, max_bytes);
}

absl::StatusOr<std::unique_ptr<ServedModel>> LoadModelImpl(
    const std::string& dir, const RepositoryOptions& options, std::optional<size_t> max_bytes,
    const std::function<void(const std::string&)>& log) {
  auto served = std::make_unique<ServedModel>();
  served->dir = dir;
  const std::string config_path = (fs::path(dir) / kConfigFile).string();
  std::ifstream in(config_path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(config_path, ": cannot be read"));
  std::stringstream text;
  text << in.rdbuf();
  ASSIGN_OR_RETURN(served->config, ParseModelConfig(text.str(), config_path));
  const v1::ModelConfig& c = served->config;

  served->name = c.name().empty() ? fs::path(dir).filename().string() : c.name();
  RETURN_IF_ERROR(ValidateName(served->name));

  // Weights.
  ASSIGN_OR_RETURN(const std::optional<DType> dtype, ParseDTypeSetting("dtype", c.dtype()));
  ASSIGN_OR_RETURN(const std::optional<DType> sampling,
                   ParseDTypeSetting("sampling_dtype", c.sampling_dtype()));
  if (c.weights().empty() == !c.has_synthetic()) {
    return absl::InvalidArgumentError("exactly one of `weights` and `synthetic` must be set");
  }
  if (c.has_synthetic()) {
    if (!c.bias().empty()) return absl::InvalidArgumentError("bias: not allowed with `synthetic`");
    ASSIGN_OR_RETURN(served->model,
                     LoadSynthetic(served->name, c.synthetic(), options.cache_dir, dtype, sampling,
                                   max_bytes, log, &served->source, &served->sample_queries));
  } else {
    const ModelFiles files{Resolve(dir, c.weights()),
                           c.weights_tensor(),
                           Resolve(dir, c.bias()),
                           c.bias_tensor(),
                           dtype,
                           sampling,
                           max_bytes};
    ASSIGN_OR_RETURN(served->model, Model::Load(files));
    served->source = files.weights;
    served->sample_queries = Resolve(dir, c.sample_queries());
  }
  if (!c.labels().empty()) {
    ASSIGN_OR_RETURN(served->labels, ReadLabels(Resolve(dir, c.labels())));
    if (served->labels.size() != served->model->n()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("labels: %s has %d lines but the model has n = %d classes", c.labels(),
                          served->labels.size(), served->model->n()));
    }
  }

  // Adaptive settings: theory constants, then a calibration file, then manual overrides.
  AdaptiveOptions adaptive;
  adaptive.min_epsilon = kTheoryMinEpsilon;
  if (!c.calibration().empty()) {
    const std::string path = Resolve(dir, c.calibration());
    ASSIGN_OR_RETURN(const Calibration cal, ReadCalibration(path));
    RETURN_IF_ERROR(CheckCalibrationFits(cal, path, *served->model));
    ApplyCalibration(cal, adaptive);
    served->calibration_mode = "calibrated";
    // The multipliers hold for the parameters they were calibrated for: make those the defaults.
    served->default_epsilon = cal.epsilon;
    served->default_delta = cal.delta;
    served->default_temperature = cal.temperature;
  }
  // A calibration holds for its multipliers, correction and warm-up together: replacing any of
  // them makes the multipliers manual, without the bound; manual multipliers drop the correction.
  const v1::AdaptiveConfig& a = c.adaptive();
  const bool manual_multipliers = a.has_topk_multiplier() || a.has_normalizer_multiplier();
  const bool replaces_calibrated =
      !c.calibration().empty() &&
      ((a.has_lognormal_correction() &&
        a.lognormal_correction() != adaptive.lognormal_correction) ||
       (a.has_warmup_fraction() && a.warmup_fraction() != adaptive.warmup_fraction));
  if (manual_multipliers || replaces_calibrated) {
    served->calibration_mode = "manual";
    adaptive.min_epsilon = adaptive.min_delta = 0;
  }
  if (manual_multipliers) adaptive.lognormal_correction = 0;
  if (a.has_topk_multiplier()) adaptive.topk_multiplier = a.topk_multiplier();
  if (a.has_normalizer_multiplier()) adaptive.normalizer_multiplier = a.normalizer_multiplier();
  if (a.has_warmup_fraction()) adaptive.warmup_fraction = a.warmup_fraction();
  if (a.has_min_epsilon()) adaptive.min_epsilon = a.min_epsilon();
  if (a.has_min_delta()) adaptive.min_delta = a.min_delta();
  adaptive.sample_cost = a.has_sample_cost() ? a.sample_cost() : kDefaultSampleCost;
  if (a.has_sampling_memory_fraction()) {
    adaptive.sampling_memory_fraction = a.sampling_memory_fraction();
  }
  if (a.has_lognormal_correction()) adaptive.lognormal_correction = a.lognormal_correction();
  if (a.has_max_sharing_loss()) adaptive.max_sharing_loss = a.max_sharing_loss();
  if (absl::Status s = ValidateAdaptiveOptions(adaptive); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("adaptive: ", s.message()));
  }

  // Request defaults.
  if (c.has_default_epsilon()) served->default_epsilon = c.default_epsilon();
  if (c.has_default_delta()) served->default_delta = c.default_delta();
  if (c.has_default_temperature()) served->default_temperature = c.default_temperature();
  RETURN_IF_ERROR(CheckOpenUnit("default_epsilon", served->default_epsilon));
  RETURN_IF_ERROR(CheckOpenUnit("default_delta", served->default_delta));
  if (!(std::isfinite(served->default_temperature) && served->default_temperature > 0)) {
    return absl::InvalidArgumentError("default_temperature: must be finite and > 0");
  }
  served->default_mode = c.default_mode() == v1::MODE_EXACT ? v1::MODE_EXACT : v1::MODE_ADAPTIVE;

  // Batching and audit.
  served->batching = options.batching;
  const v1::BatchingConfig& b = c.batching();
  if (b.has_max_batch_size()) served->batching.max_batch_size = b.max_batch_size();
  if (b.has_batch_timeout_us()) {
    served->batching.batch_timeout = absl::Microseconds(static_cast<int64_t>(b.batch_timeout_us()));
  }
  if (b.has_max_queue_size()) served->batching.max_queue_size = b.max_queue_size();
  if (absl::Status s = ValidateBatchingOptions(served->batching); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("batching: ", s.message()));
  }
  served->audit_fraction = c.has_audit_fraction() ? c.audit_fraction() : options.audit_fraction;
  if (!(served->audit_fraction >= 0 && served->audit_fraction <= 1)) {
    return absl::InvalidArgumentError("audit_fraction: must be in [0, 1]");
  }

  std::shared_ptr<SampleCostMeter> meter;
  if (c.adaptive().measure_sample_cost() || !c.adaptive().has_measure_sample_cost()) {
    meter = std::make_shared<SampleCostMeter>(adaptive.sample_cost);
  }
  served->adaptive = std::make_unique<AdaptiveSoftmax>(served->model, adaptive, std::move(meter));
  served->adaptive->PrimeMeter();
  served->exact = std::make_unique<ExactSoftmax>(served->model);
  return served;
}

}  // namespace

absl::StatusOr<v1::ModelConfig> ParseModelConfig(std::string_view text, const std::string& path) {
  v1::ModelConfig config;
  google::protobuf::TextFormat::Parser parser;
  ErrorCollector errors(path);
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(std::string(text), &config)) {
    return absl::InvalidArgumentError(errors.errors().empty() ? path + ": cannot be parsed"
                                                              : errors.errors());
  }
  return config;
}

absl::StatusOr<std::vector<std::string>> ListModelDirs(const std::string& root) {
  std::error_code ec;
  if (!fs::is_directory(root, ec)) {
    return absl::NotFoundError(absl::StrCat("model repository ", root, ": not a directory"));
  }
  std::vector<std::string> dirs;
  for (const fs::directory_entry& e : fs::directory_iterator(root, ec)) {
    if (e.is_directory() && fs::exists(e.path() / kConfigFile)) dirs.push_back(e.path().string());
  }
  if (ec) return absl::InternalError(absl::StrCat(root, ": ", ec.message()));
  if (dirs.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "model repository ", root, ": holds no model (expected <model>/", kConfigFile, ")"));
  }
  std::sort(dirs.begin(), dirs.end());
  return dirs;
}

absl::StatusOr<std::unique_ptr<ServedModel>> LoadModel(
    const std::string& dir, const RepositoryOptions& options,
    const std::function<void(const std::string&)>& log) {
  std::optional<size_t> max_bytes;
  std::string memory;  // explains max_bytes
  if (options.memory_limit_bytes > 0) {
    const size_t held = ResidentAnonymousBytes(), limit = options.memory_limit_bytes;
    max_bytes = limit > held ? limit - held : 0;
    memory = absl::StrFormat(" (the memory limit is %.1f MiB, of which the process holds %.1f MiB)",
                             limit / 1048576.0, held / 1048576.0);
  }
  absl::StatusOr<std::unique_ptr<ServedModel>> model = LoadModelImpl(dir, options, max_bytes, log);
  if (!model.ok()) {
    return absl::Status(model.status().code(),
                        absl::StrCat("model ", dir, ": ", model.status().message(),
                                     absl::IsResourceExhausted(model.status()) ? memory : ""));
  }
  return model;
}

std::string ModelFingerprint(const std::string& dir) {
  const std::string config_path = (fs::path(dir) / kConfigFile).string();
  std::ifstream in(config_path, std::ios::binary);
  std::string fingerprint = in ? std::string(std::istreambuf_iterator<char>(in), {}) : "unreadable";
  absl::StatusOr<v1::ModelConfig> config = ParseModelConfig(fingerprint, config_path);
  if (!config.ok()) return fingerprint;
  for (const std::string* file : {&config->weights(), &config->bias(), &config->labels(),
                                  &config->calibration(), &config->sample_queries()}) {
    if (file->empty()) continue;
    struct stat st;
    if (stat(Resolve(dir, *file).c_str(), &st) != 0) {
      absl::StrAppend(&fingerprint, "\n", *file, ": missing");
      continue;
    }
    absl::StrAppend(&fingerprint, "\n", *file, ": ", st.st_dev, ":", st.st_ino, ":", st.st_size,
                    ":", st.st_mtim.tv_sec, ".", st.st_mtim.tv_nsec);
  }
  return fingerprint;
}

ModelRepository::ModelRepository(std::string root, RepositoryOptions options, LogFn log)
    : root_(std::move(root)), options_(std::move(options)), log_(std::move(log)) {}

absl::StatusOr<ModelRepository::Changes> ModelRepository::Update() {
  ASSIGN_OR_RETURN(const std::vector<std::string> dirs, ListModelDirs(root_));
  absl::flat_hash_map<std::string, std::shared_ptr<const ServedModel>> previous;
  for (const auto& m : models_) previous[m->dir] = m;
  absl::flat_hash_map<std::string, Failure> failed;
  for (Failure& f : failures_) failed[f.dir] = std::move(f);

  Changes changes;
  std::vector<std::shared_ptr<const ServedModel>> models;
  std::vector<Failure> failures;
  std::set<std::string> names;
  for (const std::string& dir : dirs) {
    const auto before = previous.find(dir);
    std::shared_ptr<const ServedModel> model = before == previous.end() ? nullptr : before->second;
    std::string fingerprint = ModelFingerprint(dir);
    const auto failure = failed.find(dir);
    if (failure != failed.end() && failure->second.fingerprint == fingerprint &&
        (failure->second.taken_name.empty() || names.contains(failure->second.taken_name))) {
      failures.push_back(std::move(failure->second));
    } else if (model == nullptr || model->fingerprint != fingerprint) {
      absl::StatusOr<std::unique_ptr<ServedModel>> loaded = LoadModel(dir, options_, log_);
      if (loaded.ok() && names.contains((*loaded)->name)) {
        changes.errors.push_back(NameTaken(dir, **loaded));
        failures.push_back({dir, std::move(fingerprint), changes.errors.back(), (*loaded)->name});
      } else if (loaded.ok()) {
        (*loaded)->fingerprint = fingerprint;
        model = *std::move(loaded);
        changes.loaded.push_back(model);
      } else {
        changes.errors.push_back(loaded.status());
        failures.push_back({dir, std::move(fingerprint), loaded.status(), {}});
      }
    }
    if (model == nullptr) continue;
    if (names.insert(model->name).second) {
      models.push_back(std::move(model));
    } else if (failures.empty() || failures.back().dir != dir) {
      // Unchanged, but an earlier folder's new model took its name.
      changes.errors.push_back(NameTaken(dir, *model));
      failures.push_back({dir, std::move(fingerprint), changes.errors.back(), model->name});
    }
  }
  for (const auto& m : models_) {
    if (!names.contains(m->name)) changes.unloaded.push_back(m->name);
  }
  models_ = std::move(models);
  failures_ = std::move(failures);
  return changes;
}

absl::StatusOr<std::vector<std::string>> ReadLabels(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot be read"));
  std::vector<std::string> labels;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    labels.push_back(std::move(line));
  }
  return labels;
}

std::string SyntheticCacheDir(const std::string& cache_dir, const std::string& name,
                              const v1::SyntheticModel& synthetic) {
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream stream(&bytes);
    google::protobuf::io::CodedOutputStream out(&stream);
    out.SetSerializationDeterministic(true);
    synthetic.SerializeToCodedStream(&out);
  }
  const uint64_t hash = Fnv1a(absl::StrCat("adasoftmax-synthetic-v1:", bytes));
  return (fs::path(cache_dir) / absl::StrFormat("%s-%016x", name, hash)).string();
}

std::string DescribeModel(const ServedModel& m) {
  const AdaptiveOptions& o = m.adaptive->options();
  return absl::StrFormat(
      "loaded model %s: n=%d d=%d dtype=%s sampling_dtype=%s bias=%s labels=%s mode=%s "
      "calibration=%s "
      "multipliers=%g,%g lognormal_correction=%g warmup_fraction=%g min_epsilon=%g min_delta=%g "
      "max_sharing_loss=%g max_batch_size=%d batch_timeout_us=%d audit_fraction=%g "
      "memory=%.1fMB from %s",
      m.name, m.model->n(), m.model->d(), DTypeName(m.model->dtype()),
      DTypeName(m.model->sampling_dtype()), m.model->has_bias() ? "yes" : "no",
      m.labels.empty() ? "no" : "yes", m.default_mode == v1::MODE_EXACT ? "exact" : "adaptive",
      m.calibration_mode, o.topk_multiplier, o.normalizer_multiplier, o.lognormal_correction,
      o.warmup_fraction, o.min_epsilon, o.min_delta, o.max_sharing_loss, m.batching.max_batch_size,
      absl::ToInt64Microseconds(m.batching.batch_timeout), m.audit_fraction,
      m.model->memory_bytes() / 1e6, m.source);
}

}  // namespace adasoftmax::server
