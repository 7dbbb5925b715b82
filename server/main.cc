// adasoftmax-server: serves top-k softmax over gRPC for the models of a model repository.
//
// Every flag falls back to an environment variable ADASOFTMAX_<FLAG NAME IN CAPITALS> when it
// is not given on the command line (e.g. ADASOFTMAX_ADDRESS for --address). SIGTERM or SIGINT
// drains in-flight calls (up to --shutdown_grace_s) and exits 0. SIGHUP, and every
// --repository_poll_s, reloads the models that changed in the repository.

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "core/blas_kernels.h"
#include "core/resources.h"
#include "core/version.h"
#include "core/worker_pool.h"
#include "server/server.h"

ABSL_FLAG(std::string, model_repository, "",
          "model repository: one folder per model holding a model.pbtxt. Default: the shipped "
          "repository (deploy/models next to the build, or share/adasoftmax/models when "
          "installed)");
ABSL_FLAG(std::string, address, "127.0.0.1:50051", "gRPC address (port 0: pick a free port)");
ABSL_FLAG(std::string, metrics_address, "127.0.0.1:9464",
          "address of the Prometheus /metrics endpoint (port 0: pick a free port; empty: none)");
ABSL_FLAG(int, max_batch_size, 32, "a batch runs once this many requests wait (1: no batching)");
ABSL_FLAG(int64_t, batch_timeout_us, 500,
          "... or once the oldest request has waited this many microseconds");
ABSL_FLAG(int, max_queue_size, 1024,
          "requests waiting per model beyond which new ones get RESOURCE_EXHAUSTED");
ABSL_FLAG(int, threads, 0,
          "the threads each batch splits its work over, and by default the batch worker threads "
          "(0: one per CPU the process may use: its affinity, capped by its cgroup's CPU quota)");
ABSL_FLAG(int, batch_threads, 0,
          "batch worker threads: batches (of any models) running at once (0: --threads)");
ABSL_FLAG(double, repository_poll_s, 0,
          "seconds between checks of the model repository for new, changed and removed models, "
          "which are then loaded or unloaded while serving (0: only on SIGHUP)");
ABSL_FLAG(int64_t, memory_limit_mb, -1,
          "memory the server may hold, in MiB: a model whose loading would take more than the "
          "process leaves of it is not loaded (-1: its cgroup's memory limit, if any; 0: no "
          "bound)");
ABSL_FLAG(bool, exit_on_model_error, true,
          "exit when a model of the repository does not load at start-up; false: serve the "
          "others and list it as unavailable, as after a reload (exit when none loads)");
ABSL_FLAG(double, shutdown_grace_s, 10,
          "on SIGTERM, seconds in-flight calls get to finish before they are cancelled");
ABSL_FLAG(double, audit_fraction, 0.01,
          "fraction of adaptive requests re-checked against the exact answer off the critical "
          "path (per-model configs may override)");
ABSL_FLAG(std::string, cache_dir, "",
          "where synthetic models are generated and cached. Default: $XDG_CACHE_HOME/adasoftmax "
          "or $HOME/.cache/adasoftmax");
ABSL_FLAG(int, max_message_bytes, 4 << 20,
          "largest request accepted; larger ones get RESOURCE_EXHAUSTED");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate chain: serve TLS only");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA bundle: require and verify client certificates (mTLS)");

namespace {

namespace fs = std::filesystem;

// SIGTERM, SIGINT and SIGHUP write their number here (a handler may only do async-signal-safe
// things); main reads it once serving.
int signal_pipe[2] = {-1, -1};

void OnSignal(int signal) {
  const char number = static_cast<char>(signal);
  [[maybe_unused]] const ssize_t written = write(signal_pipe[1], &number, 1);
}

void Log(const std::string& line) { std::fprintf(stderr, "adasoftmax-server: %s\n", line.c_str()); }

// Sets every flag that the command line does not give from ADASOFTMAX_<NAME>. Must run before
// absl::ParseCommandLine, which then overrides these values.
bool ApplyEnvironment() {
  constexpr const char* kFlags[] = {"model_repository",  "address",          "metrics_address",
                                    "max_batch_size",    "batch_timeout_us", "max_queue_size",
                                    "threads",           "batch_threads",    "shutdown_grace_s",
                                    "audit_fraction",    "cache_dir",        "max_message_bytes",
                                    "tls_cert",          "tls_key",          "tls_client_ca",
                                    "repository_poll_s", "memory_limit_mb",  "exit_on_model_error"};
  for (const char* name : kFlags) {
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    const std::string var = absl::StrCat("ADASOFTMAX_", absl::AsciiStrToUpper(name));
    const char* value = std::getenv(var.c_str());
    if (value == nullptr) continue;
    std::string error;
    if (!flag->ParseFrom(value, &error)) {
      Log(absl::StrCat(var, ": ", error));
      return false;
    }
  }
  return true;
}

fs::path ExecutableDir() {
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  return ec ? fs::current_path() : exe.parent_path();
}

// The shipped repository: deploy/models of the source tree holding build/bin/, else the
// installed share/adasoftmax/models.
std::string DefaultRepository() {
  const fs::path dir = ExecutableDir();
  const fs::path in_tree = dir / ".." / ".." / "deploy" / "models";
  std::error_code ec;
  if (fs::is_directory(in_tree, ec)) return fs::weakly_canonical(in_tree, ec).string();
  return fs::weakly_canonical(dir / ".." / "share" / "adasoftmax" / "models", ec).string();
}

std::string DefaultCacheDir() {
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg != nullptr && *xdg != '\0') {
    return (fs::path(xdg) / "adasoftmax").string();
  }
  if (const char* home = std::getenv("HOME"); home != nullptr && *home != '\0') {
    return (fs::path(home) / ".cache" / "adasoftmax").string();
  }
  return (fs::temp_directory_path() / "adasoftmax-cache").string();
}

