#include "service/rpc/grpc_status.h"

#include <string>

namespace preflight::rpc {
namespace {

// A static_cast between the two enums is only correct while every canonical
// code has the same number in both; these fail the build if one ever drifts.
#define PREFLIGHT_SAME_CODE(absl_name, grpc_name)                  \
  static_assert(static_cast<int>(absl::StatusCode::absl_name) ==   \
                    static_cast<int>(grpc::StatusCode::grpc_name), \
                #absl_name " differs between absl::StatusCode and grpc::StatusCode")
PREFLIGHT_SAME_CODE(kOk, OK);
PREFLIGHT_SAME_CODE(kCancelled, CANCELLED);
PREFLIGHT_SAME_CODE(kUnknown, UNKNOWN);
PREFLIGHT_SAME_CODE(kInvalidArgument, INVALID_ARGUMENT);
PREFLIGHT_SAME_CODE(kDeadlineExceeded, DEADLINE_EXCEEDED);
PREFLIGHT_SAME_CODE(kNotFound, NOT_FOUND);
PREFLIGHT_SAME_CODE(kAlreadyExists, ALREADY_EXISTS);
PREFLIGHT_SAME_CODE(kPermissionDenied, PERMISSION_DENIED);
PREFLIGHT_SAME_CODE(kResourceExhausted, RESOURCE_EXHAUSTED);
PREFLIGHT_SAME_CODE(kFailedPrecondition, FAILED_PRECONDITION);
PREFLIGHT_SAME_CODE(kAborted, ABORTED);
PREFLIGHT_SAME_CODE(kOutOfRange, OUT_OF_RANGE);
PREFLIGHT_SAME_CODE(kUnimplemented, UNIMPLEMENTED);
PREFLIGHT_SAME_CODE(kInternal, INTERNAL);
PREFLIGHT_SAME_CODE(kUnavailable, UNAVAILABLE);
PREFLIGHT_SAME_CODE(kDataLoss, DATA_LOSS);
PREFLIGHT_SAME_CODE(kUnauthenticated, UNAUTHENTICATED);
#undef PREFLIGHT_SAME_CODE

constexpr int kLastCanonicalCode = static_cast<int>(grpc::StatusCode::UNAUTHENTICATED);

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  const int code = static_cast<int>(status.error_code());
  // A peer may send a number outside the canonical range; absl would keep it
  // as an unnamed code, which no caller switches on.
  if (code < 0 || code > kLastCanonicalCode) {
    return absl::UnknownError(status.error_message());
  }
  return absl::Status(static_cast<absl::StatusCode>(code), status.error_message());
}

const char* GrpcCodeName(grpc::StatusCode code) {
  static constexpr const char* kNames[] = {"OK",
                                           "CANCELLED",
                                           "UNKNOWN",
                                           "INVALID_ARGUMENT",
                                           "DEADLINE_EXCEEDED",
                                           "NOT_FOUND",
                                           "ALREADY_EXISTS",
                                           "PERMISSION_DENIED",
                                           "RESOURCE_EXHAUSTED",
                                           "FAILED_PRECONDITION",
                                           "ABORTED",
                                           "OUT_OF_RANGE",
                                           "UNIMPLEMENTED",
                                           "INTERNAL",
                                           "UNAVAILABLE",
                                           "DATA_LOSS",
                                           "UNAUTHENTICATED"};
  static_assert(sizeof(kNames) / sizeof(kNames[0]) == kLastCanonicalCode + 1);
  const int i = static_cast<int>(code);
  return i >= 0 && i <= kLastCanonicalCode ? kNames[i] : "UNKNOWN";
}

}  // namespace preflight::rpc
