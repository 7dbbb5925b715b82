#ifndef ADASOFTMAX_SERVER_SERVER_H_
#define ADASOFTMAX_SERVER_SERVER_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "prometheus/exposer.h"
#include "prometheus/registry.h"
#include "server/batch_scheduler.h"
#include "server/clock.h"
#include "server/grpc_service.h"
#include "server/inference_service.h"
#include "server/metrics.h"
#include "server/model_repository.h"

namespace adasoftmax::server {

struct ServerOptions {
  // The model repository (see model_repository.h). REQUIRES: non-empty.
  std::string model_repository;
  // gRPC listening address; port 0 picks a free port (see Server::address()).
  // Default: 127.0.0.1:50051.
  std::string address = "127.0.0.1:50051";
  // Address of the Prometheus /metrics endpoint; port 0 picks a free port; empty disables it.
  // Default: 127.0.0.1:9464.
  std::string metrics_address = "127.0.0.1:9464";
  // Model defaults; see RepositoryOptions.
  RepositoryOptions repository;
  // Batch worker threads. REQUIRES: >= 1. Default: 2.
  int threads = 2;
  // Largest request message accepted; larger ones get RESOURCE_EXHAUSTED from gRPC.
  // Default: 4 MiB.
  int max_message_bytes = 4 << 20;
  // What LoadModels does when some model does not load: fail (true), or serve the models that
  // load and list the others as unavailable, as after a reload (false; it still fails when no
  // model loads). Default: true.
  bool require_every_model = true;
  // PEM files. With a certificate and key the server speaks TLS only; with a client CA as well
  // it requires and verifies client certificates (mTLS).
  std::string tls_cert;
  std::string tls_key;
  std::string tls_client_ca;
};

// The adasoftmax server: gRPC (SoftmaxService, grpc.health.v1.Health, server reflection) and
// the Prometheus endpoint around an InferenceService. Lifecycle: Start (listening; health
// NOT_SERVING, RPCs UNAVAILABLE) -> LoadModels (health SERVING) -> ReloadModels, any number of
// times -> Shutdown. The health service reports the server as "" and kServiceName, and each
// model under its name: SERVING while it is served, NOT_SERVING once a reload removed it (or
// at shutdown), unknown (NOT_FOUND) before it was first served. Thread-safe.
class Server {
 public:
  using LogFn = std::function<void(const std::string&)>;

  // Binds both endpoints. `log` (may be empty) receives one line per event.
  static absl::StatusOr<std::unique_ptr<Server>> Start(const ServerOptions& options,
                                                       LogFn log = {}, const Clock* clock = nullptr);
  ~Server();

  // Loads every model of the repository, then reports SERVING. When a model does not load:
  // with require_every_model, nothing is served, the health stays NOT_SERVING and the error
  // names every such model; without, the others are served and it is listed as unavailable
  // (the same error when none loads). REQUIRES: called once.
  absl::Status LoadModels() ABSL_LOCKS_EXCLUDED(mu_);

  // Reads the repository again (ModelRepository::Update) and, when a model changed, came or
  // went, serves the new set while requests keep flowing: requests arriving from then on go to
  // it, those already queued are answered by the previous set. Unchanged models are not read
  // again; a changed one is held twice until the swap. The health stays SERVING. An error
  // names every model that did not load (each keeps its previous version, if any, and
  // ListModels lists its folder as unavailable until its files change and load), or says why
  // the repository cannot be read (nothing changes). REQUIRES: LoadModels succeeded.
  absl::Status ReloadModels() ABSL_LOCKS_EXCLUDED(mu_);

  // Reports NOT_SERVING, answers every queued request at once and stops the workers (new
  // requests get UNAVAILABLE), then closes the listener, giving calls still open (streams) up
  // to `grace` before they are cancelled. Idempotent.
  void Shutdown(absl::Duration grace) ABSL_LOCKS_EXCLUDED(mu_);

  // The bound addresses, with the actual port when port 0 was asked for.
  const std::string& address() const { return address_; }
  int port() const { return port_; }
  const std::string& metrics_address() const { return metrics_address_; }

  prometheus::Registry& registry() { return *registry_; }
  // REQUIRES: LoadModels succeeded; valid until the next reload.
  InferenceService& service() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  Server(const ServerOptions& options, LogFn log, const Clock* clock);

  // Serves `models` from a new InferenceService, then retires the previous one, and reports
  // each of them SERVING (ReloadModels reports the models it unloads NOT_SERVING).
  absl::Status Serve(const std::vector<std::shared_ptr<const ServedModel>>& models)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Tells ListModels and the metrics which folders of the repository do not load.
  void PublishFailures() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const ServerOptions options_;
  const LogFn log_;
  RealClock real_clock_;
  const Clock* const clock_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<ProcessCollector> process_collector_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  SoftmaxGrpcService grpc_service_;
  std::unique_ptr<grpc::Server> grpc_server_;
  std::string address_;
  int port_ = 0;
  std::string metrics_address_;
  absl::Mutex mu_;  // serialises loads, reloads and Shutdown
  ModelRepository repository_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<InferenceService> service_ ABSL_GUARDED_BY(mu_);
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
};

// Replaces the port of "host:port" (host may be "[v6]").
std::string WithPort(const std::string& address, int port);

}  // namespace adasoftmax::server

#endif  // ADASOFTMAX_SERVER_SERVER_H_