// Unblocks `signals` until one of them comes (returns its number) or `timeout` passes
// (returns 0).
int WaitForSignal(const sigset_t& signals, absl::Duration timeout) {
  pthread_sigmask(SIG_UNBLOCK, &signals, nullptr);
  const absl::Time end = absl::Now() + timeout;
  int number = 0;
  for (;;) {
    const absl::Duration left = end - absl::Now();
    const int ms = left == absl::InfiniteDuration()
                       ? -1
                       : static_cast<int>(std::clamp<int64_t>(
                             absl::ToInt64Milliseconds(absl::Ceil(left, absl::Milliseconds(1))), 0,
                             std::numeric_limits<int>::max()));
    pollfd fd = {signal_pipe[0], POLLIN, 0};
    const int ready = poll(&fd, 1, ms);
    if ((ready < 0 && errno == EINTR) || (ready == 0 && absl::Now() < end)) continue;
    char byte = 0;
    if (ready > 0 && read(signal_pipe[0], &byte, 1) == 1) number = byte;
    break;
  }
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  return number;
}

// Ends the process once the server is shut down (nothing is left to flush). Skips the
// destructors on purpose: the metrics endpoint's web server (civetweb) takes up to its 2-s poll
// quantum to stop, which would only delay the exit.
[[noreturn]] void Exit(int code) {
  std::fflush(stderr);
  std::_Exit(code);
}

}  // namespace

