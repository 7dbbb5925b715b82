// End-to-end tests of the offline `adasoftmax` commands: the binary is run as a subprocess.

#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/version.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace {

using ::testing::HasSubstr;
using Json = nlohmann::json;

struct Output {
  int code = -1;
  std::string out;
  std::string err;
};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines = absl::StrSplit(text, '\n', absl::SkipEmpty());
  return lines;
}

// `run`'s answers (JSON lines) whose "exact" is true.
size_t ExactAnswers(const std::string& jsonl) {
  size_t exact = 0;
  for (const std::string& line : Lines(jsonl)) exact += Json::parse(line)["exact"].get<bool>();
  return exact;
}

class CliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const char* bin_dir = std::getenv("ADASOFTMAX_BIN_DIR");
    ASSERT_NE(bin_dir, nullptr) << "ADASOFTMAX_BIN_DIR is not set";
    binary_ = new std::string(absl::StrCat(bin_dir, "/adasoftmax"));
    dir_ = new std::string(absl::StrCat(::testing::TempDir(), "/cli_test_", getpid()));
    std::filesystem::create_directories(*dir_);
    // 120 queries: enough for a calibration at delta 0.05 (59 calibration queries at least).
    const Output synth = Run({"synth", "--n", "600", "--d", "32", "--queries", "120", "--seed", "3",
                              "--bias", "--out-dir", Path("data")});
    ASSERT_EQ(synth.code, 0) << synth.err;
    // Queries of the wrong length for the model above.
    const Output other =
        Run({"synth", "--n", "50", "--d", "16", "--queries", "4", "--out-dir", Path("other")});
    ASSERT_EQ(other.code, 0) << other.err;
    std::ofstream labels(Path("labels.txt"));
    for (int i = 0; i < 600; ++i) labels << "class" << i << "\n";
  }

  static void TearDownTestSuite() {
    std::filesystem::remove_all(*dir_);
    delete binary_;
    delete dir_;
  }

  static std::string Path(const std::string& name) { return absl::StrCat(*dir_, "/", name); }

  // Runs the binary with `args` (each single-quoted for the shell) and captures its output.
  static Output Run(const std::vector<std::string>& args) {
    static int counter = 0;
    const std::string out = Path(absl::StrCat("stdout", counter));
    const std::string err = Path(absl::StrCat("stderr", counter++));
    std::string command = absl::StrCat("'", *binary_, "'");
    for (const std::string& a : args) absl::StrAppend(&command, " '", a, "'");
    absl::StrAppend(&command, " >'", out, "' 2>'", err, "'");
    const int status = std::system(command.c_str());
    Output o;
    o.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    o.out = ReadFile(out);
    o.err = ReadFile(err);
    return o;
  }

  static std::vector<std::string> ModelArgs() {
    return {"--weights", Path("data/weights.npy"), "--bias", Path("data/bias.npy"),
            "--queries", Path("data/queries.npy")};
  }

  static std::vector<std::string> With(std::vector<std::string> a,
                                       const std::vector<std::string>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  }

  // Asserts a failure with exit code `code` and exactly one stderr line containing `needle`.
  static void ExpectOneLineError(const Output& o, int code, const std::string& needle) {
    EXPECT_EQ(o.code, code) << o.err;
    const std::vector<std::string> lines = Lines(o.err);
    ASSERT_EQ(lines.size(), 1u) << o.err;
    EXPECT_THAT(lines[0], HasSubstr("adasoftmax "));
    EXPECT_THAT(lines[0], HasSubstr(needle));
  }

  static std::string* binary_;
  static std::string* dir_;
};

std::string* CliTest::binary_ = nullptr;
std::string* CliTest::dir_ = nullptr;

TEST_F(CliTest, SynthWritesTheFiles) {
  const Output o =
      Run({"synth", "--n", "100", "--d", "8", "--queries", "5", "--out-dir", Path("small")});
  ASSERT_EQ(o.code, 0) << o.err;
  const Json summary = Json::parse(o.out);
  EXPECT_EQ(summary["n"], 100);
  EXPECT_EQ(summary["d"], 8);
  EXPECT_EQ(summary["queries"], 5);
  EXPECT_FALSE(summary["files"].contains("bias"));
  EXPECT_TRUE(std::filesystem::exists(Path("small/weights.npy")));
  EXPECT_TRUE(std::filesystem::exists(Path("small/queries.npy")));
  EXPECT_FALSE(std::filesystem::exists(Path("small/bias.npy")));
  EXPECT_EQ(Lines(ReadFile(Path("small/targets.txt"))).size(), 5u);
  EXPECT_TRUE(std::filesystem::exists(Path("data/bias.npy")));
}

