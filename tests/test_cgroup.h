#ifndef ADASOFTMAX_TESTS_TEST_CGROUP_H_
#define ADASOFTMAX_TESTS_TEST_CGROUP_H_

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace adasoftmax::testing {

// A child of this process's cgroup in a cgroup v1 hierarchy, made for a test: the process
// moves in and out of it, and it is removed on destruction (the process moved back first).
class TestCgroup {
 public:
  // Makes one under /sys/fs/cgroup/<controller> ("cpu", "memory"); nullptr when this process
  // may not (it needs root and a writable v1 hierarchy, as on the CI machine).
  static std::unique_ptr<TestCgroup> Make(const std::string& controller) {
    const std::string parent = "/sys/fs/cgroup/" + controller;
    std::ifstream self("/proc/self/cgroup");
    std::string home;  // this process's cgroup in that hierarchy
    const std::string key = ":" + controller + ":";
    for (std::string line; std::getline(self, line);) {
      const size_t at = line.find(key);
      if (at != std::string::npos) home = line.substr(at + key.size());
    }
    if (home.empty() || geteuid() != 0) return nullptr;
    const std::string base = parent + (home == "/" ? "" : home);
    const std::string dir = absl::StrCat(base, "/adasoftmax-test-", getpid());
    std::error_code ec;
    if (!std::filesystem::create_directory(dir, ec)) return nullptr;
    return std::unique_ptr<TestCgroup>(new TestCgroup(base, dir));
  }
  ~TestCgroup() {
    Leave();
    std::error_code ec;
    std::filesystem::remove(dir_, ec);
    EXPECT_FALSE(ec) << dir_ << ": " << ec.message();
  }

  // Writes one of its control files, e.g. Set("memory.limit_in_bytes", 64 << 20).
  template <typename T>
  void Set(const std::string& file, const T& value) {
    std::ofstream(dir_ + "/" + file) << value;
  }
  void Enter() { std::ofstream(dir_ + "/cgroup.procs") << getpid(); }
  void Leave() { std::ofstream(base_ + "/cgroup.procs") << getpid(); }

 private:
  TestCgroup(std::string base, std::string dir) : base_(std::move(base)), dir_(std::move(dir)) {}
  const std::string base_;  // this process's own cgroup
  const std::string dir_;
};

}  // namespace adasoftmax::testing

#endif  // ADASOFTMAX_TESTS_TEST_CGROUP_H_
