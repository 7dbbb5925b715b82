#include "server/server.h"

#include <exception>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/status_macros.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"

namespace adasoftmax::server {
namespace {

absl::StatusOr<std::string> ReadPem(const std::string& flag, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(flag, ": cannot read ", path));
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> Credentials(const ServerOptions& o) {
  if (o.tls_cert.empty() && o.tls_key.empty()) {
    if (!o.tls_client_ca.empty()) {
      return absl::InvalidArgumentError("tls_client_ca: needs --tls_cert and --tls_key");
    }
    return grpc::InsecureServerCredentials();
  }
  if (o.tls_cert.empty() || o.tls_key.empty()) {
    return absl::InvalidArgumentError("tls_cert, tls_key: give both or neither");
  }
  grpc::SslServerCredentialsOptions ssl;
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  ASSIGN_OR_RETURN(pair.cert_chain, ReadPem("tls_cert", o.tls_cert));
  ASSIGN_OR_RETURN(pair.private_key, ReadPem("tls_key", o.tls_key));
  ssl.pem_key_cert_pairs.push_back(std::move(pair));
  if (!o.tls_client_ca.empty()) {
    ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadPem("tls_client_ca", o.tls_client_ca));
    ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(ssl);
}

// OK, or the first error's code with every error's message.
absl::Status Join(const std::vector<absl::Status>& errors) {
  if (errors.empty()) return absl::OkStatus();
  return absl::Status(errors.front().code(),
                      absl::StrJoin(errors, "; ", [](std::string* out, const absl::Status& e) {
                        absl::StrAppend(out, e.message());
                      }));
}

std::vector<std::string> Names(const std::vector<std::shared_ptr<const ServedModel>>& models) {
  std::vector<std::string> names;
  for (const auto& m : models) names.push_back(m->name);
  return names;
}

}  // namespace

std::string WithPort(const std::string& address, int port) {
  const size_t colon = address.rfind(':');
  const size_t bracket = address.rfind(']');
  if (colon == std::string::npos || (bracket != std::string::npos && colon < bracket)) {
    return absl::StrCat(address, ":", port);
  }
  return absl::StrCat(address.substr(0, colon), ":", port);
}

Server::Server(const ServerOptions& options, LogFn log, const Clock* clock)
    : options_(options),
      log_(std::move(log)),
      clock_(clock != nullptr ? clock : &real_clock_),
      registry_(std::make_shared<prometheus::Registry>()),
      process_collector_(std::make_shared<ProcessCollector>()),
      metrics_(std::make_unique<Metrics>(*registry_)),
      repository_(options.model_repository, options.repository, log_) {}

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const ServerOptions& options, LogFn log,
                                                      const Clock* clock) {
  if (options.model_repository.empty()) {
    return absl::InvalidArgumentError("model_repository: is empty");
  }
  if (options.threads < 1) return absl::InvalidArgumentError("threads: must be >= 1");
  if (!(options.repository.audit_fraction >= 0 && options.repository.audit_fraction <= 1)) {
    return absl::InvalidArgumentError("audit_fraction: must be in [0, 1]");
  }
  if (absl::Status s = ValidateBatchingOptions(options.repository.batching); !s.ok()) return s;
  std::unique_ptr<Server> server(new Server(options, std::move(log), clock));

  if (!options.metrics_address.empty()) {
    try {
      server->exposer_ = std::make_unique<prometheus::Exposer>(options.metrics_address);
    } catch (const std::exception& e) {
      return absl::UnavailableError(
          absl::StrCat("metrics_address: cannot listen on ", options.metrics_address, ": ", e.what()));
    }
    server->exposer_->RegisterCollectable(server->registry_);
    server->exposer_->RegisterCollectable(server->process_collector_);
    const std::vector<int> ports = server->exposer_->GetListeningPorts();
    server->metrics_address_ =
        ports.empty() ? options.metrics_address : WithPort(options.metrics_address, ports.front());
  }

  ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> credentials, Credentials(options));
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  // gRPC sets SO_REUSEPORT by default, so a second server on a taken port would start and take
  // part of the first one's connections: here it fails instead.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddListeningPort(options.address, credentials, &server->port_);
  builder.RegisterService(&server->grpc_service_);
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  server->grpc_server_ = builder.BuildAndStart();
  if (server->grpc_server_ == nullptr || server->port_ == 0) {
    return absl::UnavailableError(absl::StrCat("address: cannot listen on ", options.address));
  }
  // The built-in health service starts out SERVING; nothing is served until LoadModels.
  grpc::HealthCheckServiceInterface* health = server->grpc_server_->GetHealthCheckService();
  health->SetServingStatus(kServiceName, false);
  health->SetServingStatus(false);
  server->address_ = WithPort(options.address, server->port_);
  if (server->log_) {
    server->log_(absl::StrFormat("listening on %s (NOT_SERVING until the models are loaded)",
                                 server->address_));
    if (server->exposer_) {
      server->log_(absl::StrFormat("metrics on http://%s/metrics", server->metrics_address_));
    }
  }
  return server;
}