int main(int argc, char** argv) {
  const adasoftmax::BlasKernels blas = adasoftmax::ChooseBlasKernels();
  absl::SetProgramUsageMessage(
      "serves top-k softmax over gRPC.\nusage: adasoftmax-server [--model_repository DIR] "
      "[--address HOST:PORT] [flags]\nEvery flag falls back to ADASOFTMAX_<FLAG> from the "
      "environment.");
  absl::FlagsUsageConfig usage;
  usage.version_string = [] {
    return absl::StrCat("adasoftmax-server ", adasoftmax::kVersion, "\n");
  };
  absl::SetFlagsUsageConfig(usage);
  if (!ApplyEnvironment()) return 2;
  absl::ParseCommandLine(argc, argv);

  // SIGTERM, SIGINT and SIGHUP go to OnSignal, whichever thread takes them: OpenBLAS starts
  // threads before main, blocking nothing, so a signal must never find its default action. The
  // threads started from here on block them, so that no call of theirs is interrupted; main
  // unblocks them while it waits on the pipe.
  if (pipe2(signal_pipe, O_CLOEXEC) != 0) {
    Log(absl::StrCat("cannot create the signal pipe: ", std::strerror(errno)));
    return 1;
  }
  struct sigaction action = {};
  action.sa_handler = OnSignal;
  action.sa_flags = SA_RESTART;
  sigemptyset(&action.sa_mask);
  sigset_t signals;
  sigemptyset(&signals);
  for (int number : {SIGTERM, SIGINT, SIGHUP}) {
    sigaction(number, &action, nullptr);
    sigaddset(&signals, number);
  }
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  using adasoftmax::server::ServerOptions;
  ServerOptions options;
  options.model_repository = absl::GetFlag(FLAGS_model_repository);
  if (options.model_repository.empty()) options.model_repository = DefaultRepository();
  {
    std::error_code ec;
    const fs::path absolute = fs::absolute(options.model_repository, ec);
    if (!ec) options.model_repository = absolute.string();
  }
  options.address = absl::GetFlag(FLAGS_address);
  options.metrics_address = absl::GetFlag(FLAGS_metrics_address);
  int threads = absl::GetFlag(FLAGS_threads);
  const int batch_threads = absl::GetFlag(FLAGS_batch_threads);
  if (threads < 0 || batch_threads < 0) {
    Log("--threads and --batch_threads must be >= 0");
    return 2;
  }
  const size_t usable_cpus = adasoftmax::UsableCpus();
  if (threads == 0) threads = static_cast<int>(usable_cpus);
  // The samplers and exact passes of a batch split their work over `threads`.
  adasoftmax::SetParallelWidth(threads);
  options.threads = batch_threads > 0 ? batch_threads : threads;
  options.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  options.require_every_model = absl::GetFlag(FLAGS_exit_on_model_error);
  options.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  options.tls_key = absl::GetFlag(FLAGS_tls_key);
  options.tls_client_ca = absl::GetFlag(FLAGS_tls_client_ca);
  options.repository.cache_dir = absl::GetFlag(FLAGS_cache_dir);
  if (options.repository.cache_dir.empty()) options.repository.cache_dir = DefaultCacheDir();
  options.repository.audit_fraction = absl::GetFlag(FLAGS_audit_fraction);
  const int max_batch = absl::GetFlag(FLAGS_max_batch_size);
  const int max_queue = absl::GetFlag(FLAGS_max_queue_size);
  const int64_t timeout_us = absl::GetFlag(FLAGS_batch_timeout_us);
  if (max_batch < 1 || max_queue < 1 || timeout_us < 0) {
    Log("--max_batch_size and --max_queue_size must be >= 1, --batch_timeout_us >= 0");
    return 2;
  }
  options.repository.batching.max_batch_size = static_cast<size_t>(max_batch);
  options.repository.batching.max_queue_size = static_cast<size_t>(max_queue);
  options.repository.batching.batch_timeout = absl::Microseconds(timeout_us);
  const int64_t memory_limit_mb = absl::GetFlag(FLAGS_memory_limit_mb);
  if (memory_limit_mb < -1 || memory_limit_mb > (int64_t{1} << 40)) {
    Log("--memory_limit_mb must be -1 (the cgroup's limit), 0 (no bound) or a size in MiB");
    return 2;
  }
  std::string memory_limit = "none";
  if (memory_limit_mb > 0) {
    options.repository.memory_limit_bytes = static_cast<size_t>(memory_limit_mb) << 20;
    memory_limit = absl::StrCat(memory_limit_mb, " MiB");
  } else if (memory_limit_mb == -1) {
    if (const std::optional<size_t> limit = adasoftmax::CgroupMemoryLimit()) {
      options.repository.memory_limit_bytes = *limit;
      memory_limit = absl::StrFormat("%.1f MiB (the cgroup's)", *limit / 1048576.0);
    }
  }
  const double grace_s = absl::GetFlag(FLAGS_shutdown_grace_s);
  const double poll_s = absl::GetFlag(FLAGS_repository_poll_s);
  if (!(grace_s >= 0) || !(poll_s >= 0)) {
    Log("--shutdown_grace_s and --repository_poll_s must be >= 0");
    return 2;
  }

  Log(absl::StrCat("version ", adasoftmax::kVersion));
  Log(absl::StrCat("BLAS kernels ", blas.name,
                   blas.replaced.empty()
                       ? ""
                       : absl::StrCat(" (by CPU features; OpenBLAS picked ", blas.replaced, ")")));
  Log(absl::StrCat("model repository ", options.model_repository, " (reloaded on SIGHUP",
                   poll_s > 0 ? absl::StrCat(" and every ", poll_s, " s") : "", ")"));
  Log(absl::StrCat("threads ", threads, " a batch, ", options.threads, " batch threads (CPUs: ",
                   usable_cpus, " usable of ", std::thread::hardware_concurrency(), " online)"));
  Log(absl::StrCat("memory limit ", memory_limit));
  auto server = adasoftmax::server::Server::Start(options, Log);
  if (!server.ok()) {
    Log(std::string(server.status().message()));
    return 1;
  }
  if (absl::Status s = (*server)->LoadModels(); !s.ok()) {
    Log(absl::StrCat("start-up failed: ", s.message()));
    (*server)->Shutdown(absl::ZeroDuration());
    Exit(1);
  }

  const absl::Duration poll = poll_s > 0 ? absl::Seconds(poll_s) : absl::InfiniteDuration();
  int signal = 0;
  while ((signal = WaitForSignal(signals, poll)) != SIGTERM && signal != SIGINT) {
    if (signal == SIGHUP) Log("received SIGHUP: reloading the model repository");
    if (absl::Status s = (*server)->ReloadModels(); !s.ok()) {
      Log(std::string(s.message()));
    } else if (signal == SIGHUP) {
      Log("reload done");
    }
  }
  Log(absl::StrCat("received ", signal == SIGTERM ? "SIGTERM" : "SIGINT",
                   ": draining (up to ", grace_s, " s)"));
  (*server)->Shutdown(absl::Seconds(grace_s));
  Log("stopped");
  Exit(0);
}
