#include "client/grpc_client.h"

#include <fstream>
#include <sstream>
#include <thread>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace adasoftmax::client {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot be read"));
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

void SetDeadline(grpc::ClientContext& context, absl::Duration timeout) {
  if (timeout != absl::InfiniteDuration()) {
    context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  }
}

v1::TopKSoftmaxRequest MakeRequest(std::string_view model, absl::Span<const float> query,
                                   const TopKOptions& o) {
  v1::TopKSoftmaxRequest request;
  request.set_model(std::string(model));
  request.mutable_query()->Assign(query.begin(), query.end());
  request.set_k(o.k);
  if (o.epsilon) request.mutable_epsilon()->set_value(*o.epsilon);
  if (o.delta) request.mutable_delta()->set_value(*o.delta);
  if (o.temperature) request.mutable_temperature()->set_value(*o.temperature);
  request.set_mode(o.mode);
  request.set_seed(o.seed);
  return request;
}

Result ToResult(const v1::TopKSoftmaxResponse& r) {
  Result out;
  out.indices.assign(r.indices().begin(), r.indices().end());
  out.probabilities.assign(r.probabilities().begin(), r.probabilities().end());
  out.logits.assign(r.logits().begin(), r.logits().end());
  out.labels.assign(r.labels().begin(), r.labels().end());
  out.log_partition = r.log_partition();
  out.samples = r.samples();
  out.sample_fraction = r.sample_fraction();
  out.exact = r.exact();
  out.batch_size = r.batch_size();
  out.mode = r.mode();
  out.model = r.model();
  return out;
}

// One request's outcome on a stream or in a batch.
absl::StatusOr<Result> ToResultOrError(const v1::TopKSoftmaxStreamResponse& r) {
  if (r.has_error()) {
    return absl::Status(static_cast<absl::StatusCode>(r.error().code()), r.error().message());
  }
  return ToResult(r.response());
}

}  // namespace

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

