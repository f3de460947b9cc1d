// preflight-server: the gRPC adapter over PreflightCore, plus lifecycle
// (stores, the zygote worker, health, reflection, draining).
//
//   auto server = Server::Start(config);   // binds, starts the zygote
//   std::cout << (*server)->port();
//   ... SIGTERM: (*server)->Shutdown(absl::Seconds(30));
#pragma once

#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "service/server/core.h"

namespace prometheus {
class Registry;
}

namespace preflight::server {

struct ServerConfig {
  std::string address = "127.0.0.1:50051";  // HOST:PORT; port 0 picks one.
  // Where verdicts and artifacts live: a directory (SQLite verdicts.db +
  // blobs/) or a backend URL; store/store_factory.h lists the specs.
  std::string store = "preflight-store";
  // Create a new, empty verdict store even where the store directory is in
  // use but its verdict file is missing or empty (otherwise a start-up error).
  bool init_store = false;
  std::string worker_binary;  // preflight-worker; empty: next to this binary.
  // The zygote's liveness bound (WorkerPoolConfig::heartbeat_timeout): one
  // silent for this long is killed and replaced, its checks WORKER_CRASHED,
  // health NOT_SERVING meanwhile. Zero: no heartbeat.
  absl::Duration worker_heartbeat_timeout = absl::Seconds(5);
  int64_t max_upload_bytes = int64_t{2} << 30;  // Per uploaded artifact.
  // Refuse to start on a kernel without Landlock instead of running jobs
  // with seccomp and rlimits only.
  bool require_landlock = false;
  // TLS: PEM certificate chain and private key files; both or neither.
  // With `tls_client_ca_file` too, clients must present a certificate
  // signed by that CA (mutual TLS). Without them the port is plaintext.
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_client_ca_file;
  // Bearer tokens -> tenants (auth.h's file format). Empty: no
  // authentication, every caller may do everything (the loopback default).
  std::string tokens_file;
  // PEM Ed25519 private key: every stored verdict is signed with it
  // (crypto/signature.h). Empty: verdicts are unsigned.
  std::string signing_key_file;
  // HOST:PORT of a plaintext listener serving only the gRPC health service
  // (port 0 picks one): the kubelet's native gRPC probes cannot speak TLS.
  // Empty: none.
  std::string health_address;
  // Blob quotas and retention (store/blob_retention.h): bytes a tenant may
  // hold (0: unlimited), per-tenant overrides, and how long a blob nobody
  // uses is kept (zero: forever). A server without --tokens is one tenant,
  // "anonymous".
  int64_t tenant_quota_bytes = 0;
  absl::flat_hash_map<std::string, int64_t> tenant_quota_overrides;
  absl::Duration blob_retention = absl::ZeroDuration();
  // How often the retention sweep runs (also once at start-up).
  absl::Duration blob_sweep_interval = absl::Hours(1);
  CoreConfig core;

  // INVALID_ARGUMENT naming the field.
  absl::Status Validate() const;
};

class Server {
 public:
  // `registry` receives the service's metrics (exposed by the caller, e.g.
  // on --metrics-address); it must outlive the server.
  static absl::StatusOr<std::unique_ptr<Server>> Start(const ServerConfig& config,
                                                       prometheus::Registry& registry);
  ~Server();

  int port() const;
  // The health listener's port (0 without health_address).
  int health_port() const;
  // The store being served (a directory, or postgresql://USER@HOST:PORT/DB
  // without the password).
  const std::string& store_name() const;
  // Seconds the zygote took to start (exec + LibTorch load), and its pid.
  double worker_start_seconds() const;
  int worker_pid() const;
  // The kernel's Landlock ABI inside a job (0: jobs run without the file
  // sandbox; see ServerConfig::require_landlock).
  int landlock_abi() const;
  // What start-up found, for the start-up log: whether callers are
  // authenticated, the port speaks TLS, and the signing key's id ("" if none).
  bool authenticates() const;
  bool tls() const;
  std::string signing_key_id() const;
  // The verdict store's integrity check at start (VerdictStore::CheckIntegrity):
  // DATA_LOSS naming altered reports; UNIMPLEMENTED for a backend without it.
  absl::Status store_integrity() const;
  // Stops taking new checks (UNAVAILABLE, health NOT_SERVING), lets running
  // ones finish for up to `grace`, then stops.
  void Shutdown(absl::Duration grace);
  void Wait();

  struct Impl;

 private:
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace preflight::server
