// The client side of the Preflight service: Check (uploading large files
// through Upload first) and GetVerdict, over the generated gRPC stub.
// `server` is any form server_target.h accepts (HOST:PORT, a comma-separated
// list, dns:///NAME:PORT); calls are spread over its addresses by gRPC's
// round_robin policy, and a bad value is INVALID_ARGUMENT "server: ...".
//
//   Connection to{.server = "127.0.0.1:50051", .token = token, .tls_ca_file = "ca.pem"};
//   auto r = RemoteCheck(to, "m.pt", "b.pt", config, "job-42");
//   if (!r.ok()) ... r.status() carries the server's code and message
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "preflight/v1/preflight.pb.h"

namespace preflight::client {

// Files above this go through Upload; smaller ones travel inline.
inline constexpr int64_t kInlineThresholdBytes = 4 << 20;

// Where the server is and how to talk to it.
struct Connection {
  std::string server;  // HOST:PORT, H1:P1,H2:P2 or dns:///NAME:PORT (server_target.h).
  // Sent as `authorization: Bearer TOKEN` on every call; empty: none.
  std::string token;
  // TLS: with the system's roots, or those of `tls_ca_file` (which implies
  // tls). Plaintext otherwise.
  bool tls = false;
  std::string tls_ca_file;
  // A client certificate and key (PEM files), for a server with mutual TLS.
  std::string tls_cert_file;
  std::string tls_key_file;
  // The name the server's certificate must carry, when not the host of
  // `server` (e.g. connecting by IP to a certificate issued for a name).
  std::string tls_server_name;
};

// The calls fail with FAILED_PRECONDITION naming the file when a TLS file
// cannot be read, and otherwise with the server's code and message.
absl::StatusOr<v1::CheckResponse> RemoteCheck(const Connection& server,
                                              const std::string& model_path,
                                              const std::string& batch_path,
                                              const v1::CheckConfig& config,
                                              const std::string& job_id);

// Exactly one of job_id / digest is set.
absl::StatusOr<v1::GetVerdictResponse> RemoteVerdict(const Connection& server,
                                                     const std::string& job_id,
                                                     const std::string& digest,
                                                     double timeout_seconds);

// Streams a file through Upload; returns its sha256.
absl::StatusOr<std::string> UploadFile(const Connection& server, const std::string& path);

}  // namespace preflight::client
