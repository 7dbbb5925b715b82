#include "core/cpus.h"

#include <sched.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"

namespace adasoftmax {
namespace {

// The first line of a file; none when it cannot be read.
std::optional<std::string> FirstLine(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  if (!std::getline(in, line)) return std::nullopt;
  return line;
}

std::optional<double> Number(const std::optional<std::string>& text) {
  double v;
  if (!text || !absl::SimpleAtod(*text, &v)) return std::nullopt;
  return v;
}

// quota / period, when both are positive (an unlimited quota is "max" or -1).
std::optional<double> Ratio(std::optional<double> quota, std::optional<double> period) {
  if (!quota || !period || !(*quota > 0) || !(*period > 0)) return std::nullopt;
  const double cpus = *quota / *period;
  return std::isfinite(cpus) ? std::optional(cpus) : std::nullopt;
}

// One cgroup directory's limit. v2: cpu.max holds "<quota|max> <period>".
std::optional<double> V2Limit(const std::string& dir) {
  const std::optional<std::string> line = FirstLine(dir + "/cpu.max");
  if (!line) return std::nullopt;
  const std::vector<std::string> parts = absl::StrSplit(*line, ' ', absl::SkipEmpty());
  if (parts.size() != 2) return std::nullopt;
  return Ratio(Number(parts[0]), Number(parts[1]));
}
std::optional<double> V1Limit(const std::string& dir) {
  return Ratio(Number(FirstLine(dir + "/cpu.cfs_quota_us")),
               Number(FirstLine(dir + "/cpu.cfs_period_us")));
}

// Lowers `limit` to `found` when that is tighter (or the first found).
void Tighten(std::optional<double>& limit, std::optional<double> found) {
  if (found) limit = std::min(limit.value_or(*found), *found);
}

// The smallest limit of `mount` + `path` and its ancestors up to `mount` itself. Inside a
// container the cgroup's own directory is usually mounted at `mount`, so that `path` (the
// host's view) does not exist below it, and `mount`'s own files hold the limit.
template <typename LimitOf>
std::optional<double> Tightest(const std::string& mount, std::string path, LimitOf limit_of) {
  std::optional<double> tightest;
  while (true) {
    Tighten(tightest, limit_of(mount + path));
    if (path.empty() || path == "/") return tightest;
    path.resize(path.rfind('/'));
  }
}

}  // namespace

std::optional<double> CgroupCpuLimit(const std::string& root) {
  // Lines "<id>:<controllers>:<path>": v2's has no controllers, v1's cpu controller lists "cpu".
  std::ifstream in(root + "/proc/self/cgroup");
  std::optional<double> limit;
  for (std::string line; std::getline(in, line);) {
    const std::vector<std::string> fields = absl::StrSplit(line, absl::MaxSplits(':', 2));
    if (fields.size() != 3) continue;
    if (fields[1].empty()) {
      Tighten(limit, Tightest(root + "/sys/fs/cgroup", fields[2], V2Limit));
      continue;
    }
    const std::vector<std::string> controllers = absl::StrSplit(fields[1], ',');
    if (std::find(controllers.begin(), controllers.end(), "cpu") == controllers.end()) continue;
    for (const char* mount : {"/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"}) {
      Tighten(limit, Tightest(root + mount, fields[2], V1Limit));
    }
  }
  return limit;
}

size_t UsableCpus() {
  cpu_set_t set;
  size_t cpus = sched_getaffinity(0, sizeof(set), &set) == 0
                    ? static_cast<size_t>(CPU_COUNT(&set))
                    : std::thread::hardware_concurrency();  // more CPUs than a cpu_set_t holds
  if (const std::optional<double> limit = CgroupCpuLimit()) {
    cpus = std::min(cpus, static_cast<size_t>(std::floor(*limit)));
  }
  return std::max<size_t>(cpus, 1);
}

}  // namespace adasoftmax