TEST_F(CliTest, RunWritesOneJsonLinePerQuery) {
  const Output ok =
      Run(With({"run"}, With(ModelArgs(), {"--k", "2", "--labels", Path("labels.txt"), "--seed",
                                           "11", "--out", Path("run.jsonl")})));
  ASSERT_EQ(ok.code, 0) << ok.err;
  const std::vector<std::string> lines = Lines(ReadFile(Path("run.jsonl")));
  ASSERT_EQ(lines.size(), 120u);
  const std::vector<std::string> targets = Lines(ReadFile(Path("data/targets.txt")));
  int top1_hits = 0;
  for (size_t q = 0; q < lines.size(); ++q) {
    const Json j = Json::parse(lines[q]);
    EXPECT_EQ(j["query"], q);
    for (const char* key : {"indices", "probabilities", "logits", "log_partition", "samples",
                            "sample_fraction", "latency_us", "labels"}) {
      EXPECT_TRUE(j.contains(key)) << key;
    }
    ASSERT_EQ(j["indices"].size(), 2u);
    EXPECT_EQ(j["probabilities"].size(), 2u);
    EXPECT_EQ(j["logits"].size(), 2u);
    EXPECT_EQ(j["labels"][0], absl::StrCat("class", j["indices"][0].get<int>()));
    EXPECT_GT(j["sample_fraction"].get<double>(), 0);
    EXPECT_LE(j["sample_fraction"].get<double>(), 1);
    if (std::to_string(j["indices"][0].get<int>()) == targets[q]) ++top1_hits;
  }
  EXPECT_GE(top1_hits, 115);  // the planted top class, up to rare PAC failures
}

TEST_F(CliTest, SameSeedGivesTheSameAnswers) {
  auto answers = [&](const std::string& out, const std::string& threads) {
    const Output o = Run(With(
        {"run"}, With(ModelArgs(), {"--seed", "42", "--threads", threads, "--out", Path(out)})));
    EXPECT_EQ(o.code, 0) << o.err;
    std::vector<std::string> lines;
    for (const std::string& line : Lines(ReadFile(Path(out)))) {
      Json j = Json::parse(line);
      j.erase("latency_us");
      lines.push_back(j.dump());
    }
    return lines;
  };
  const std::vector<std::string> first = answers("seed1.jsonl", "1");
  const std::vector<std::string> second = answers("seed2.jsonl", "2");
  ASSERT_EQ(first.size(), 120u);
  EXPECT_EQ(first, second);
}

TEST_F(CliTest, ExactModeReadsEverything) {
  const Output o = Run(With({"run"}, With(ModelArgs(), {"--mode", "exact", "--out", "-"})));
  ASSERT_EQ(o.code, 0) << o.err;
  const std::vector<std::string> lines = Lines(o.out);
  ASSERT_EQ(lines.size(), 120u);
  EXPECT_TRUE(Json::parse(lines[0])["exact"].get<bool>());
}

TEST_F(CliTest, VersionPrintsTheRelease) {
  const Output o = Run({"--version"});
  EXPECT_EQ(o.code, 0);
  EXPECT_EQ(o.out, absl::StrCat("adasoftmax ", adasoftmax::kVersion, "\n"));
}

TEST_F(CliTest, HelpListsTheFlags) {
  const Output run = Run({"run", "--help"});
  EXPECT_EQ(run.code, 0);
  for (const char* flag : {"--weights", "--queries", "--bias", "--tensor", "--labels", "--k",
                           "--epsilon", "--delta", "--temperature", "--mode", "--multipliers",
                           "--calibration", "--seed", "--threads", "--out"}) {
    EXPECT_THAT(run.out, HasSubstr(flag)) << flag;
  }
  EXPECT_THAT(Run({"bench", "--help"}).out, HasSubstr("--queries-offset"));
  EXPECT_THAT(Run({"calibrate", "--help"}).out, HasSubstr("--holdout-fraction"));
  EXPECT_THAT(Run({"synth", "--help"}).out, HasSubstr("--column-scale-spread"));
  EXPECT_THAT(Run({"demo", "--help"}).out, HasSubstr("--queries-count"));
}

