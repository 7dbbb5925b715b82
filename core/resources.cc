#include "core/resources.h"

#include <sched.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <initializer_list>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
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

// Memory: v2's memory.max holds bytes or "max"; v1's memory.limit_in_bytes holds bytes, about
// 2^63 when unlimited.
std::optional<double> Bytes(const std::optional<std::string>& text) {
  const std::optional<double> bytes = Number(text);
  if (!bytes || !(*bytes > 0) || *bytes >= 0x1p62) return std::nullopt;
  return bytes;
}
std::optional<double> V2MemoryLimit(const std::string& dir) {
  return Bytes(FirstLine(dir + "/memory.max"));
}
std::optional<double> V1MemoryLimit(const std::string& dir) {
  return Bytes(FirstLine(dir + "/memory.limit_in_bytes"));
}

// Lowers `limit` to `found` when that is tighter (or the first found).
void Tighten(std::optional<double>& limit, std::optional<double> found) {
  if (found) limit = std::min(limit.value_or(*found), *found);
}

// One cgroup directory's limit, such as V2Limit.
using LimitOf = std::optional<double> (*)(const std::string& dir);

// The smallest limit of `mount` + `path` and its ancestors up to `mount` itself. Inside a
// container the cgroup's own directory is usually mounted at `mount`, so that `path` (the
// host's view) does not exist below it, and `mount`'s own files hold the limit.
std::optional<double> Tightest(const std::string& mount, std::string path, LimitOf limit_of) {
  std::optional<double> tightest;
  while (true) {
    Tighten(tightest, limit_of(mount + path));
    if (path.empty() || path == "/") return tightest;
    path.resize(path.rfind('/'));
  }
}

// The tightest limit of the process's cgroups: limit_of(directory) of its v2 cgroup, and of its
// v1 cgroup holding `controller` under each of `v1_mounts`.
std::optional<double> CgroupLimit(const std::string& root, const std::string& controller,
                                  std::initializer_list<const char*> v1_mounts, LimitOf v2_limit_of,
                                  LimitOf v1_limit_of) {
  // Lines "<id>:<controllers>:<path>": v2's has no controllers.
  std::ifstream in(root + "/proc/self/cgroup");
  std::optional<double> limit;
  for (std::string line; std::getline(in, line);) {
    const std::vector<std::string> fields = absl::StrSplit(line, absl::MaxSplits(':', 2));
    if (fields.size() != 3) continue;
    if (fields[1].empty()) {
      Tighten(limit, Tightest(root + "/sys/fs/cgroup", fields[2], v2_limit_of));
      continue;
    }
    const std::vector<std::string> controllers = absl::StrSplit(fields[1], ',');
    if (std::find(controllers.begin(), controllers.end(), controller) == controllers.end()) {
      continue;
    }
    for (const char* mount : v1_mounts) {
      Tighten(limit, Tightest(root + mount, fields[2], v1_limit_of));
    }
  }
  return limit;
}

}  // namespace

std::optional<double> CgroupCpuLimit(const std::string& root) {
  return CgroupLimit(root, "cpu", {"/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"}, V2Limit,
                     V1Limit);
}

std::optional<size_t> CgroupMemoryLimit(const std::string& root) {
  const std::optional<double> bytes =
      CgroupLimit(root, "memory", {"/sys/fs/cgroup/memory"}, V2MemoryLimit, V1MemoryLimit);
  if (!bytes) return std::nullopt;
  return static_cast<size_t>(*bytes);
}

size_t ResidentAnonymousBytes() {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);) {
    // "RssAnon:	  123456 kB"
    if (!absl::StartsWith(line, "RssAnon:")) continue;
    const std::vector<std::string> fields =
        absl::StrSplit(line.substr(8), absl::ByAnyChar(" \t"), absl::SkipEmpty());
    size_t kib = 0;
    if (!fields.empty() && absl::SimpleAtoi(fields[0], &kib)) return kib * 1024;
  }
  return 0;
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
