// TLS and mTLS: certificates made at test time with the openssl tool; the real server binary
// with --tls_cert/--tls_key/--tls_client_ca; the CLI as the client.

#include <unistd.h>

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/e2e/server_process.h"
#include "tests/e2e/subprocess.h"
#include "tests/server/test_util.h"

namespace adasoftmax::testing {
namespace {

using ::testing::HasSubstr;

// Makes a CA and a certificate signed by it for `name` (server: for 127.0.0.1).
void MakeCertificates(const TempDir& dir) {
  auto run = [](const std::vector<std::string>& args) {
    CommandResult r = RunCommand(args);
    ASSERT_EQ(r.exit_code, 0) << args[1] << ": " << r.err;
  };
  const std::string ec = "ec", curve = "ec_paramgen_curve:prime256v1";
  run({"openssl", "req", "-x509", "-newkey", ec, "-pkeyopt", curve, "-nodes", "-days", "1",
       "-subj", "/CN=adasoftmax-test-ca", "-keyout", dir.Sub("ca.key"), "-out", dir.Sub("ca.pem")});
  WriteTextFile(dir.Sub("server.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
  WriteTextFile(dir.Sub("client.ext"), "extendedKeyUsage=clientAuth\n");
  for (const std::string name : {"server", "client"}) {
    run({"openssl", "req", "-newkey", ec, "-pkeyopt", curve, "-nodes", "-subj",
         "/CN=adasoftmax-test-" + name, "-keyout", dir.Sub(name + ".key"), "-out",
         dir.Sub(name + ".csr")});
    run({"openssl", "x509", "-req", "-in", dir.Sub(name + ".csr"), "-CA", dir.Sub("ca.pem"),
         "-CAkey", dir.Sub("ca.key"), "-CAcreateserial", "-days", "1", "-extfile",
         dir.Sub(name + ".ext"), "-out", dir.Sub(name + ".pem")});
  }
}

TEST(TlsTest, MutualTlsAcceptsOnlyClientsWithACertificate) {
  if (access("/usr/bin/openssl", X_OK) != 0) {
    GTEST_SKIP() << "needs the openssl tool to make test certificates (Debian package openssl)";
  }
  TempDir dir;
  MakeCertificates(dir);
  SynthOptions o;
  o.n = 500;
  o.d = 16;
  o.queries = 2;
  o.seed = 51;
  WriteModel(dir.Sub("repo/small"), o);
  ServerProcess server = StartServerProcess(
      dir.Sub("repo"), dir.Sub("cache"),
      {"--tls_cert=" + dir.Sub("server.pem"), "--tls_key=" + dir.Sub("server.key"),
       "--tls_client_ca=" + dir.Sub("ca.pem")});
  ASSERT_FALSE(server.address.empty());
  const std::string cli = BinDir() + "/adasoftmax";
  const std::vector<std::string> tls = {"--ca-cert", dir.Sub("ca.pem")};
  const std::vector<std::string> mtls = {"--ca-cert", dir.Sub("ca.pem"), "--cert",
                                         dir.Sub("client.pem"), "--key", dir.Sub("client.key")};
  auto health = [&](const std::vector<std::string>& extra) {
    std::vector<std::string> args = {cli, "health", "--target", server.address, "--timeout-s", "5"};
    args.insert(args.end(), extra.begin(), extra.end());
    return RunCommand(args);
  };

  CommandResult ok = health(mtls);
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_THAT(ok.out, HasSubstr("SERVING"));
  std::vector<std::string> query = {cli, "query", "--target", server.address, "--model", "small",
                                    "--queries", dir.Sub("repo/small/queries.npy")};
  query.insert(query.end(), mtls.begin(), mtls.end());
  CommandResult answered = RunCommand(query);
  EXPECT_EQ(answered.exit_code, 0) << answered.err;
  EXPECT_THAT(answered.out, HasSubstr("'class"));

  EXPECT_NE(health(tls).exit_code, 0);  // no client certificate
  EXPECT_NE(health({}).exit_code, 0);   // plaintext
}

}  // namespace
}  // namespace adasoftmax::testing