Server::~Server() { Shutdown(absl::ZeroDuration()); }

absl::Status Server::LoadModels() {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(const ModelRepository::Changes changes, repository_.Update());
  const absl::Status errors = Join(changes.errors);
  if (!errors.ok() && (options_.require_every_model || repository_.models().empty())) {
    return errors;
  }
  if (!errors.ok() && log_) log_(absl::StrCat("serving without: ", errors.message()));
  PublishFailures();
  std::vector<std::string> hints;
  for (const auto& m : changes.loaded) {
    if (log_) log_(DescribeModel(*m));
    std::error_code ec;
    if (!m->sample_queries.empty() && std::filesystem::exists(m->sample_queries, ec)) {
      hints.push_back(absl::StrFormat(
          "try: adasoftmax query --target %s --model %s --queries %s --limit 4 --k 3", address_,
          m->name, m->sample_queries));
    }
  }
  RETURN_IF_ERROR(Serve(repository_.models()));
  grpc::HealthCheckServiceInterface* health = grpc_server_->GetHealthCheckService();
  health->SetServingStatus(kServiceName, true);
  health->SetServingStatus(true);
  if (log_) {
    log_(absl::StrCat("serving on ", address_));
    for (const std::string& hint : hints) log_(hint);
  }
  return absl::OkStatus();
}

absl::Status Server::ReloadModels() {
  absl::MutexLock lock(&mu_);
  if (service_ == nullptr || shut_down_) {
    return absl::FailedPreconditionError("reload: the server is not serving");
  }
  absl::StatusOr<ModelRepository::Changes> changes = repository_.Update();
  if (!changes.ok()) {
    metrics_->CountReload(Metrics::ReloadResult::kUnreadable);
    return absl::Status(changes.status().code(),
                        absl::StrCat("reload: ", changes.status().message()));
  }
  PublishFailures();
  if (changes->changed()) {
    for (const auto& m : changes->loaded) {
      if (log_) log_(DescribeModel(*m));
    }
    RETURN_IF_ERROR(Serve(repository_.models()));
    for (const std::string& name : changes->unloaded) {
      metrics_->RemoveModel(name);
      grpc_server_->GetHealthCheckService()->SetServingStatus(name, false);
      if (log_) log_(absl::StrCat("unloaded model ", name));
    }
    if (log_) {
      log_(absl::StrCat("serving models ", absl::StrJoin(Names(repository_.models()), ", ")));
    }
  }
  const absl::Status errors = Join(changes->errors);
  if (changes->changed() || !errors.ok()) {
    metrics_->CountReload(errors.ok() ? Metrics::ReloadResult::kOk
                                      : Metrics::ReloadResult::kFailed);
  }
  if (!errors.ok()) {
    return absl::Status(errors.code(), absl::StrCat("reload: ", errors.message(),
                                                    " (its previous version, if any, stays)"));
  }
  return absl::OkStatus();
}

void Server::PublishFailures() {
  std::vector<v1::UnavailableModel> unavailable;
  for (const ModelRepository::Failure& failure : repository_.failures()) {
    v1::UnavailableModel& u = unavailable.emplace_back();
    u.set_folder(failure.dir);
    u.set_reason(std::string(failure.status.message()));
    for (const auto& m : repository_.models()) {
      if (m->dir == failure.dir) u.set_serving(m->name);
    }
  }
  metrics_->SetUnavailableModels(unavailable.size());
  grpc_service_.SetUnavailable(std::move(unavailable));
}

absl::Status Server::Serve(const std::vector<std::shared_ptr<const ServedModel>>& models) {
  InferenceService::Options service_options;
  service_options.threads = options_.threads;
  ASSIGN_OR_RETURN(std::unique_ptr<InferenceService> service,
                   InferenceService::Create(models, service_options, clock_, metrics_.get()));
  grpc_service_.SetBackend(service.get());
  // No request enters the previous service any more: it answers what it holds and stops.
  std::unique_ptr<InferenceService> previous = std::exchange(service_, std::move(service));
  if (previous != nullptr) previous->Shutdown();
  grpc::HealthCheckServiceInterface* health = grpc_server_->GetHealthCheckService();
  for (const auto& m : models) health->SetServingStatus(m->name, true);
  return absl::OkStatus();
}

InferenceService& Server::service() {
  absl::MutexLock lock(&mu_);
  return *service_;
}

void Server::Shutdown(absl::Duration grace) {
  absl::MutexLock lock(&mu_);
  if (shut_down_) return;
  shut_down_ = true;
  if (grpc_server_ != nullptr) grpc_server_->GetHealthCheckService()->Shutdown();
  // Answer everything queued now (no waiting for batch timeouts); requests arriving from here
  // on get UNAVAILABLE, so clients retry elsewhere.
  if (service_ != nullptr) service_->Shutdown();
  // Then close the listener; calls still open (streams) get the grace period to end.
  if (grpc_server_ != nullptr) grpc_server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
}

}  // namespace adasoftmax::server
