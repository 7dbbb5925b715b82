#include "core/resources.h"

#include <sched.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/temp_dir.h"
#include "tests/test_cgroup.h"

namespace adasoftmax {
namespace {

using ::adasoftmax::testing::TempDir;
using ::adasoftmax::testing::TestCgroup;

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

TEST(CgroupMemoryLimitTest, TakesTheTightestLimitOfV2AndV1) {
  TempDir root;
  EXPECT_EQ(CgroupMemoryLimit(root.path()), std::nullopt);  // no /proc/self/cgroup
  Put(root, "/proc/self/cgroup", "0::/kubepods/pod1/app");
  Put(root, "/sys/fs/cgroup/kubepods/pod1/app/memory.max", "max");
  Put(root, "/sys/fs/cgroup/kubepods/pod1/memory.max", "1073741824");
  Put(root, "/sys/fs/cgroup/kubepods/memory.max", "4294967296");
  EXPECT_EQ(CgroupMemoryLimit(root.path()), size_t{1} << 30);
  Put(root, "/sys/fs/cgroup/kubepods/pod1/memory.max", "max");
  Put(root, "/sys/fs/cgroup/kubepods/memory.max", "garbage");
  EXPECT_EQ(CgroupMemoryLimit(root.path()), std::nullopt);

  // v1: an unlimited cgroup reads about 2^63; the container's own directory at the mount.
  Put(root, "/proc/self/cgroup", "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/");
  Put(root, "/sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712");
  EXPECT_EQ(CgroupMemoryLimit(root.path()), std::nullopt);
  Put(root, "/sys/fs/cgroup/memory/memory.limit_in_bytes", "536870912");
  EXPECT_EQ(CgroupMemoryLimit(root.path()), size_t{512} << 20);
}

TEST(ResidentAnonymousBytesTest, GrowsWithTouchedHeapMemory) {
  const size_t before = ResidentAnonymousBytes();
  EXPECT_GT(before, 0u);
  constexpr size_t kBytes = 64 << 20;
  std::vector<char> held(kBytes, 1);  // written, so resident
  EXPECT_GE(ResidentAnonymousBytes(), before + kBytes * 9 / 10);
  EXPECT_EQ(held[kBytes / 2], 1);
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

// A real cgroup with a quota of one CPU, when this process may make one: the process moved
// into it sees 1 usable CPU.
TEST(CgroupTest, AQuotaOfOneCpuLeavesOneUsable) {
  std::unique_ptr<TestCgroup> cgroup = TestCgroup::Make("cpu");
  if (cgroup == nullptr) GTEST_SKIP() << "needs root and a writable cgroup v1 cpu hierarchy";
  cgroup->Set("cpu.cfs_period_us", 100000);
  cgroup->Set("cpu.cfs_quota_us", 100000);
  cgroup->Enter();
  EXPECT_EQ(CgroupCpuLimit(), 1.0);
  EXPECT_EQ(UsableCpus(), 1u);
}

// The same for memory: the process moved into a cgroup limited to 512 MiB reads that limit.
TEST(CgroupTest, AMemoryLimitIsRead) {
  std::unique_ptr<TestCgroup> cgroup = TestCgroup::Make("memory");
  if (cgroup == nullptr) GTEST_SKIP() << "needs root and a writable cgroup v1 memory hierarchy";
  cgroup->Set("memory.limit_in_bytes", 512 << 20);
  cgroup->Enter();
  EXPECT_EQ(CgroupMemoryLimit(), size_t{512} << 20);
}

}  // namespace
}  // namespace adasoftmax
