// The one place absl::Status and grpc::Status convert into each other, used
// by the server's gRPC adapter and by the client alike. The two libraries
// number their canonical codes identically (grpc_status.cc proves it at
// compile time), so a code crosses the wire unchanged and the message is
// kept verbatim.
//
//   return ToGrpcStatus(core->Check(...).status());        // server side
//   absl::Status s = FromGrpcStatus(stub->Check(&ctx, req, &resp));  // client
#pragma once

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace preflight::rpc {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

// The canonical name of a gRPC code ("INVALID_ARGUMENT"), for bounded metric
// labels; "UNKNOWN" for values outside the canonical range.
const char* GrpcCodeName(grpc::StatusCode code);

}  // namespace preflight::rpc