TEST_F(CliTest, UsageErrorsExitTwoWithOneLine) {
  ExpectOneLineError(Run(With({"run"}, With(ModelArgs(), {"--bogus", "1", "--out", "x"}))), 2,
                     "--bogus");
  ExpectOneLineError(Run({"run", "--queries", Path("data/queries.npy"), "--out", "x"}), 2,
                     "--weights: required flag is missing");
  ExpectOneLineError(Run(With({"run"}, With(ModelArgs(), {"--k", "abc", "--out", "x"}))), 2,
                     "--k: expected a positive integer, got 'abc'");
  ExpectOneLineError(Run(With({"run"}, With(ModelArgs(), {"--epsilon", "2", "--out", "x"}))), 2,
                     "--epsilon");
  ExpectOneLineError(Run(With({"run"}, With(ModelArgs(), {"--out"}))), 2, "--out: missing value");
  ExpectOneLineError(Run(With({"run"}, With(ModelArgs(), {"--mode", "fast", "--out", "x"}))), 2,
                     "--mode");
  ExpectOneLineError(Run(With({"run"}, With(ModelArgs(), {"--multipliers", "0.1,0.1",
                                                          "--calibration", "c", "--out", "x"}))),
                     2, "mutually exclusive");
  EXPECT_EQ(Run({"no-such-command"}).code, 2);
}

TEST_F(CliTest, BadInputsExitOneWithOneLine) {
  ExpectOneLineError(Run({"run", "--weights", Path("missing.npy"), "--queries",
                          Path("data/queries.npy"), "--out", Path("x.jsonl")}),
                     1, "missing.npy");
  ExpectOneLineError(Run({"run", "--weights", Path("data/weights.npy"), "--queries",
                          Path("other/queries.npy"), "--out", Path("x.jsonl")}),
                     1, "queries.npy: row 0: query: has 16 entries but the model has d = 32");
  ExpectOneLineError(Run(With({"run"}, With(ModelArgs(), {"--k", "601", "--out", "x"}))), 1,
                     "--k: is 601");
  ExpectOneLineError(
      Run(With({"run"}, With(ModelArgs(), {"--calibration", Path("labels.txt"), "--out", "x"}))), 1,
      "labels.txt: not valid JSON");
}

