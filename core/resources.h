#ifndef ADASOFTMAX_CORE_RESOURCES_H_
#define ADASOFTMAX_CORE_RESOURCES_H_

// How many CPUs and how much memory the process may use. std::thread::hardware_concurrency()
// counts every online CPU of the machine: a container limited to 2 CPUs on a 64-core node sees
// 64, and 64 threads there only get the process throttled. Past its cgroup's memory limit, the
// kernel's OOM killer ends the process, and every request it holds with it.

#include <cstddef>
#include <optional>
#include <string>

namespace adasoftmax {

// The CPU limit of the process's cgroups, in CPUs: the smallest quota / period of its cgroup
// and the cgroup's ancestors (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us` and
// `cpu.cfs_period_us`; what `docker run --cpus` and a Kubernetes CPU limit set). None when no
// quota applies or the files cannot be read. `root` prefixes the paths read (/proc/self/cgroup,
// /sys/fs/cgroup/...): "" for the real ones.
std::optional<double> CgroupCpuLimit(const std::string& root = "");

// The CPUs of the process's affinity mask (taskset, a container's cpuset), capped by
// CgroupCpuLimit() rounded down (a thread past the quota runs only by throttling the others);
// at least 1.
size_t UsableCpus();

// The memory limit of the process's cgroups, in bytes: the smallest of its cgroup and the
// cgroup's ancestors (cgroup v2 `memory.max`, v1 `memory.limit_in_bytes`; what `docker run
// --memory` and a Kubernetes memory limit set). None when no limit applies or the files cannot
// be read. `root`: as CgroupCpuLimit's.
std::optional<size_t> CgroupMemoryLimit(const std::string& root = "");

// The process's resident anonymous memory (RssAnon of /proc/self/status), in bytes: what it
// holds that the kernel cannot reclaim by dropping file pages. 0 when it cannot be read.
size_t ResidentAnonymousBytes();

}  // namespace adasoftmax

#endif  // ADASOFTMAX_CORE_RESOURCES_H_
