#ifndef ADASOFTMAX_SERVER_GRPC_SERVICE_H_
#define ADASOFTMAX_SERVER_GRPC_SERVICE_H_

#include <atomic>

#include "adasoftmax/v1/adasoftmax.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "server/inference_service.h"

namespace adasoftmax::server {

// The gRPC face of InferenceService (callback API): turns the call's deadline and
// cancellation into a CallContext, forwards, and converts the status in one place
// (ToGrpcStatus). Until a backend is attached every call gets UNAVAILABLE. Thread-safe.
class SoftmaxGrpcService final : public v1::SoftmaxService::CallbackService {
 public:
  // Attaches the backend once the models are loaded. REQUIRES: `backend` outlives the gRPC
  // server this service is registered with (until its Shutdown returns); called at most once.
  void SetBackend(InferenceService* backend) { backend_.store(backend); }

  grpc::ServerUnaryReactor* TopKSoftmax(grpc::CallbackServerContext* context,
                                        const v1::TopKSoftmaxRequest* request,
                                        v1::TopKSoftmaxResponse* response) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const v1::ListModelsRequest* request,
                                       v1::ListModelsResponse* response) override;
  grpc::ServerBidiReactor<v1::TopKSoftmaxRequest, v1::TopKSoftmaxStreamResponse>*
  TopKSoftmaxStream(grpc::CallbackServerContext* context) override;

 private:
  std::atomic<InferenceService*> backend_{nullptr};
};

}  // namespace adasoftmax::server

#endif  // ADASOFTMAX_SERVER_GRPC_SERVICE_H_
