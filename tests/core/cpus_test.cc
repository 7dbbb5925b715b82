#include "core/cpus.h"

#include <sched.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/temp_dir.h"

namespace adasoftmax {
namespace {

using ::adasoftmax::testing::TempDir;

// Writes `text` to root + path, making its directories.
void Put(const TempDir& root, const std::string& path, const std::string& text) {
  const std::filesystem::path file = root.path() + path;
  std::filesystem::create_directories(file.parent_path());
  std::ofstream(file) << text << "\n";
}

TEST(CgroupCpuLimitTest, CgroupV2TakesTheTightestQuotaOfTheCgroupAndItsAncestors) {
  TempDir root;
  Put(root, "/proc/self/cgroup", "0::/kubepods/pod1/app");
  Put(root, "/sys/fs/cgroup/kubepods/pod1/app/cpu.max", "max 100000");
  Put(root, "/sys/fs/cgroup/kubepods/pod1/cpu.max", "250000 100000");
  Put(root, "/sys/fs/cgroup/kubepods/cpu.max", "800000 100000");
  EXPECT_EQ(CgroupCpuLimit(root.path()), 2.5);
  Put(root, "/sys/fs/cgroup/kubepods/pod1/cpu.max", "max 100000");
  EXPECT_EQ(CgroupCpuLimit(root.path()), 8.0);
  Put(root, "/sys/fs/cgroup/kubepods/cpu.max", "max 100000");
  EXPECT_EQ(CgroupCpuLimit(root.path()), std::nullopt);
}

// Inside a container the cgroup's own directory is mounted where the host's path does not
// exist: the mount's own files hold the limit.
TEST(CgroupCpuLimitTest, CgroupV1ReadsTheCpuControllersQuotaAndPeriod) {
  TempDir root;
  Put(root, "/proc/self/cgroup", "5:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/");
  Put(root, "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "150000");
  Put(root, "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000");
  EXPECT_EQ(CgroupCpuLimit(root.path()), 1.5);
  Put(root, "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1");
  EXPECT_EQ(CgroupCpuLimit(root.path()), std::nullopt);
  // With both hierarchies (a hybrid host), the tighter limit.
  Put(root, "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "300000");
  Put(root, "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000");
  Put(root, "/sys/fs/cgroup/cpu.max", "100000 100000");
  EXPECT_EQ(CgroupCpuLimit(root.path()), 1.0);
}

TEST(CgroupCpuLimitTest, MissingOrMalformedFilesSetNoLimit) {
  TempDir root;
  EXPECT_EQ(CgroupCpuLimit(root.path()), std::nullopt);  // no /proc/self/cgroup
  Put(root, "/proc/self/cgroup", "garbage\n1:cpu:/a");
  EXPECT_EQ(CgroupCpuLimit(root.path()), std::nullopt);  // no cgroup files
  for (const char* bad : {"", "100000", "abc 100000", "100000 0", "-5 100000", "nan 1"}) {
    Put(root, "/proc/self/cgroup", "0::/");
    Put(root, "/sys/fs/cgroup/cpu.max", bad);
    EXPECT_EQ(CgroupCpuLimit(root.path()), std::nullopt) << bad;
  }
}

// The process's affinity mask, set for the test and restored.
class AffinityTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(sched_getaffinity(0, sizeof(saved_), &saved_), 0); }
  void TearDown() override { sched_setaffinity(0, sizeof(saved_), &saved_); }
  cpu_set_t saved_;
};

TEST_F(AffinityTest, UsableCpusFollowTheAffinityMask) {
  const size_t all = static_cast<size_t>(CPU_COUNT(&saved_));
  const std::optional<double> limit = CgroupCpuLimit();
  EXPECT_EQ(UsableCpus(), std::max<size_t>(1, limit ? std::min<size_t>(all, *limit) : all));
  cpu_set_t one;
  CPU_ZERO(&one);
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (CPU_ISSET(cpu, &saved_)) {
      CPU_SET(cpu, &one);
      break;
    }
  }
  ASSERT_EQ(sched_setaffinity(0, sizeof(one), &one), 0);
  EXPECT_EQ(UsableCpus(), 1u);
}

// A real cgroup with a quota of one CPU, when this process may make one (root, a writable
// cgroup v1 cpu hierarchy, as on the CI machine): the process moved into it sees 1 usable CPU.
TEST(CgroupTest, AQuotaOfOneCpuLeavesOneUsable) {
  const std::string parent = "/sys/fs/cgroup/cpu";
  std::ifstream self("/proc/self/cgroup");
  std::string home;  // this process's cgroup in that hierarchy
  for (std::string line; std::getline(self, line);) {
    const size_t at = line.find(":cpu:");
    if (at != std::string::npos) home = line.substr(at + 5);
  }
  const std::string dir =
      absl::StrCat(parent, home == "/" ? "" : home, "/adasoftmax-test-", getpid());
  std::error_code ec;
  if (home.empty() || geteuid() != 0 || !std::filesystem::create_directory(dir, ec)) {
    GTEST_SKIP() << "needs root and a writable cgroup v1 cpu hierarchy at " << parent;
  }
  const std::string back = absl::StrCat(parent, home == "/" ? "" : home, "/cgroup.procs");
  std::ofstream(dir + "/cpu.cfs_period_us") << 100000;
  std::ofstream(dir + "/cpu.cfs_quota_us") << 100000;
  std::ofstream(dir + "/cgroup.procs") << getpid();
  EXPECT_EQ(CgroupCpuLimit(), 1.0);
  EXPECT_EQ(UsableCpus(), 1u);
  std::ofstream(back) << getpid();
  std::filesystem::remove(dir, ec);
  EXPECT_FALSE(ec) << ec.message();
}

}  // namespace
}  // namespace adasoftmax
