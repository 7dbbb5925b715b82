#ifndef ADASOFTMAX_SERVER_MODEL_REPOSITORY_H_
#define ADASOFTMAX_SERVER_MODEL_REPOSITORY_H_

// The model repository: one folder per model, each holding a model.pbtxt (schema:
// adasoftmax.v1.ModelConfig in proto/adasoftmax/v1/model_config.proto). Everything is loaded
// once at start-up; a model that does not load stops start-up with a message naming it.

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "adasoftmax/v1/adasoftmax.pb.h"
#include "adasoftmax/v1/model_config.pb.h"
#include "core/adaptive_softmax.h"
#include "core/exact_softmax.h"
#include "core/model.h"
#include "core/topk_softmax.h"
#include "server/batch_scheduler.h"

namespace adasoftmax::server {

// Server-wide settings that model configs may override.
struct RepositoryOptions {
  // Where synthetic models are generated and cached (created when missing). REQUIRES: non-empty
  // when some model is synthetic.
  std::string cache_dir;
  // Batching of models whose config sets no `batching` fields.
  BatchingOptions batching;
  // Audit fraction of models whose config sets none. REQUIRES: in [0, 1]. Default: 0.01.
  double audit_fraction = 0.01;
};

// A loaded model with everything needed to answer its requests. Immutable after loading;
// thread-safe.
struct ServedModel {
  std::string name;
  std::string dir;  // the model's folder
  v1::ModelConfig config;
  std::shared_ptr<const Model> model;
  std::vector<std::string> labels;  // empty, or one per class
  // Defaults of requests that leave epsilon, delta or temperature unset.
  double default_epsilon = 0.3;
  double default_delta = 0.01;
  double default_temperature = 1;
  v1::Mode default_mode = v1::MODE_ADAPTIVE;  // never MODE_UNSPECIFIED
  // "theory" (multipliers 1), "calibrated" (from a calibration file) or "manual" (config).
  std::string calibration_mode = "theory";
  std::unique_ptr<const AdaptiveSoftmax> adaptive;
  std::unique_ptr<const ExactSoftmax> exact;
  BatchingOptions batching;
  double audit_fraction = 0.01;
  // Where the weights came from, for the start-up log.
  std::string source;
  // Sample queries (.npy) for the start-up hint; empty when there are none.
  std::string sample_queries;
};

// Parses a model.pbtxt; errors name `path`, the line and the column.
absl::StatusOr<v1::ModelConfig> ParseModelConfig(std::string_view text, const std::string& path);

// The folders under `root` that hold a model.pbtxt, sorted by name. NotFound when `root` is
// not a directory, FailedPrecondition when it holds no model.
absl::StatusOr<std::vector<std::string>> ListModelDirs(const std::string& root);

// Reads `dir`/model.pbtxt and loads the model it describes. Relative paths in the config are
// resolved against `dir`. Synthetic models are read from the cache when it holds a readable
// copy, and generated (and cached) otherwise. `log` receives progress notes (e.g. "generating
// ..."); it may be empty. Errors start with the model folder.
absl::StatusOr<std::unique_ptr<ServedModel>> LoadModel(
    const std::string& dir, const RepositoryOptions& options,
    const std::function<void(const std::string&)>& log = {});

// Loads every model of the repository at `root`, in folder order, calling `on_loaded` after
// each. Fails on the first model that does not load, and on duplicate model names.
absl::StatusOr<std::vector<std::unique_ptr<ServedModel>>> LoadRepository(
    const std::string& root, const RepositoryOptions& options,
    const std::function<void(const std::string&)>& log = {},
    const std::function<void(const ServedModel&)>& on_loaded = {});

// Class names, one a line (a trailing newline is optional; "\r\n" endings are accepted).
absl::StatusOr<std::vector<std::string>> ReadLabels(const std::string& path);

// The folder under `cache_dir` holding the cached files of a synthetic model: its name plus a
// hash of every generator setting, so changing the config never reuses a stale cache.
std::string SyntheticCacheDir(const std::string& cache_dir, const std::string& name,
                              const v1::SyntheticModel& synthetic);

// A one-line description of a loaded model for the start-up log.
std::string DescribeModel(const ServedModel& model);

}  // namespace adasoftmax::server

#endif  // ADASOFTMAX_SERVER_MODEL_REPOSITORY_H_
