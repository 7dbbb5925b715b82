#include "server/model_repository.h"

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/calibration.h"
#include "core/resources.h"
#include "core/synth.h"
#include "core/tensor_io.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/test_util.h"

namespace adasoftmax::server {
namespace {

using ::adasoftmax::testing::TempDir;
using ::adasoftmax::testing::WriteModel;
using ::adasoftmax::testing::WriteTextFile;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

SynthOptions Tiny(uint64_t seed = 5) {
  SynthOptions o;
  o.n = 300;
  o.d = 24;
  o.queries = 4;
  o.seed = seed;
  o.bias = true;
  return o;
}

class ModelRepositoryTest : public ::testing::Test {
 protected:
  RepositoryOptions Options() const {
    RepositoryOptions o;
    o.cache_dir = dir_.Sub("cache");
    o.batching.max_batch_size = 7;
    o.audit_fraction = 0.25;
    return o;
  }
  absl::StatusOr<std::unique_ptr<ServedModel>> Load(const std::string& name) {
    std::vector<std::string> log;
    auto model = LoadModel(dir_.Sub("repo/" + name), Options(),
                           [this](const std::string& line) { log_.push_back(line); });
    return model;
  }

  TempDir dir_;
  std::vector<std::string> log_;
};

TEST_F(ModelRepositoryTest, LoadsFilesLabelsAndDefaults) {
  WriteModel(dir_.Sub("repo/m"), Tiny());
  auto m = Load("m");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ((*m)->name, "m");  // the folder's name
  EXPECT_EQ((*m)->model->n(), 300u);
  EXPECT_EQ((*m)->model->d(), 24u);
  EXPECT_TRUE((*m)->model->has_bias());
  ASSERT_EQ((*m)->labels.size(), 300u);
  EXPECT_EQ((*m)->labels[299], "class299");
  EXPECT_EQ((*m)->default_epsilon, 0.3);
  EXPECT_EQ((*m)->default_delta, 0.01);
  EXPECT_EQ((*m)->default_temperature, 1.0);
  EXPECT_EQ((*m)->default_mode, v1::MODE_ADAPTIVE);
  EXPECT_EQ((*m)->calibration_mode, "theory");
  EXPECT_EQ((*m)->batching.max_batch_size, 7u);  // the server-wide setting
  EXPECT_EQ((*m)->audit_fraction, 0.25);
  EXPECT_EQ((*m)->adaptive->options().sample_cost, kDefaultSampleCost);  // the fallback is on
  EXPECT_EQ((*m)->adaptive->options().sampling_memory_fraction, kDefaultSamplingMemoryFraction);
  EXPECT_EQ((*m)->adaptive->options().max_sharing_loss, kDefaultMaxSharingLoss);
  EXPECT_EQ((*m)->adaptive->options().min_epsilon, kTheoryMinEpsilon);
  EXPECT_EQ((*m)->adaptive->options().min_delta, 0.0);
}

TEST_F(ModelRepositoryTest, ConfigOverridesDefaults) {
  WriteModel(dir_.Sub("repo/m"), Tiny(),
             "name: \"renamed\"\ndefault_epsilon: 0.1\ndefault_delta: 0.05\n"
             "default_temperature: 2\ndefault_mode: MODE_EXACT\n"
             "batching { max_batch_size: 3 batch_timeout_us: 250 max_queue_size: 9 }\n"
             "audit_fraction: 0\n"
             "adaptive { normalizer_multiplier: 0.5 warmup_fraction: 0.2 sample_cost: 0\n"
             "           sampling_memory_fraction: 0.5 max_sharing_loss: inf min_delta: 0.001\n"
             "           lognormal_correction: 0.4 }\n");
  auto m = Load("m");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ((*m)->name, "renamed");
  EXPECT_EQ((*m)->default_epsilon, 0.1);
  EXPECT_EQ((*m)->default_delta, 0.05);
  EXPECT_EQ((*m)->default_temperature, 2.0);
  EXPECT_EQ((*m)->default_mode, v1::MODE_EXACT);
  EXPECT_EQ((*m)->batching.max_batch_size, 3u);
  EXPECT_EQ((*m)->batching.batch_timeout, absl::Microseconds(250));
  EXPECT_EQ((*m)->batching.max_queue_size, 9u);
  EXPECT_EQ((*m)->audit_fraction, 0.0);
  EXPECT_EQ((*m)->calibration_mode, "manual");
  EXPECT_EQ((*m)->adaptive->options().normalizer_multiplier, 0.5);
  EXPECT_EQ((*m)->adaptive->options().topk_multiplier, 1.0);
  EXPECT_EQ((*m)->adaptive->options().warmup_fraction, 0.2);
  EXPECT_EQ((*m)->adaptive->options().sample_cost, 0.0);
  EXPECT_EQ((*m)->adaptive->options().sampling_memory_fraction, 0.5);
  EXPECT_EQ((*m)->adaptive->options().max_sharing_loss, INFINITY);
  EXPECT_EQ((*m)->adaptive->options().lognormal_correction, 0.4);
  EXPECT_EQ((*m)->adaptive->options().min_epsilon, 0.0);  // manual multipliers: no bound
  EXPECT_EQ((*m)->adaptive->options().min_delta, 0.001);
}

TEST_F(ModelRepositoryTest, CalibrationFileSetsMultipliersAndDefaults) {
  Calibration cal;
  cal.topk_multiplier = 0.03;
  cal.normalizer_multiplier = 1e-4;
  cal.epsilon = 0.25;
  cal.delta = 0.02;
  cal.lognormal_correction = 0.3;
  cal.warmup_fraction = 0.2;
  cal.n = Tiny().n;
  cal.d = Tiny().d;
  cal.calibration_queries = 500;
  cal.holdout_queries = 200;
  WriteModel(dir_.Sub("repo/m"), Tiny(), "calibration: \"calibration.json\"\n");
  ASSERT_TRUE(WriteCalibration(dir_.Sub("repo/m/calibration.json"), cal).ok());
  auto m = Load("m");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ((*m)->calibration_mode, "calibrated");
  EXPECT_EQ((*m)->adaptive->options().topk_multiplier, 0.03);
  EXPECT_EQ((*m)->adaptive->options().normalizer_multiplier, 1e-4);
  EXPECT_EQ((*m)->adaptive->options().lognormal_correction, 0.3);
  EXPECT_EQ((*m)->adaptive->options().warmup_fraction, 0.2);
  EXPECT_EQ((*m)->default_epsilon, 0.25);
  EXPECT_EQ((*m)->default_delta, 0.02);
  // Stricter requests are answered exactly.
  EXPECT_EQ((*m)->adaptive->options().min_epsilon, 0.25);
  EXPECT_EQ((*m)->adaptive->options().min_delta, 0.02);
  // The start-up log line says what the model samples with.
  EXPECT_THAT(DescribeModel(**m),
              HasSubstr("calibration=calibrated multipliers=0.03,0.0001 lognormal_correction=0.3 "
                        "warmup_fraction=0.2 min_epsilon=0.25 min_delta=0.02 "
                        "max_sharing_loss=1.2 "));

  // The model with the calibration and `adaptive` settings.
  auto calibrated_with = [&](const std::string& adaptive) {
    WriteModel(dir_.Sub("repo/m"), Tiny(),
               absl::StrCat("calibration: \"calibration.json\"\nadaptive { ", adaptive, " }\n"));
    return Load("m");
  };
  // Restating a calibrated value keeps the calibration; another warm-up or correction voids it.
  m = calibrated_with("warmup_fraction: 0.2");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ((*m)->calibration_mode, "calibrated");
  EXPECT_EQ((*m)->adaptive->options().min_epsilon, 0.25);
  for (const char* replaced : {"warmup_fraction: 0.3", "lognormal_correction: 0.5"}) {
    m = calibrated_with(replaced);
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_EQ((*m)->calibration_mode, "manual") << replaced;
    EXPECT_EQ((*m)->adaptive->options().topk_multiplier, 0.03) << replaced;
    EXPECT_EQ((*m)->adaptive->options().min_epsilon, 0.0) << replaced;
    EXPECT_EQ((*m)->adaptive->options().min_delta, 0.0) << replaced;
  }
  EXPECT_EQ((*m)->adaptive->options().lognormal_correction, 0.5);
  EXPECT_EQ((*m)->adaptive->options().warmup_fraction, 0.2);

  // Manual multipliers replace the calibrated ones, and the bound and correction with them.
  m = calibrated_with("topk_multiplier: 0.5");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ((*m)->calibration_mode, "manual");
  EXPECT_EQ((*m)->adaptive->options().topk_multiplier, 0.5);
  EXPECT_EQ((*m)->adaptive->options().min_epsilon, 0.0);
  EXPECT_EQ((*m)->adaptive->options().min_delta, 0.0);
  EXPECT_EQ((*m)->adaptive->options().lognormal_correction, 0.0);
}

TEST_F(ModelRepositoryTest, BadConfigsFailWithAMessageNamingTheProblem) {
  struct Case {
    std::string config;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {"weights: \"weights.npy\"\nunknown_field: 3\n", "unknown_field"},
      {"weights: \"weights.npy\"\ndefault_epsilon: 1.5\n", "default_epsilon"},
      {"weights: \"weights.npy\"\ndefault_delta: 0\n", "default_delta"},
      {"weights: \"weights.npy\"\ndefault_temperature: -1\n", "default_temperature"},
      {"weights: \"weights.npy\"\nbatching { max_batch_size: 0 }\n", "max_batch_size"},
      {"weights: \"weights.npy\"\naudit_fraction: 2\n", "audit_fraction"},
      {"weights: \"weights.npy\"\nadaptive { topk_multiplier: -1 }\n", "adaptive"},
      {"weights: \"weights.npy\"\nadaptive { sample_cost: -1 }\n", "sample_cost"},
      {"weights: \"weights.npy\"\nadaptive { min_epsilon: -0.1 }\n", "min_epsilon"},
      {"weights: \"weights.npy\"\nadaptive { sampling_memory_fraction: -1 }\n",
       "sampling_memory_fraction"},
      {"weights: \"weights.npy\"\nadaptive { max_sharing_loss: 0.5 }\n", "max_sharing_loss"},
      {"weights: \"weights.npy\"\nadaptive { lognormal_correction: 2 }\n", "lognormal_correction"},
      {"weights: \"missing.npy\"\n", "missing.npy"},
      {"weights: \"weights.npy\"\nlabels: \"short.txt\"\n", "labels"},
      {"weights: \"weights.npy\"\ncalibration: \"nope.json\"\n", "nope.json"},
      {"weights: \"weights.npy\"\ncalibration: \"other.json\"\n",
       "other.json: calibrated on a 300 x 12 head, but the model is 300 x 24"},
      {"", "exactly one of `weights` and `synthetic`"},
      {"weights: \"weights.npy\"\nsynthetic { n: 10 d: 2 }\n", "exactly one"},
      {"weights: \"weights.npy\"\nname: \"bad name!\"\n", "name"},
      {"weights: \"weights.npy\"\nname: \"adasoftmax.v1.SoftmaxService\"\n",
       "name: 'adasoftmax.v1.SoftmaxService' is the server's own health service name"},
      {"weights: \"weights.npy\"\ndtype: \"fp8\"\n", "dtype: unknown dtype 'fp8'"},
      {"weights: \"weights.npy\"\nsampling_dtype: \"int8\"\n",
       "sampling_dtype: unknown dtype 'int8'"},
  };
  WriteModel(dir_.Sub("repo/m"), Tiny());
  WriteTextFile(dir_.Sub("repo/m/short.txt"), "a\nb\n");
  Calibration other;
  other.n = 300;
  other.d = 12;
  other.calibration_queries = 500;
  ASSERT_TRUE(WriteCalibration(dir_.Sub("repo/m/other.json"), other).ok());
  for (const Case& c : cases) {
    WriteTextFile(dir_.Sub("repo/m/model.pbtxt"), c.config);
    auto m = Load("m");
    ASSERT_FALSE(m.ok()) << c.config;
    EXPECT_THAT(m.status().message(), HasSubstr(c.expected)) << c.config;
    EXPECT_THAT(m.status().message(), HasSubstr("repo/m")) << c.config;  // names the model
  }
}

std::vector<std::string> Names(const std::vector<std::shared_ptr<const ServedModel>>& models) {
  std::vector<std::string> names;
  for (const auto& m : models) names.push_back(m->name);
  return names;
}

// The folder names of failures.
std::vector<std::string> Folders(const std::vector<ModelRepository::Failure>& failures) {
  std::vector<std::string> folders;
  for (const auto& f : failures) folders.push_back(std::filesystem::path(f.dir).filename());
  return folders;
}

TEST_F(ModelRepositoryTest, RepositoryLoadsEveryModelInOrderAndRejectsDuplicates) {
  WriteModel(dir_.Sub("repo/b"), Tiny(1));
  WriteModel(dir_.Sub("repo/a"), Tiny(2));
  std::filesystem::create_directories(dir_.Sub("repo/not-a-model"));
  ModelRepository repository(dir_.Sub("repo"), Options());
  auto changes = repository.Update();
  ASSERT_TRUE(changes.ok()) << changes.status();
  EXPECT_EQ(Names(changes->loaded), (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE(changes->unloaded.empty());
  EXPECT_TRUE(changes->errors.empty());
  EXPECT_EQ(Names(repository.models()), (std::vector<std::string>{"a", "b"}));

  WriteModel(dir_.Sub("repo/c"), Tiny(3), "name: \"a\"\n");
  changes = repository.Update();
  ASSERT_TRUE(changes.ok()) << changes.status();
  ASSERT_EQ(changes->errors.size(), 1u);
  EXPECT_THAT(changes->errors[0].message(), HasSubstr("repo/c: the name 'a' is already taken"));
  EXPECT_FALSE(changes->changed());
  EXPECT_EQ(Names(repository.models()), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(Folders(repository.failures()), std::vector<std::string>{"c"});
  EXPECT_EQ(repository.failures()[0].status, changes->errors[0]);

  // Folder a's model takes b's name: b's model goes and its folder fails; c's name is free now,
  // so c loads, though its files did not change.
  const std::string a_config = testing::ReadTextFile(dir_.Sub("repo/a/model.pbtxt"));
  WriteTextFile(dir_.Sub("repo/a/model.pbtxt"), a_config + "name: \"b\"\n");
  changes = repository.Update();
  ASSERT_TRUE(changes.ok()) << changes.status();
  EXPECT_EQ(Names(changes->loaded), (std::vector<std::string>{"b", "a"}));
  ASSERT_EQ(changes->errors.size(), 1u);
  EXPECT_THAT(changes->errors[0].message(), HasSubstr("repo/b: the name 'b' is already taken"));
  EXPECT_EQ(Names(repository.models()), (std::vector<std::string>{"b", "a"}));
  EXPECT_EQ(Folders(repository.failures()), std::vector<std::string>{"b"});
  changes = repository.Update();  // the clash stays: nothing is tried again
  ASSERT_TRUE(changes.ok()) << changes.status();
  EXPECT_FALSE(changes->changed());
  EXPECT_TRUE(changes->errors.empty());
  EXPECT_EQ(Folders(repository.failures()), std::vector<std::string>{"b"});

  // And back: b loads again, c's model (named a) gives way to folder a's.
  WriteTextFile(dir_.Sub("repo/a/model.pbtxt"), a_config);
  changes = repository.Update();
  ASSERT_TRUE(changes.ok()) << changes.status();
  EXPECT_EQ(Names(changes->loaded), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(Names(repository.models()), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(Folders(repository.failures()), std::vector<std::string>{"c"});
  std::filesystem::remove_all(dir_.Sub("repo/c"));
  changes = repository.Update();
  ASSERT_TRUE(changes.ok()) << changes.status();
  EXPECT_FALSE(changes->changed());
  EXPECT_THAT(repository.failures(), IsEmpty());

  EXPECT_EQ(ModelRepository(dir_.Sub("nowhere"), Options()).Update().status().code(),
            absl::StatusCode::kNotFound);
  std::filesystem::create_directories(dir_.Sub("empty"));
  EXPECT_EQ(ModelRepository(dir_.Sub("empty"), Options()).Update().status().code(),
            absl::StatusCode::kFailedPrecondition);
}

// Under a memory limit, a model whose layouts do not fit in what the process leaves of it fails
// to load, before it allocates them (a synthetic one before it is generated), and its folder is
// listed as failed.
TEST_F(ModelRepositoryTest, AModelBeyondTheMemoryLimitIsNotLoaded) {
  WriteModel(dir_.Sub("repo/a"), Tiny(1));
  std::filesystem::create_directories(dir_.Sub("repo/big"));
  ASSERT_TRUE(
      WriteNpy(dir_.Sub("repo/big/weights.npy"), Matrix::Owned(2048, 4096, Layout::kRowMajor))
          .ok());  // 32 MiB
  WriteTextFile(dir_.Sub("repo/big/model.pbtxt"), "weights: \"weights.npy\"\n");
  // A synthetic head as large is refused before it is generated.
  v1::SyntheticModel synthetic;
  synthetic.set_n(2048);
  synthetic.set_d(4096);
  WriteTextFile(dir_.Sub("repo/synth/model.pbtxt"), "synthetic { n: 2048 d: 4096 }\n");
  RepositoryOptions options = Options();
  options.memory_limit_bytes = ResidentAnonymousBytes() + (32 << 20);  // each needs 64 MiB
  ModelRepository repository(dir_.Sub("repo"), options);
  auto changes = repository.Update();
  ASSERT_TRUE(changes.ok()) << changes.status();
  EXPECT_EQ(Names(repository.models()), std::vector<std::string>{"a"});
  ASSERT_EQ(changes->errors.size(), 2u);
  for (const absl::Status& error : changes->errors) {
    EXPECT_EQ(error.code(), absl::StatusCode::kResourceExhausted);
    EXPECT_THAT(error.message(),
                AllOf(HasSubstr("2048 x 4096 x (4 + 4) bytes"), HasSubstr("the memory limit is")));
  }
  EXPECT_THAT(changes->errors[0].message(), HasSubstr("repo/big"));
  EXPECT_THAT(changes->errors[1].message(), HasSubstr("repo/synth: synthetic: loading"));
  EXPECT_EQ(Folders(repository.failures()), (std::vector<std::string>{"big", "synth"}));
  EXPECT_FALSE(std::filesystem::exists(SyntheticCacheDir(options.cache_dir, "synth", synthetic)));

  std::filesystem::remove_all(dir_.Sub("repo/synth"));
  options.memory_limit_bytes = 0;  // no bound
  ModelRepository unbounded(dir_.Sub("repo"), options);
  ASSERT_TRUE(unbounded.Update().ok());
  EXPECT_EQ(Names(unbounded.models()), (std::vector<std::string>{"a", "big"}));
}

// Replaces `path` through a rename, as deployment tools do: a new file (inode) at the same path.
void ReplaceNpy(const std::string& path, const Matrix& data) {
  ASSERT_TRUE(WriteNpy(path + ".new", data).ok());
  std::filesystem::rename(path + ".new", path);
}

TEST_F(ModelRepositoryTest, FingerprintFollowsTheConfigAndTheFilesItNames) {
  const SynthData data = WriteModel(dir_.Sub("repo/m"), Tiny());
  const std::string dir = dir_.Sub("repo/m");
  const std::string original = ModelFingerprint(dir);
  EXPECT_EQ(ModelFingerprint(dir), original);
  WriteTextFile(dir + "/notes.txt", "not named by the config");
  EXPECT_EQ(ModelFingerprint(dir), original);

  // Touching a named file (same bytes, later modification time).
  const auto labels = dir + "/labels.txt";
  std::filesystem::last_write_time(
      labels, std::filesystem::last_write_time(labels) + std::chrono::seconds(1));
  const std::string touched = ModelFingerprint(dir);
  EXPECT_NE(touched, original);
  ReplaceNpy(dir + "/weights.npy", data.weights);  // same bytes, another file
  const std::string replaced = ModelFingerprint(dir);
  EXPECT_NE(replaced, touched);
  std::filesystem::remove(dir + "/bias.npy");
  const std::string missing = ModelFingerprint(dir);
  EXPECT_NE(missing, replaced);
  EXPECT_THAT(missing, HasSubstr("bias.npy: missing"));
  WriteTextFile(dir + "/model.pbtxt", "weights: \"weights.npy\"\n");
  EXPECT_NE(ModelFingerprint(dir), missing);
  WriteTextFile(dir + "/model.pbtxt", "not a config");
  EXPECT_EQ(ModelFingerprint(dir), "not a config");
  std::filesystem::remove(dir + "/model.pbtxt");
  EXPECT_EQ(ModelFingerprint(dir), "unreadable");
}

TEST_F(ModelRepositoryTest, UpdateReloadsWhatChangedAndKeepsTheRest) {
  WriteModel(dir_.Sub("repo/a"), Tiny(1));
  const SynthData b = WriteModel(dir_.Sub("repo/b"), Tiny(2));
  ModelRepository repository(dir_.Sub("repo"), Options());
  ASSERT_TRUE(repository.Update().ok());
  const std::vector<std::shared_ptr<const ServedModel>> first = repository.models();
  ASSERT_EQ(first.size(), 2u);

  auto changes = repository.Update();  // nothing changed: nothing is read again
  ASSERT_TRUE(changes.ok()) << changes.status();
  EXPECT_FALSE(changes->changed());
  EXPECT_TRUE(changes->errors.empty());
  EXPECT_EQ(repository.models(), first);

  // A changed config reloads its model only.
  WriteTextFile(dir_.Sub("repo/a/model.pbtxt"),
                "weights: \"weights.npy\"\nbias: \"bias.npy\"\ndefault_epsilon: 0.2\n");
  changes = repository.Update();
  ASSERT_TRUE(changes.ok()) << changes.status();
  EXPECT_EQ(Names(changes->loaded), std::vector<std::string>{"a"});
  ASSERT_EQ(repository.models().size(), 2u);
  EXPECT_NE(repository.models()[0], first[0]);
  EXPECT_EQ(repository.models()[0]->default_epsilon, 0.2);
  EXPECT_EQ(repository.models()[1], first[1]);

  // New weights under the same name reload their model.
  const SynthData other = *Synthesize(Tiny(9));
  ReplaceNpy(dir_.Sub("repo/b/weights.npy"), other.weights);
  changes = repository.Update();
  ASSERT_TRUE(changes.ok()) << changes.status();
  EXPECT_EQ(Names(changes->loaded), std::vector<std::string>{"b"});
  EXPECT_EQ(repository.models()[1]->model->weight(7, 3), other.weights.at(7, 3));
  EXPECT_NE(other.weights.at(7, 3), b.weights.at(7, 3));

  // A removed folder unloads its model; a new one loads.
  std::filesystem::remove_all(dir_.Sub("repo/a"));
  WriteModel(dir_.Sub("repo/c"), Tiny(3));
  changes = repository.Update();
  ASSERT_TRUE(changes.ok()) << changes.status();
  EXPECT_EQ(Names(changes->loaded), std::vector<std::string>{"c"});
  EXPECT_EQ(changes->unloaded, std::vector<std::string>{"a"});
  EXPECT_EQ(Names(repository.models()), (std::vector<std::string>{"b", "c"}));

  // A change that does not load keeps the previous model, and is not tried again until its
  // files change once more.
  const std::shared_ptr<const ServedModel> c = repository.models()[1];
  const std::string good_config = testing::ReadTextFile(dir_.Sub("repo/c/model.pbtxt"));
  WriteTextFile(dir_.Sub("repo/c/model.pbtxt"), "weights: \"missing.npy\"\n");
  changes = repository.Update();
  ASSERT_TRUE(changes.ok()) << changes.status();
  EXPECT_FALSE(changes->changed());
  ASSERT_EQ(changes->errors.size(), 1u);
  EXPECT_THAT(changes->errors[0].message(), HasSubstr("repo/c"));
  EXPECT_THAT(changes->errors[0].message(), HasSubstr("missing.npy"));
  EXPECT_EQ(repository.models()[1], c);
  EXPECT_EQ(Folders(repository.failures()), std::vector<std::string>{"c"});
  changes = repository.Update();
  ASSERT_TRUE(changes.ok()) << changes.status();
  EXPECT_TRUE(changes->errors.empty());
  EXPECT_FALSE(changes->changed());
  ASSERT_EQ(Folders(repository.failures()), std::vector<std::string>{"c"});
  EXPECT_THAT(repository.failures()[0].status.message(), HasSubstr("missing.npy"));
  WriteTextFile(dir_.Sub("repo/c/model.pbtxt"), good_config + "default_delta: 0.05\n");
  changes = repository.Update();
  ASSERT_TRUE(changes.ok()) << changes.status();
  EXPECT_EQ(Names(changes->loaded), std::vector<std::string>{"c"});
  EXPECT_EQ(repository.models()[1]->default_delta, 0.05);
  EXPECT_THAT(repository.failures(), IsEmpty());

  // An unreadable repository changes nothing.
  const std::vector<std::shared_ptr<const ServedModel>> last = repository.models();
  std::filesystem::rename(dir_.Sub("repo"), dir_.Sub("moved"));
  EXPECT_EQ(repository.Update().status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(repository.models(), last);
}

// A synthetic model is generated once, reloaded from the cache afterwards, and regenerated
// (identically) when the cache is corrupt.
TEST_F(ModelRepositoryTest, SyntheticModelIsCachedAndRegeneratedWhenCorrupt) {
  WriteTextFile(dir_.Sub("repo/syn/model.pbtxt"),
                "synthetic { n: 400 d: 32 seed: 9 queries: 5 bias: true }\n");
  auto first = Load("syn");
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_THAT((*first)->source, HasSubstr("generated"));
  ASSERT_EQ(log_.size(), 1u);
  EXPECT_THAT(log_[0], HasSubstr("generating"));
  v1::SyntheticModel synthetic;
  synthetic.set_n(400);
  synthetic.set_d(32);
  synthetic.set_seed(9);
  synthetic.set_queries(5);
  synthetic.set_bias(true);
  const std::string cache = SyntheticCacheDir(Options().cache_dir, "syn", synthetic);
  for (const char* file : {"weights.npy", "bias.npy", "queries.npy"}) {
    EXPECT_TRUE(std::filesystem::exists(cache + "/" + file)) << file;
  }

  log_.clear();
  auto second = Load("syn");
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_THAT((*second)->source, HasSubstr("cached"));
  EXPECT_TRUE(log_.empty());
  EXPECT_EQ((*second)->model->weight(17, 5), (*first)->model->weight(17, 5));
  EXPECT_EQ((*second)->model->bias()[3], (*first)->model->bias()[3]);

  std::filesystem::resize_file(cache + "/weights.npy", 100);  // truncated
  auto third = Load("syn");
  ASSERT_TRUE(third.ok()) << third.status();
  EXPECT_THAT((*third)->source, HasSubstr("generated"));
  ASSERT_EQ(log_.size(), 1u);
  EXPECT_THAT(log_[0], HasSubstr("generating"));
  EXPECT_EQ((*third)->model->weight(17, 5), (*first)->model->weight(17, 5));

  // Any change of the generator settings uses another cache folder.
  synthetic.set_seed(10);
  EXPECT_NE(SyntheticCacheDir(Options().cache_dir, "syn", synthetic), cache);
}

TEST_F(ModelRepositoryTest, LoadsSafetensorsByTensorName) {
  const SynthData data = WriteModel(dir_.Sub("repo/st"), Tiny(6));
  Matrix bias_row = Matrix::Owned(1, data.bias.size(), Layout::kRowMajor);
  std::copy(data.bias.begin(), data.bias.end(), bias_row.mutable_data());
  ASSERT_TRUE(WriteSafetensors(dir_.Sub("repo/st/head.safetensors"),
                               {{"other", &data.queries},
                                {"lm_head.weight", &data.weights},
                                {"lm_head.bias", &bias_row}})
                  .ok());
  WriteTextFile(dir_.Sub("repo/st/model.pbtxt"),
                "weights: \"head.safetensors\"\nweights_tensor: \"lm_head.weight\"\n"
                "bias: \"head.safetensors\"\nbias_tensor: \"lm_head.bias\"\n");
  auto m = Load("st");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ((*m)->model->n(), 300u);
  EXPECT_EQ((*m)->model->weight(7, 3), data.weights.at(7, 3));
  EXPECT_EQ((*m)->model->bias()[9], data.bias[9]);

  WriteTextFile(dir_.Sub("repo/st/model.pbtxt"),
                "weights: \"head.safetensors\"\nweights_tensor: \"missing\"\n");
  EXPECT_THAT(Load("st").status().message(), HasSubstr("missing"));
}

TEST_F(ModelRepositoryTest, DtypesKeepFileAndSyntheticWeightsAndTheSamplersCopy) {
  const SynthData data = WriteModel(dir_.Sub("repo/half"), Tiny(7));
  WriteTextFile(dir_.Sub("repo/half/model.pbtxt"),
                "weights: \"weights.npy\"\ndtype: \"bfloat16\"\n");
  auto m = Load("half");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ((*m)->model->dtype(), DType::kBFloat16);
  EXPECT_EQ((*m)->model->sampling_dtype(), DType::kBFloat16);
  EXPECT_EQ((*m)->model->weight(7, 3), Widen(Narrow<BFloat16>(data.weights.at(7, 3))));

  WriteTextFile(dir_.Sub("repo/syn16/model.pbtxt"),
                "synthetic { n: 400 d: 32 seed: 9 queries: 5 }\ndtype: \"float16\"\n");
  for (int load = 0; load < 2; ++load) {  // generated, then read from the cache
    auto synthetic = Load("syn16");
    ASSERT_TRUE(synthetic.ok()) << synthetic.status();
    EXPECT_EQ((*synthetic)->model->dtype(), DType::kFloat16) << load;
  }

  WriteTextFile(dir_.Sub("repo/half/model.pbtxt"), "weights: \"weights.npy\"\n");
  m = Load("half");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ((*m)->model->sampling_dtype(), DType::kFloat16);  // float32 weights' default
  WriteTextFile(dir_.Sub("repo/half/model.pbtxt"),
                "weights: \"weights.npy\"\nsampling_dtype: \"float32\"\n");
  m = Load("half");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ((*m)->model->sampling_dtype(), DType::kFloat32);
  WriteTextFile(dir_.Sub("repo/synbf/model.pbtxt"),
                "synthetic { n: 400 d: 32 seed: 9 queries: 5 }\nsampling_dtype: \"bfloat16\"\n");
  for (int load = 0; load < 2; ++load) {  // generated, then read from the cache
    auto synthetic = Load("synbf");
    ASSERT_TRUE(synthetic.ok()) << synthetic.status();
    EXPECT_EQ((*synthetic)->model->sampling_dtype(), DType::kBFloat16) << load;
  }
}

TEST_F(ModelRepositoryTest, ReadLabelsKeepsSpacesAndAcceptsCrLf) {
  WriteTextFile(dir_.Sub("labels.txt"), "<blank>\r\na\n \nlast");
  auto labels = ReadLabels(dir_.Sub("labels.txt"));
  ASSERT_TRUE(labels.ok());
  EXPECT_EQ(*labels, (std::vector<std::string>{"<blank>", "a", " ", "last"}));
}

// The shipped repository (run from the source tree): both configs parse, and the OCR head loads
// through its relative paths, with its characters as labels.
TEST(ShippedRepositoryTest, ConfigsParseAndTheOcrHeadLoads) {
  for (const char* name : {"ocr", "lm"}) {
    const std::string path = std::string("deploy/models/") + name + "/model.pbtxt";
    auto config = ParseModelConfig(testing::ReadTextFile(path), path);
    ASSERT_TRUE(config.ok()) << config.status();
    EXPECT_EQ(config->name(), name);
  }
  auto lm = ParseModelConfig(testing::ReadTextFile("deploy/models/lm/model.pbtxt"), "lm");
  EXPECT_EQ(lm->synthetic().n(), 50257u);
  EXPECT_EQ(lm->synthetic().d(), 768u);
  EXPECT_TRUE(lm->synthetic().heavy_tailed());

  auto ocr = LoadModel("deploy/models/ocr", RepositoryOptions());
  ASSERT_TRUE(ocr.ok()) << ocr.status();
  EXPECT_EQ((*ocr)->model->n(), 6625u);
  EXPECT_EQ((*ocr)->model->d(), 120u);
  EXPECT_TRUE((*ocr)->model->has_bias());
  ASSERT_EQ((*ocr)->labels.size(), 6625u);
  EXPECT_EQ((*ocr)->labels[0], "<blank>");
  EXPECT_EQ((*ocr)->labels[6624], " ");
}

}  // namespace
}  // namespace adasoftmax::server
