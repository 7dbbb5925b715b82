#ifndef ADASOFTMAX_TESTS_E2E_SUBPROCESS_H_
#define ADASOFTMAX_TESTS_E2E_SUBPROCESS_H_

// Child processes for end-to-end tests: run a command to completion capturing its output, or
// keep a server running while its stderr is collected line by line.

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

extern char** environ;

namespace adasoftmax::testing {

// Where the project's binaries are: $ADASOFTMAX_BIN_DIR (set by ctest), else build/bin.
inline std::string BinDir() {
  const char* dir = std::getenv("ADASOFTMAX_BIN_DIR");
  return dir != nullptr ? dir : "build/bin";
}

namespace internal {

inline std::vector<char*> Argv(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  return argv;
}

// Spawns `args` (PATH is searched) with stdout and stderr going to the given descriptors
// (-1: inherit). Returns the pid, or -1.
inline pid_t Spawn(const std::vector<std::string>& args, int out_fd, int err_fd) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  if (out_fd >= 0) posix_spawn_file_actions_adddup2(&actions, out_fd, 1);
  if (err_fd >= 0) posix_spawn_file_actions_adddup2(&actions, err_fd, 2);
  pid_t pid = -1;
  std::vector<char*> argv = Argv(args);
  if (posix_spawnp(&pid, argv[0], &actions, nullptr, argv.data(), environ) != 0) pid = -1;
  posix_spawn_file_actions_destroy(&actions);
  return pid;
}

// The exit code, or 128 + the signal that ended the process.
inline int ExitCode(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

}  // namespace internal

struct CommandResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

// Runs `args` to completion (or until `timeout`, then SIGKILL) and returns its output.
inline CommandResult RunCommand(const std::vector<std::string>& args,
                                absl::Duration timeout = absl::Seconds(60)) {
  CommandResult result;
  int out[2], err[2];
  if (pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0) return result;
  const pid_t pid = internal::Spawn(args, out[1], err[1]);
  close(out[1]);
  close(err[1]);
  if (pid < 0) {
    close(out[0]);
    close(err[0]);
    result.err = "cannot spawn " + args[0];
    return result;
  }
  const absl::Time end = absl::Now() + timeout;
  pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
  int open_fds = 2;
  char buffer[4096];
  while (open_fds > 0) {
    const int wait_ms = static_cast<int>(absl::ToInt64Milliseconds(end - absl::Now()));
    if (wait_ms <= 0) {
      kill(pid, SIGKILL);
      break;
    }
    if (poll(fds, 2, wait_ms) < 0) break;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      const ssize_t n = read(fds[i].fd, buffer, sizeof(buffer));
      if (n <= 0) {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      } else {
        (i == 0 ? result.out : result.err).append(buffer, static_cast<size_t>(n));
      }
    }
  }
  for (pollfd& f : fds) {
    if (f.fd >= 0) close(f.fd);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  result.exit_code = internal::ExitCode(status);
  return result;
}

// A long-running child whose stderr is collected by a reader thread (stdout is inherited).
// The destructor kills (SIGKILL) and reaps it if it is still running. Thread-safe.
class ChildProcess {
 public:
  static std::unique_ptr<ChildProcess> Start(const std::vector<std::string>& args) {
    int err[2];
    if (pipe2(err, O_CLOEXEC) != 0) return nullptr;
    const pid_t pid = internal::Spawn(args, -1, err[1]);
    close(err[1]);
    if (pid < 0) {
      close(err[0]);
      return nullptr;
    }
    return std::unique_ptr<ChildProcess>(new ChildProcess(pid, err[0]));
  }

  ~ChildProcess() {
    if (!exited_) {
      kill(pid_, SIGKILL);
      Wait();
    }
    reader_.join();
    close(err_fd_);
  }

  pid_t pid() const { return pid_; }

  // Waits until stderr holds a line containing `needle` and returns that line; nullopt when
  // the process closes stderr or `timeout` passes first.
  std::optional<std::string> WaitForLine(const std::string& needle, absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    std::optional<std::string> found;
    auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      for (const std::string& line : lines_) {
        if (absl::StrContains(line, needle)) {
          found = line;
          return true;
        }
      }
      return eof_;
    };
    mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
    return found;
  }

  std::string Stderr() const {
    absl::MutexLock lock(&mu_);
    std::string all;
    for (const std::string& line : lines_) all += line + "\n";
    return all;
  }

  void Signal(int sig) { kill(pid_, sig); }

  // Waits for the process to end; returns its exit code (128 + signal when killed).
  int Wait() {
    if (!exited_) {
      int status = 0;
      waitpid(pid_, &status, 0);
      exit_code_ = internal::ExitCode(status);
      exited_ = true;
    }
    return exit_code_;
  }

 private:
  ChildProcess(pid_t pid, int err_fd) : pid_(pid), err_fd_(err_fd) {
    reader_ = std::thread([this] { ReadLoop(); });
  }

  void ReadLoop() {
    std::string partial;
    char buffer[4096];
    while (true) {
      const ssize_t n = read(err_fd_, buffer, sizeof(buffer));
      if (n <= 0) break;
      partial.append(buffer, static_cast<size_t>(n));
      size_t newline;
      while ((newline = partial.find('\n')) != std::string::npos) {
        absl::MutexLock lock(&mu_);
        lines_.push_back(partial.substr(0, newline));
        partial.erase(0, newline + 1);
      }
    }
    absl::MutexLock lock(&mu_);
    if (!partial.empty()) lines_.push_back(partial);
    eof_ = true;
  }

  const pid_t pid_;
  const int err_fd_;
  std::thread reader_;
  bool exited_ = false;  // used by the owning thread only
  int exit_code_ = -1;
  mutable absl::Mutex mu_;
  std::vector<std::string> lines_ ABSL_GUARDED_BY(mu_);
  bool eof_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace adasoftmax::testing

#endif  // ADASOFTMAX_TESTS_E2E_SUBPROCESS_H_