TEST_F(CliTest, BenchPrintsJson) {
  const Output o =
      Run(With({"bench"}, With(ModelArgs(), {"--limit", "20", "--warmup", "2", "--queries-offset",
                                             "10", "--seed", "1"})));
  ASSERT_EQ(o.code, 0) << o.err;
  const Json j = Json::parse(o.out);
  EXPECT_EQ(j["queries"], 20);
  EXPECT_EQ(j["n"], 600);
  EXPECT_EQ(j["d"], 32);
  EXPECT_EQ(j["mode"], "theory");
  for (const char* key :
       {"exact_median_ms", "exact_p99_ms", "adaptive_median_ms", "adaptive_p99_ms", "speedup",
        "mean_sample_fraction", "median_sample_fraction", "pac_failures", "sgemv_median_ms",
        "exact_over_sgemv", "sgemv_read_gb_per_s", "adaptive_read_gb_per_s", "model_memory_bytes"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  const double rate = j["pac_success_rate"].get<double>();
  EXPECT_GE(rate, 0.9);
  EXPECT_LE(rate, 1.0);
  EXPECT_GT(j["sample_cost"].get<double>(), 0);  // the exact fallback is on by default
  EXPECT_EQ(j["weight_bytes"], 600 * 32 * 4);
  // Float32 weights, the sampler's copy in float16: 6 bytes an entry in all.
  EXPECT_EQ(j["sampling_dtype"], "float16");
  EXPECT_EQ(j["model_memory_bytes"], 600 * 32 * 6);
  // The kernels touch at least the bytes of the entries sampled, at 2 bytes an entry.
  EXPECT_GE(j["mean_bytes_touched"].get<double>(),
            j["mean_sample_fraction"].get<double>() * 600 * 32 * 2);
  EXPECT_GE(j["adaptive_touched_gb_per_s"].get<double>(),
            j["adaptive_read_gb_per_s"].get<double>());
  EXPECT_GT(j["peak_rss_over_weight_bytes"].get<double>(), 1.0);
  // The model's share excludes what the process held before loading it.
  EXPECT_GT(j["model_peak_rss_bytes"].get<double>(), 0);
  EXPECT_LT(j["model_peak_rss_bytes"].get<double>(), j["peak_rss_bytes"].get<double>());
  // The loaded model holds both layouts, and no more than its peak.
  EXPECT_GE(j["model_resident_bytes"].get<double>(), j["model_memory_bytes"].get<double>());
  EXPECT_LE(j["model_resident_bytes"].get<double>(), j["model_peak_rss_bytes"].get<double>());
  // Its queries add less than the sampler's per-thread sums for a whole chunk of arms (2 x 8 bins
  // x 8192 arms x 4 bytes), which a 600-row head needs too: the placeholder's run made them
  // resident before the model loaded.
  EXPECT_LT(j["model_peak_rss_bytes"].get<double>() - j["model_resident_bytes"].get<double>(),
            512 * 1024);
  const Output exact_copy =
      Run(With({"bench"},
               With(ModelArgs(), {"--limit", "5", "--seed", "1", "--sampling-dtype", "float32"})));
  ASSERT_EQ(exact_copy.code, 0) << exact_copy.err;
  EXPECT_EQ(Json::parse(exact_copy.out)["model_memory_bytes"], 600 * 32 * 8);
  ExpectOneLineError(Run(With({"bench"}, With(ModelArgs(), {"--queries-offset", "120"}))), 1,
                     "--queries-offset");
  ExpectOneLineError(Run(With({"bench"}, With(ModelArgs(), {"--sampling-dtype", "fp8"}))), 1,
                     "--sampling-dtype: unknown dtype 'fp8'");
  ExpectOneLineError(Run(With({"bench"}, With(ModelArgs(), {"--sample-cost", "-1"}))), 2,
                     "--sample-cost");
}

TEST_F(CliTest, BenchFallsBackToExactWhenSamplingCostsTooMuch) {
  auto bench = [&](const char* cost) {
    const Output o = Run(With({"bench"}, With(ModelArgs(), {"--limit", "10", "--warmup", "0",
                                                           "--seed", "1", "--sample-cost", cost})));
    EXPECT_EQ(o.code, 0) << o.err;
    return Json::parse(o.out);
  };
  const Json never = bench("0"), always = bench("1e9");
  EXPECT_EQ(never["exact_fallbacks"], 0);
  EXPECT_LT(never["mean_sample_fraction"].get<double>(), 1.0);
  EXPECT_GT(never["measured_sample_cost"].get<double>(), 0);
  EXPECT_EQ(always["exact_fallbacks"], 10);
  EXPECT_EQ(always["measured_sample_cost"].get<double>(), 0);  // nothing sampled
  EXPECT_EQ(always["mean_sample_fraction"].get<double>(), 1.0);
  EXPECT_EQ(always["pac_success_rate"].get<double>(), 1.0);
}

TEST_F(CliTest, TheoryModeAnswersSmallEpsilonExactlyUnlessMultipliersAreGiven) {
  for (const bool given : {false, true}) {
    std::vector<std::string> args = With(
        {"run"}, With(ModelArgs(), {"--epsilon", "0.05", "--sample-cost", "0", "--seed", "1"}));
    if (given) args = With(args, {"--multipliers", "1,1"});
    const Output o = Run(With(args, {"--out", "-"}));
    ASSERT_EQ(o.code, 0) << o.err;
    ASSERT_EQ(Lines(o.out).size(), 120u);
    if (given) {
      EXPECT_EQ(o.err, "");
      EXPECT_LT(ExactAnswers(o.out), 120u);
    } else {
      EXPECT_THAT(o.err, HasSubstr("theory mode's guarantee was measured to fail"));
      EXPECT_EQ(ExactAnswers(o.out), 120u);
    }
  }
}

TEST_F(CliTest, CalibrateWritesAFileThatRunAccepts) {
  const std::string file = Path("calibration.json");
  const Output o = Run(
      With({"calibrate"}, With(ModelArgs(), {"--delta", "0.05", "--threads", "2", "--out", file})));
  ASSERT_EQ(o.code, 0) << o.err;
  const Json printed = Json::parse(o.out);
  EXPECT_EQ(printed, Json::parse(ReadFile(file)));
  EXPECT_LE(printed["failure_bound"].get<double>(), 0.05);
  EXPECT_EQ(printed["calibration_queries"], 84);
  EXPECT_EQ(printed["holdout_queries"], 36);
  EXPECT_EQ(printed["n"], 600);
  EXPECT_EQ(printed["d"], 32);
  // One of the default grid's corrections: 0, 0.1, ..., 1.
  const double correction = printed["lognormal_correction"].get<double>();
  EXPECT_GE(correction, 0);
  EXPECT_LE(correction, 1);
  EXPECT_NEAR(correction * 10, std::round(correction * 10), 1e-9);

  // run takes k, epsilon, delta from the file and says nothing when they are not overridden.
  const Output run = Run(With({"run"}, With(ModelArgs(), {"--calibration", file, "--seed", "1",
                                                          "--out", Path("calibrated.jsonl")})));
  ASSERT_EQ(run.code, 0) << run.err;
  EXPECT_EQ(run.err, "");
  EXPECT_EQ(Lines(ReadFile(Path("calibrated.jsonl"))).size(), 120u);

  const Output bench = Run(With(
      {"bench"}, With(ModelArgs(), {"--calibration", file, "--limit", "10", "--warmup", "1"})));
  ASSERT_EQ(bench.code, 0) << bench.err;
  const Json j = Json::parse(bench.out);
  EXPECT_EQ(j["mode"], "calibrated");
  EXPECT_EQ(j["delta"], 0.05);
  EXPECT_EQ(j["multipliers"][0], printed["topk_multiplier"]);

  // The file names the head it was made on, and no other head takes it.
  Json other = printed;
  other["d"] = 33;
  std::ofstream(Path("other.json")) << other.dump();
  ExpectOneLineError(Run(With({"bench"}, With(ModelArgs(), {"--calibration", Path("other.json")}))),
                     1, "other.json: calibrated on a 600 x 33 head, but the model is 600 x 32");

  // A stricter epsilon than calibrated is answered exactly, whatever the sample cost; a looser
  // one is sampled, with a warning either way.
  for (const char* epsilon : {"0.1", "0.5"}) {
    const Output o =
        Run(With({"run"}, With(ModelArgs(), {"--calibration", file, "--epsilon", epsilon,
                                             "--sample-cost", "0", "--seed", "1", "--out", "-"})));
    ASSERT_EQ(o.code, 0) << o.err;
    const bool stricter = std::string(epsilon) == "0.1";
    EXPECT_THAT(o.err, HasSubstr(stricter ? "the adaptive path answers exactly"
                                          : "the calibrated failure bound does not apply"));
    ASSERT_EQ(Lines(o.out).size(), 120u);
    if (stricter) {
      EXPECT_EQ(ExactAnswers(o.out), 120u);
    } else {
      EXPECT_LT(ExactAnswers(o.out), 120u);
    }
  }

  // The correction chosen is recorded, and runs take it from the file: the same samples
  // estimate a smaller partition function.
  const std::string corrected = Path("corrected.json");
  ASSERT_EQ(
      Run(With({"calibrate"},
               With(ModelArgs(), {"--delta", "0.05", "--correction-grid", "0.5", "--topk-grid", "1",
                                  "--normalizer-grid", "1", "--out", corrected})))
          .code,
      0);
  EXPECT_EQ(Json::parse(ReadFile(corrected))["lognormal_correction"], 0.5);
  auto first_answer = [&](std::vector<std::string> args) {
    const Output o =
        Run(With({"run"}, With(ModelArgs(),
                               With(args, {"--sample-cost", "0", "--seed", "1", "--out", "-"}))));
    EXPECT_EQ(o.code, 0) << o.err;
    return Json::parse(Lines(o.out).at(0));
  };
  const Json with = first_answer({"--calibration", corrected});
  const Json without = first_answer({"--multipliers", "1,1", "--delta", "0.05"});
  EXPECT_EQ(with["samples"], without["samples"]);
  EXPECT_LT(with["log_partition"].get<double>(), without["log_partition"].get<double>());
  EXPECT_EQ(first_answer({"--multipliers", "1,1", "--delta", "0.05", "--lognormal-correction",
                          "0.5"})["log_partition"],
            with["log_partition"]);
  ExpectOneLineError(
      Run(With({"run"}, With(ModelArgs(), {"--lognormal-correction", "0.5", "--calibration",
                                           corrected, "--out", "x"}))),
      2, "mutually exclusive");
  ExpectOneLineError(Run(With({"calibrate"}, With(ModelArgs(), {"--correction-grid", "0,1.5",
                                                                "--out", Path("never.json")}))),
                     2, "correction-grid");

  // The warm-up calibrated with is recorded, and runs take it from the file: at normaliser
  // multiplier 20 every arm reads the warm-up's whole budget, 24 of the 32 columns at 0.9 (16,
  // the first level, at the default 0.1).
  const std::string wide = Path("wide.json");
  ASSERT_EQ(
      Run(With({"calibrate"}, With(ModelArgs(), {"--delta", "0.05", "--warmup-fraction", "0.9",
                                                 "--correction-grid", "0", "--topk-grid", "1",
                                                 "--normalizer-grid", "20", "--out", wide})))
          .code,
      0);
  EXPECT_EQ(Json::parse(ReadFile(wide))["warmup_fraction"], 0.9);
  const Json wide_answer = first_answer({"--calibration", wide});
  EXPECT_EQ(first_answer({"--multipliers", "1,20", "--delta", "0.05", "--warmup-fraction",
                          "0.9"})["samples"],
            wide_answer["samples"]);
  EXPECT_LT(first_answer({"--multipliers", "1,20", "--delta", "0.05"})["samples"].get<double>(),
            wide_answer["samples"].get<double>());
  ExpectOneLineError(Run(With({"run"}, With(ModelArgs(), {"--warmup-fraction", "0.5",
                                                          "--calibration", wide, "--out", "x"}))),
                     2, "mutually exclusive");
  ExpectOneLineError(Run(With({"calibrate"}, With(ModelArgs(), {"--warmup-fraction", "0", "--out",
                                                                Path("never.json")}))),
                     2, "--warmup-fraction");

  // --grid-out: a line per evaluated point, in grid order; the chosen one qualified.
  const std::string grid = Path("grid.jsonl");
  const Output landscape = Run(
      With({"calibrate"}, With(ModelArgs(), {"--delta", "0.05", "--topk-grid", "1,0.5",
                                             "--normalizer-grid", "1", "--correction-grid", "0.5,0",
                                             "--out", Path("small.json"), "--grid-out", grid})));
  ASSERT_EQ(landscape.code, 0) << landscape.err;
  const Json chosen = Json::parse(landscape.out);
  const std::vector<std::string> points = Lines(ReadFile(grid));
  ASSERT_EQ(points.size(), 4u);
  int matches = 0;
  for (size_t p = 0; p < points.size(); ++p) {
    const Json j = Json::parse(points[p]);
    EXPECT_EQ(j["topk_multiplier"], p < 2 ? 0.5 : 1.0);
    EXPECT_EQ(j["lognormal_correction"], p % 2 == 0 ? 0.0 : 0.5);
    EXPECT_EQ(j["normalizer_multiplier"], 1.0);
    if (j["topk_multiplier"] == chosen["topk_multiplier"] &&
        j["lognormal_correction"] == chosen["lognormal_correction"]) {
      ++matches;
      EXPECT_TRUE(j["qualifies"].get<bool>());
      EXPECT_EQ(j["failures"], chosen["calibration_failures"]);
      EXPECT_EQ(j["mean_sample_fraction"], chosen["calibration_mean_sample_fraction"]);
    }
  }
  EXPECT_EQ(matches, 1);
  ExpectOneLineError(Run(With({"calibrate"}, With(ModelArgs(), {"--out", Path("never.json"),
                                                                "--grid-out", "/nonexistent/g"}))),
                     1, "/nonexistent/g: cannot open for writing");

  // Too few queries for the bound: the error names the count needed.
  const Output few =
      Run(With({"calibrate"}, With(ModelArgs(), {"--delta", "0.01", "--out", Path("never.json")})));
  EXPECT_EQ(few.code, 1);
  EXPECT_THAT(few.err, HasSubstr("at least 299 calibration queries"));
  EXPECT_FALSE(std::filesystem::exists(Path("never.json")));
}

}  // namespace
