#ifndef ADASOFTMAX_SERVER_MODEL_REPOSITORY_H_
#define ADASOFTMAX_SERVER_MODEL_REPOSITORY_H_

// The model repository: one folder per model, each holding a model.pbtxt (schema:
// adasoftmax.v1.ModelConfig in proto/adasoftmax/v1/model_config.proto). ModelRepository loads
// it and, on each Update, brings what it serves in line with the folders again.

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "adasoftmax/v1/adasoftmax.pb.h"
#include "adasoftmax/v1/model_config.pb.h"
#include "core/adaptive_softmax.h"
#include "core/exact_softmax.h"
#include "core/model.h"
#include "core/topk_softmax.h"
#include "server/batch_scheduler.h"

namespace adasoftmax::server {

// The name the health service reports the whole server under (see Server), which no model may
// take: each model's health is reported under the model's name.
inline constexpr char kServiceName[] = "adasoftmax.v1.SoftmaxService";

// Server-wide settings that model configs may override.
struct RepositoryOptions {
  // Where synthetic models are generated and cached (created when missing). REQUIRES: non-empty
  // when some model is synthetic.
  std::string cache_dir;
  // Batching of models whose config sets no `batching` fields.
  BatchingOptions batching;
  // Audit fraction of models whose config sets none. REQUIRES: in [0, 1]. Default: 0.01.
  double audit_fraction = 0.01;
  // The memory the process may hold, in bytes; 0: no bound. A model loads only when loading it
  // (see ModelFiles::max_bytes) fits in what the process's resident anonymous memory leaves of
  // it; else it fails to load (ResourceExhausted) rather than the kernel's OOM killer ending
  // the process. Serving adds to that (see the README's Resource sizing).
  size_t memory_limit_bytes = 0;
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
  // ModelFingerprint(dir) just before the files were read (set by ModelRepository).
  std::string fingerprint;
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

// What the files of a model folder amount to: the text of its model.pbtxt plus the identity
// (device, inode, size, modification time) of every file the config names, or their absence.
// Replacing, rewriting or touching any of them changes it. Never fails: an unreadable config
// is part of the fingerprint too.
std::string ModelFingerprint(const std::string& dir);

// The models of a repository folder, kept in line with it. Not thread-safe.
class ModelRepository {
 public:
  using LogFn = std::function<void(const std::string&)>;

  // What one Update changed.
  struct Changes {
    std::vector<std::shared_ptr<const ServedModel>> loaded;  // new or changed, in folder order
    std::vector<std::string> unloaded;                       // names no longer served
    std::vector<absl::Status> errors;  // models that did not load, each naming its folder
    bool changed() const { return !loaded.empty() || !unloaded.empty(); }
  };

  // A folder whose files did not load at their last attempt.
  struct Failure {
    std::string dir;
    std::string fingerprint;  // of the files that failed
    absl::Status status;      // names the folder
    std::string taken_name;   // when an earlier folder's model holds the model's name
  };

  // `log` receives progress notes (e.g. "generating ..."); it may be empty.
  ModelRepository(std::string root, RepositoryOptions options, LogFn log = {});

  // Brings models() in line with the folders: loads the model of every new folder and of every
  // folder whose fingerprint changed, drops those of removed folders and keeps the others (the
  // same objects). A model that does not load, or whose name an earlier folder's model holds,
  // leaves its folder's previous model (if any) in place, and its files are not tried again
  // until their fingerprint changes or the name they clashed on is free. An unchanged model
  // whose name an earlier folder's new model takes is unloaded and counts as failed. Fails,
  // changing nothing, when `root` is not a directory (NotFound) or holds no model
  // (FailedPrecondition).
  absl::StatusOr<Changes> Update();

  // The served models, in folder order, with distinct names.
  const std::vector<std::shared_ptr<const ServedModel>>& models() const { return models_; }
  // The folders whose current files did not load, in folder order. Each folder of the last
  // Update serves a model, is here, or both (its previous model keeps serving).
  const std::vector<Failure>& failures() const { return failures_; }

 private:
  const std::string root_;
  const RepositoryOptions options_;
  const LogFn log_;
  std::vector<std::shared_ptr<const ServedModel>> models_;
  std::vector<Failure> failures_;
};

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
