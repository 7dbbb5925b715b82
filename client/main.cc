// adasoftmax: the command-line tool. `adasoftmax COMMAND --help` describes each command.

#include <cstdio>
#include <cstring>
#include <string_view>

#include "client/commands.h"
#include "core/blas_kernels.h"
#include "core/version.h"

namespace {

struct Command {
  const char* name;
  int (*run)(int argc, char** argv);
  const char* summary;
};

constexpr Command kCommands[] = {
    {"demo", adasoftmax::client::DemoCommand,
     "adaptive and exact answers side by side on the shipped OCR head"},
    {"run", adasoftmax::client::RunCommand, "answer queries from a .npy file, one JSON line each"},
    {"bench", adasoftmax::client::BenchCommand,
     "exact vs adaptive, interleaved: latency, samples, PAC success"},
    {"calibrate", adasoftmax::client::CalibrateCommand,
     "choose variance multipliers that keep the failure rate bound below delta"},
    {"synth", adasoftmax::client::SynthCommand, "write a synthetic LM-head-like model and queries"},
    {"query", adasoftmax::client::QueryCommand,
     "ask a running server for the top-k softmax of queries"},
    {"models", adasoftmax::client::ModelsCommand, "list the models a running server serves"},
    {"health", adasoftmax::client::HealthCommand,
     "a running server's health; exit status 0 only when SERVING"},
    {"loadgen", adasoftmax::client::LoadgenCommand,
     "closed-loop load against a running server: QPS, latency, samples per query (JSON)"},
};

void PrintUsage(std::FILE* out) {
  std::fprintf(out,
               "usage: adasoftmax COMMAND [flags]   (adasoftmax COMMAND --help; adasoftmax "
               "--version)\n\n");
  for (const Command& c : kCommands) std::fprintf(out, "  %-10s %s\n", c.name, c.summary);
}

}  // namespace

int main(int argc, char** argv) {
  adasoftmax::ChooseBlasKernels();
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "help") == 0) {
    PrintUsage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  if (std::strcmp(argv[1], "--version") == 0) {
    std::printf("adasoftmax %s\n", adasoftmax::kVersion);
    return 0;
  }
  const std::string_view name = argv[1];
  for (const Command& c : kCommands) {
    if (name == c.name) return c.run(argc - 1, argv + 1);
  }
  std::fprintf(stderr, "adasoftmax: unknown command '%s'\n", argv[1]);
  PrintUsage(stderr);
  return 2;
}
