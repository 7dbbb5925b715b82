#ifndef ADASOFTMAX_SERVER_GRPC_STATUS_H_
#define ADASOFTMAX_SERVER_GRPC_STATUS_H_

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace adasoftmax::server {

// The one place where the server turns an absl::Status into the status a caller sees. The code
// is kept (the two enums share their values) and so is the message.
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace adasoftmax::server

#endif  // ADASOFTMAX_SERVER_GRPC_STATUS_H_
