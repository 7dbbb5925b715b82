// A real Prometheus (Debian's `prometheus` binary) scrapes the server's /metrics endpoint while
// the test sends traffic; its HTTP API then computes the median samples per query from our
// histogram.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <memory>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "client/grpc_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/e2e/server_process.h"
#include "tests/e2e/subprocess.h"
#include "tests/server/test_util.h"

namespace adasoftmax::testing {
namespace {

// A loopback port that was free a moment ago (Prometheus cannot report a port it picked).
int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    close(fd);
    return 0;
  }
  close(fd);
  return ntohs(addr.sin_port);
}

// The first finite value of an instant-vector answer of the Prometheus query API, or NaN.
double FirstFiniteValue(const std::string& body) {
  const nlohmann::json reply = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (reply.is_discarded() || reply.value("status", "") != "success") return NAN;
  for (const auto& series : reply["data"]["result"]) {
    const double v = std::strtod(series["value"][1].get<std::string>().c_str(), nullptr);
    if (std::isfinite(v)) return v;
  }
  return NAN;
}

TEST(PrometheusTest, ScrapesTheServerAndComputesTheMedianSamplesPerQuery) {
  TempDir dir;
  SynthOptions o;
  o.n = 2000;
  o.d = 64;
  o.queries = 32;
  o.seed = 41;
  // The exact fallback off: on a head this narrow it would answer every query exactly.
  const SynthData data = WriteModel(dir.Sub("repo/small"), o, "adaptive { sample_cost: 0 }\n");
  ServerProcess server = StartServerProcess(dir.Sub("repo"), dir.Sub("cache"));
  ASSERT_FALSE(server.metrics_address.empty());

  const int port = FreePort();
  ASSERT_GT(port, 0);
  WriteTextFile(dir.Sub("prometheus.yml"),
                absl::StrCat("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                             "scrape_configs:\n  - job_name: adasoftmax\n    static_configs:\n"
                             "      - targets: ['",
                             server.metrics_address, "']\n"));
  std::unique_ptr<ChildProcess> prometheus = ChildProcess::Start(
      {"prometheus", "--config.file=" + dir.Sub("prometheus.yml"),
       "--storage.tsdb.path=" + dir.Sub("tsdb"),
       absl::StrCat("--web.listen-address=127.0.0.1:", port), "--log.level=warn"});
  ASSERT_NE(prometheus, nullptr) << "is Debian's prometheus package installed?";

  // Traffic for as long as the test polls Prometheus.
  std::atomic<bool> stop{false};
  std::thread traffic([&] {
    auto channel = client::MakeChannel(server.address);
    client::Client client(*channel);
    for (size_t i = 0; !stop; ++i) {
      EXPECT_TRUE(client.TopKSoftmax("small", QueryRow(data.queries, i % o.queries)).ok());
    }
  });

  const std::string api = absl::StrCat("http://127.0.0.1:", port, "/api/v1/query");
  double median = NAN;
  std::string last;
  for (const absl::Time end = absl::Now() + absl::Seconds(90); absl::Now() < end;) {
    CommandResult r = RunCommand(
        {"curl", "-sS", "--max-time", "5", "-G", api, "--data-urlencode",
         "query=histogram_quantile(0.5, rate(adasoftmax_samples_per_query_bucket[1m]))"});
    last = r.out + r.err;
    median = FirstFiniteValue(r.out);
    if (std::isfinite(median)) break;
    absl::SleepFor(absl::Milliseconds(500));  // Prometheus scrapes once a second
  }
  stop = true;
  traffic.join();
  EXPECT_TRUE(std::isfinite(median)) << "last answer: " << last << "\n" << prometheus->Stderr();
  EXPECT_GT(median, 0);
  // histogram_quantile interpolates inside a bucket: at most the upper bound (178000) of the
  // bucket holding n * d = 128000.
  EXPECT_LE(median, 178000);

  CommandResult up = RunCommand({"curl", "-sS", "-G", api, "--data-urlencode",
                                 "query=up{job=\"adasoftmax\"}"});
  EXPECT_EQ(FirstFiniteValue(up.out), 1.0) << up.out;
  prometheus->Signal(SIGTERM);
  EXPECT_EQ(prometheus->Wait(), 0) << prometheus->Stderr();
}

}  // namespace
}  // namespace adasoftmax::testing
