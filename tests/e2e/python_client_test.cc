// Wire compatibility with a client we did not write: Debian's python3-grpcio, with stubs
// generated at test time by python3-grpc-tools from our .proto files (python_client.py).

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/e2e/server_process.h"
#include "tests/e2e/subprocess.h"
#include "tests/server/test_util.h"

namespace adasoftmax::testing {
namespace {

TEST(PythonClientTest, GeneratedStubsTalkToTheServer) {
  TempDir dir;
  SynthOptions o;
  o.n = 1500;
  o.d = 64;
  o.queries = 16;
  o.seed = 31;
  o.bias = true;
  // The exact fallback off: on a head this narrow it would answer every query exactly.
  WriteModel(dir.Sub("repo/pymodel"), o, "adaptive { sample_cost: 0 }\n");
  ServerProcess server = StartServerProcess(dir.Sub("repo"), dir.Sub("cache"));
  ASSERT_FALSE(server.address.empty());
  const std::string source = ADASOFTMAX_SOURCE_DIR;
  CommandResult r = RunCommand({"/usr/bin/python3", source + "/tests/e2e/python_client.py",
                                "--target", server.address, "--proto-root", source + "/proto",
                                "--extra-proto-root", source + "/tests/e2e/protos",
                                "--model-dir", dir.Sub("repo/pymodel"), "--model", "pymodel",
                                "--out", dir.Sub("stubs")},
                               absl::Seconds(120));
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_THAT(r.err, ::testing::HasSubstr("Ran 8 tests"));
  EXPECT_THAT(r.err, ::testing::EndsWith("OK\n"));
}

}  // namespace
}  // namespace adasoftmax::testing
