#ifndef ADASOFTMAX_TESTS_E2E_SERVER_PROCESS_H_
#define ADASOFTMAX_TESTS_E2E_SERVER_PROCESS_H_

// The real adasoftmax-server binary on loopback ports chosen by the kernel, and helpers to
// read its Prometheus endpoint.

#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gtest/gtest.h"
#include "tests/e2e/subprocess.h"

namespace adasoftmax::testing {

struct ServerProcess {
  std::unique_ptr<ChildProcess> process;
  std::string address;          // host:port of gRPC
  std::string metrics_address;  // host:port of /metrics
};

// Text after `prefix` in the first stderr line holding it, up to the next space.
inline std::string FieldAfter(const std::string& line, const std::string& prefix) {
  const size_t at = line.find(prefix);
  if (at == std::string::npos) return "";
  const std::string rest = line.substr(at + prefix.size());
  return rest.substr(0, rest.find(' '));
}

// Starts adasoftmax-server on `repository` with 127.0.0.1:0 for both endpoints plus `flags`.
// When `wait_until_serving`, waits for "serving on" (failing the test if it does not come).
inline ServerProcess StartServerProcess(const std::string& repository,
                                        const std::string& cache_dir,
                                        const std::vector<std::string>& flags = {},
                                        bool wait_until_serving = true) {
  std::vector<std::string> args = {BinDir() + "/adasoftmax-server",
                                   "--model_repository=" + repository,
                                   "--address=127.0.0.1:0",
                                   "--metrics_address=127.0.0.1:0",
                                   "--cache_dir=" + cache_dir};
  args.insert(args.end(), flags.begin(), flags.end());
  ServerProcess server;
  server.process = ChildProcess::Start(args);
  EXPECT_NE(server.process, nullptr) << "cannot start " << args[0];
  if (server.process == nullptr) return server;
  const std::optional<std::string> listening =
      server.process->WaitForLine("listening on ", absl::Seconds(60));
  EXPECT_TRUE(listening.has_value()) << server.process->Stderr();
  if (!listening) return server;
  server.address = FieldAfter(*listening, "listening on ");
  const std::optional<std::string> metrics =
      server.process->WaitForLine("metrics on http://", absl::Seconds(10));
  if (metrics) {
    const std::string url = FieldAfter(*metrics, "metrics on http://");
    server.metrics_address = std::string(absl::StripSuffix(url, "/metrics"));
  }
  if (wait_until_serving) {
    const std::optional<std::string> serving =
        server.process->WaitForLine("serving on ", absl::Seconds(120));
    EXPECT_TRUE(serving.has_value()) << server.process->Stderr();
    if (serving) EXPECT_EQ(FieldAfter(*serving, "serving on "), server.address);
  }
  return server;
}

// GET http://address/path with curl; the body, or "" on failure.
inline std::string HttpGet(const std::string& url) {
  CommandResult r = RunCommand({"curl", "-sSf", "--max-time", "10", url});
  EXPECT_EQ(r.exit_code, 0) << url << ": " << r.err;
  return r.out;
}

// One sample of the Prometheus text format: name{labels} value.
struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

// Parses the text exposition format (version 0.0.4); fails the test on a malformed line.
inline std::vector<Sample> ParseMetrics(const std::string& text) {
  static const std::regex kLine(R"(^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)( \d+)?$)");
  static const std::regex kLabel(R"re(([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?)re");
  static const std::regex kComment(R"(^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .*$)");
  std::vector<Sample> samples;
  for (absl::string_view view : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    const std::string line(view);
    if (line[0] == '#') {
      EXPECT_TRUE(std::regex_match(line, kComment)) << "bad comment line: " << line;
      continue;
    }
    std::smatch m;
    if (!std::regex_match(line, m, kLine)) {
      ADD_FAILURE() << "bad sample line: " << line;
      continue;
    }
    Sample s;
    s.name = m[1];
    const std::string labels = m[3];
    for (auto it = std::sregex_iterator(labels.begin(), labels.end(), kLabel);
         it != std::sregex_iterator(); ++it) {
      s.labels[(*it)[1]] = (*it)[2];
    }
    const std::string value = m[4];
    if (value == "+Inf") {
      s.value = INFINITY;
    } else if (value == "-Inf") {
      s.value = -INFINITY;
    } else if (value == "NaN") {
      s.value = NAN;
    } else {
      EXPECT_TRUE(absl::SimpleAtod(value, &s.value)) << line;
    }
    samples.push_back(std::move(s));
  }
  return samples;
}

// The value of the sample named `name` whose labels include `labels`; nullopt when absent.
inline std::optional<double> FindSample(const std::vector<Sample>& samples,
                                        const std::string& name,
                                        const std::map<std::string, std::string>& labels = {}) {
  for (const Sample& s : samples) {
    if (s.name != name) continue;
    bool match = true;
    for (const auto& [k, v] : labels) {
      auto it = s.labels.find(k);
      match = match && it != s.labels.end() && it->second == v;
    }
    if (match) return s.value;
  }
  return std::nullopt;
}

// Scrapes `metrics_address` until `name{labels}` reaches at least `at_least` (or `timeout`).
inline double WaitForMetric(const std::string& metrics_address, const std::string& name,
                            const std::map<std::string, std::string>& labels, double at_least,
                            absl::Duration timeout = absl::Seconds(30)) {
  double value = -1;
  for (const absl::Time end = absl::Now() + timeout; absl::Now() < end;) {
    value = FindSample(ParseMetrics(HttpGet("http://" + metrics_address + "/metrics")), name,
                       labels)
                .value_or(-1);
    if (value >= at_least) break;
    absl::SleepFor(absl::Milliseconds(50));  // polling interval of an external observer
  }
  return value;
}

}  // namespace adasoftmax::testing

#endif  // ADASOFTMAX_TESTS_E2E_SERVER_PROCESS_H_