std::string_view HealthStatusName(HealthStatus status) {
  switch (status) {
    case HealthStatus::kServing: return "SERVING";
    case HealthStatus::kNotServing: return "NOT_SERVING";
    case HealthStatus::kServiceUnknown: return "SERVICE_UNKNOWN";
    default: return "UNKNOWN";
  }
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const std::string& target,
                                                           const ChannelOptions& options) {
  if (options.cert.empty() != options.key.empty()) {
    return absl::InvalidArgumentError("cert, key: give both or neither");
  }
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (options.tls || !options.ca_cert.empty() || !options.cert.empty()) {
    grpc::SslCredentialsOptions ssl;
    if (!options.ca_cert.empty()) {
      absl::StatusOr<std::string> ca = ReadFile(options.ca_cert);
      if (!ca.ok()) return ca.status();
      ssl.pem_root_certs = *std::move(ca);
    }
    if (!options.cert.empty()) {
      absl::StatusOr<std::string> cert = ReadFile(options.cert);
      if (!cert.ok()) return cert.status();
      absl::StatusOr<std::string> key = ReadFile(options.key);
      if (!key.ok()) return key.status();
      ssl.pem_cert_chain = *std::move(cert);
      ssl.pem_private_key = *std::move(key);
    }
    credentials = grpc::SslCredentials(ssl);
  } else {
    credentials = grpc::InsecureChannelCredentials();
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  args.SetMaxSendMessageSize(-1);  // let the server's limit decide
  return grpc::CreateCustomChannel(target, credentials, args);
}

Client::Client(std::shared_ptr<grpc::ChannelInterface> channel)
    : stub_(v1::SoftmaxService::NewStub(channel)),
      health_(grpc::health::v1::Health::NewStub(channel)) {}

absl::StatusOr<Result> Client::TopKSoftmax(std::string_view model, absl::Span<const float> query,
                                           const TopKOptions& options) const {
  const v1::TopKSoftmaxRequest request = MakeRequest(model, query, options);
  v1::TopKSoftmaxResponse response;
  grpc::ClientContext context;
  SetDeadline(context, options.timeout);
  if (grpc::Status s = stub_->TopKSoftmax(&context, request, &response); !s.ok()) {
    return FromGrpcStatus(s);
  }
  return ToResult(response);
}

absl::StatusOr<std::vector<absl::StatusOr<Result>>> Client::TopKSoftmaxStream(
    std::string_view model, const std::vector<absl::Span<const float>>& queries,
    const TopKOptions& options) const {
  grpc::ClientContext context;
  SetDeadline(context, options.timeout);
  auto stream = stub_->TopKSoftmaxStream(&context);
  // Write from a second thread: the server pauses reading when many requests are in flight, so
  // writing everything before reading could deadlock.
  std::thread writer([&] {
    for (size_t i = 0; i < queries.size(); ++i) {
      v1::TopKSoftmaxRequest request = MakeRequest(model, queries[i], options);
      request.set_id(absl::StrCat(i));
      if (!stream->Write(request)) break;
    }
    stream->WritesDone();
  });
  std::vector<absl::StatusOr<Result>> results(queries.size(),
                                              absl::UnknownError("no answer received"));
  v1::TopKSoftmaxStreamResponse response;
  while (stream->Read(&response)) {
    size_t i = 0;
    if (!absl::SimpleAtoi(response.id(), &i) || i >= results.size()) continue;
    results[i] = ToResultOrError(response);
  }
  writer.join();
  if (grpc::Status s = stream->Finish(); !s.ok()) return FromGrpcStatus(s);
  return results;
}

absl::StatusOr<std::vector<absl::StatusOr<Result>>> Client::TopKSoftmaxBatch(
    std::string_view model, const std::vector<absl::Span<const float>>& queries,
    const TopKOptions& options) const {
  v1::TopKSoftmaxBatchRequest request;
  for (absl::Span<const float> query : queries) {
    *request.add_requests() = MakeRequest(model, query, options);
  }
  v1::TopKSoftmaxBatchResponse response;
  grpc::ClientContext context;
  SetDeadline(context, options.timeout);
  if (grpc::Status s = stub_->TopKSoftmaxBatch(&context, request, &response); !s.ok()) {
    return FromGrpcStatus(s);
  }
  if (response.results_size() != request.requests_size()) {
    return absl::InternalError(absl::StrCat("the server answered ", response.results_size(), " of ",
                                            request.requests_size(), " requests"));
  }
  std::vector<absl::StatusOr<Result>> results;
  for (const v1::TopKSoftmaxStreamResponse& r : response.results()) {
    results.push_back(ToResultOrError(r));
  }
  return results;
}

absl::StatusOr<v1::ListModelsResponse> Client::ListModels(absl::Duration timeout) const {
  grpc::ClientContext context;
  SetDeadline(context, timeout);
  v1::ListModelsResponse response;
  if (grpc::Status s = stub_->ListModels(&context, v1::ListModelsRequest(), &response); !s.ok()) {
    return FromGrpcStatus(s);
  }
  return response;
}

absl::StatusOr<HealthStatus> Client::Health(const std::string& service,
                                            absl::Duration timeout) const {
  grpc::ClientContext context;
  SetDeadline(context, timeout);
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  if (grpc::Status s = health_->Check(&context, request, &response); !s.ok()) {
    return FromGrpcStatus(s);
  }
  switch (response.status()) {
    case grpc::health::v1::HealthCheckResponse::SERVING: return HealthStatus::kServing;
    case grpc::health::v1::HealthCheckResponse::NOT_SERVING: return HealthStatus::kNotServing;
    case grpc::health::v1::HealthCheckResponse::SERVICE_UNKNOWN:
      return HealthStatus::kServiceUnknown;
    default: return HealthStatus::kUnknown;
  }
}

}  // namespace adasoftmax::client
