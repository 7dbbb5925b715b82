#ifndef ADASOFTMAX_CORE_CPUS_H_
#define ADASOFTMAX_CORE_CPUS_H_

// How many CPUs the process may keep busy. std::thread::hardware_concurrency() counts every
// online CPU of the machine: a container limited to 2 CPUs on a 64-core node sees 64, and 64
// threads there only get the process throttled.

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

}  // namespace adasoftmax

#endif  // ADASOFTMAX_CORE_CPUS_H_
