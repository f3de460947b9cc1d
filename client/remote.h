// The client side of the Preflight service: Check (uploading large files
// through Upload first) and GetVerdict, over the generated gRPC stub.
// `server` is any form server_target.h accepts (HOST:PORT, a comma-separated
// list, dns:///NAME:PORT); calls are spread over its addresses by gRPC's
// round_robin policy, and a bad value is INVALID_ARGUMENT "server: ...".
//
//   auto r = RemoteCheck("127.0.0.1:50051", "m.pt", "b.pt", config, "job-42");
//   if (!r.ok()) ... r.status() carries the server's code and message
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "preflight/v1/preflight.pb.h"

namespace preflight::client {

// Files above this go through Upload; smaller ones travel inline.
inline constexpr int64_t kInlineThresholdBytes = 4 << 20;

absl::StatusOr<v1::CheckResponse> RemoteCheck(const std::string& server,
                                              const std::string& model_path,
                                              const std::string& batch_path,
                                              const v1::CheckConfig& config,
                                              const std::string& job_id);

// Exactly one of job_id / digest is set.
absl::StatusOr<v1::GetVerdictResponse> RemoteVerdict(const std::string& server,
                                                     const std::string& job_id,
                                                     const std::string& digest,
                                                     double timeout_seconds);

// Streams a file through Upload; returns its sha256.
absl::StatusOr<std::string> UploadFile(const std::string& server, const std::string& path);

}  // namespace preflight::client
