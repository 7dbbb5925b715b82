#ifndef ADASOFTMAX_SERVER_GRPC_SERVICE_H_
#define ADASOFTMAX_SERVER_GRPC_SERVICE_H_

#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "adasoftmax/v1/adasoftmax.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "server/inference_service.h"

namespace adasoftmax::server {

// The gRPC face of InferenceService (callback API): turns the call's deadline and
// cancellation into a CallContext, forwards, and converts the status in one place
// (ToGrpcStatus). Until a backend is attached every call gets UNAVAILABLE. Thread-safe.
class SoftmaxGrpcService final : public v1::SoftmaxService::CallbackService {
 public:
  // Attaches `backend` (nullptr: none) for the requests arriving from now on, those of open
  // streams included. Once this returns no call is entering the previous backend, so after
  // its Shutdown nothing refers to it. REQUIRES: `backend` lives until it is replaced or the
  // gRPC server this service is registered with has shut down.
  void SetBackend(InferenceService* backend) ABSL_LOCKS_EXCLUDED(mu_);
  // The model folders ListModels reports as unavailable from now on.
  void SetUnavailable(std::vector<v1::UnavailableModel> unavailable) ABSL_LOCKS_EXCLUDED(mu_);

  // Forwards one request to the backend (see InferenceService::TopKSoftmax), or answers
  // UNAVAILABLE while there is none.
  void Forward(const v1::TopKSoftmaxRequest* request, v1::TopKSoftmaxResponse* response,
               CallContext call, InferenceService::DoneFn done) ABSL_LOCKS_EXCLUDED(mu_);
  // Tells the backend that a caller went away.
  void NotifyCancelled() ABSL_LOCKS_EXCLUDED(mu_);

  grpc::ServerUnaryReactor* TopKSoftmax(grpc::CallbackServerContext* context,
                                        const v1::TopKSoftmaxRequest* request,
                                        v1::TopKSoftmaxResponse* response) override;
  grpc::ServerUnaryReactor* TopKSoftmaxBatch(grpc::CallbackServerContext* context,
                                             const v1::TopKSoftmaxBatchRequest* request,
                                             v1::TopKSoftmaxBatchResponse* response) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const v1::ListModelsRequest* request,
                                       v1::ListModelsResponse* response) override;
  grpc::ServerBidiReactor<v1::TopKSoftmaxRequest, v1::TopKSoftmaxStreamResponse>*
  TopKSoftmaxStream(grpc::CallbackServerContext* context) override;

 private:
  // Readers hold it while entering the backend, so that SetBackend waits for them.
  absl::Mutex mu_;
  InferenceService* backend_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::vector<v1::UnavailableModel> unavailable_ ABSL_GUARDED_BY(mu_);
};

}  // namespace adasoftmax::server

#endif  // ADASOFTMAX_SERVER_GRPC_SERVICE_H_
