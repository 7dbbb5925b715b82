#ifndef ADASOFTMAX_CLIENT_GRPC_CLIENT_H_
#define ADASOFTMAX_CLIENT_GRPC_CLIENT_H_

// A C++ client of the adasoftmax gRPC service, built on a channel the caller supplies.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "adasoftmax/v1/adasoftmax.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"

namespace adasoftmax::client {

// How to reach a server.
struct ChannelOptions {
  // PEM CA bundle that verifies the server; setting it selects TLS. Empty: plaintext, unless
  // `tls` is set (then the system's roots verify the server).
  std::string ca_cert;
  bool tls = false;
  // PEM client certificate and key for mTLS. REQUIRES: both or neither.
  std::string cert;
  std::string key;
  // Largest response accepted. Default: 64 MiB.
  int max_message_bytes = 64 << 20;
};

// A channel to `target` ("host:port"). Errors: unreadable PEM files, half a client key pair.
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const std::string& target,
                                                           const ChannelOptions& options = {});

// Per-request settings; unset optionals take the model's defaults.
struct TopKOptions {
  uint32_t k = 1;
  std::optional<double> epsilon;
  std::optional<double> delta;
  std::optional<double> temperature;
  v1::Mode mode = v1::MODE_UNSPECIFIED;
  uint64_t seed = 0;  // 0: fresh sampling order
  // The call fails with DEADLINE_EXCEEDED after this long. Default: no deadline.
  absl::Duration timeout = absl::InfiniteDuration();
};

// One answer; see TopKSoftmaxResponse in proto/adasoftmax/v1/adasoftmax.proto.
struct Result {
  std::vector<uint32_t> indices;
  std::vector<double> probabilities;
  std::vector<double> logits;
  std::vector<std::string> labels;  // empty when the model has no labels
  double log_partition = 0;
  uint64_t samples = 0;
  double sample_fraction = 0;
  bool exact = false;  // every logit computed exactly (exact mode or the exact fallback)
  uint32_t batch_size = 0;
  v1::Mode mode = v1::MODE_UNSPECIFIED;
  std::string model;
};

enum class HealthStatus { kUnknown, kServing, kNotServing, kServiceUnknown };
std::string_view HealthStatusName(HealthStatus status);

// The status a server call ended with, as an absl::Status (code and message kept).
absl::Status FromGrpcStatus(const grpc::Status& status);

// Thread-safe: one Client may serve many threads (gRPC stubs are).
class Client {
 public:
  explicit Client(std::shared_ptr<grpc::ChannelInterface> channel);

  absl::StatusOr<Result> TopKSoftmax(std::string_view model, absl::Span<const float> query,
                                     const TopKOptions& options = {}) const;

  // Answers many queries on one bidirectional stream; result i answers queries[i]. The call
  // fails as a whole only when the stream breaks; a rejected query gets its own error.
  absl::StatusOr<std::vector<absl::StatusOr<Result>>> TopKSoftmaxStream(
      std::string_view model, const std::vector<absl::Span<const float>>& queries,
      const TopKOptions& options = {}) const;

  // The same answers from one unary call (TopKSoftmaxBatch), which fails as a whole only when
  // the call does (e.g. a message beyond the server's limit, the deadline).
  absl::StatusOr<std::vector<absl::StatusOr<Result>>> TopKSoftmaxBatch(
      std::string_view model, const std::vector<absl::Span<const float>>& queries,
      const TopKOptions& options = {}) const;

  // The served models, and the model folders that do not load.
  absl::StatusOr<v1::ListModelsResponse> ListModels(
      absl::Duration timeout = absl::Seconds(10)) const;

  // The grpc.health.v1 status of `service` ("" = the whole server).
  absl::StatusOr<HealthStatus> Health(const std::string& service = "",
                                      absl::Duration timeout = absl::Seconds(5)) const;

 private:
  std::unique_ptr<v1::SoftmaxService::Stub> stub_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
};

}  // namespace adasoftmax::client

#endif  // ADASOFTMAX_CLIENT_GRPC_CLIENT_H_
