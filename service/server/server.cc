#include "service/server/server.h"

#include <unistd.h>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "preflight/v1/preflight.grpc.pb.h"
#include "service/crypto/signature.h"
#include "service/rpc/grpc_status.h"
#include "service/server/auth.h"
#include "service/store/blob_retention.h"
#include "service/store/store_factory.h"

namespace preflight::server {
namespace {

using rpc::ToGrpcStatus;

constexpr int64_t kMaxChunkBytes = 4 << 20;

class Service final : public v1::Preflight::Service {
 public:
  // `tokens` null: no authentication (every caller may do everything).
  Service(PreflightCore* core, int64_t max_upload_bytes, ServiceMetrics* metrics,
          const TokenTable* tokens)
      : core_(core), max_upload_bytes_(max_upload_bytes), metrics_(metrics), tokens_(tokens) {}

  grpc::Status Check(grpc::ServerContext* ctx, const v1::CheckRequest* req,
                     v1::CheckResponse* resp) override {
    return Timed("Check", [&] {
      auto who = Who(ctx);
      if (!who.ok()) return ToGrpcStatus(who.status());
      if (*who != nullptr) {
        if (absl::Status s = AuthorizeCheck(**who, req->job_id()); !s.ok()) return ToGrpcStatus(s);
      }
      auto r = core_->Check(
          *req, absl::FromChrono(ctx->deadline()), [ctx] { return ctx->IsCancelled(); },
          *who != nullptr ? (*who)->tenant : "");
      if (!r.ok()) return ToGrpcStatus(r.status());
      *resp = *std::move(r);
      return grpc::Status::OK;
    });
  }

  grpc::Status Upload(grpc::ServerContext* ctx, grpc::ServerReader<v1::UploadRequest>* reader,
                      v1::UploadResponse* resp) override {
    return Timed("Upload", [&] {
      auto who = Who(ctx);
      if (!who.ok()) return ToGrpcStatus(who.status());
      if (*who != nullptr) {
        if (absl::Status s = AuthorizeCheck(**who, ""); !s.ok()) return ToGrpcStatus(s);
      }
      return DoUpload(reader, resp, *who != nullptr ? (*who)->tenant : "anonymous");
    });
  }

  grpc::Status GetVerdict(grpc::ServerContext* ctx, const v1::GetVerdictRequest* req,
                          v1::GetVerdictResponse* resp) override {
    return Timed("GetVerdict", [&] {
      auto who = Who(ctx);
      if (!who.ok()) return ToGrpcStatus(who.status());
      // A job id's owner follows from its name: refused before the lookup,
      // so whether another tenant's job id exists is never revealed.
      if (*who != nullptr && req->key_case() == v1::GetVerdictRequest::kJobId) {
        if (absl::Status s = AuthorizeRead(**who, req->job_id()); !s.ok()) return ToGrpcStatus(s);
      }
      auto r = core_->GetVerdict(*req);
      if (!r.ok()) return ToGrpcStatus(r.status());
      if (*who != nullptr && req->key_case() == v1::GetVerdictRequest::kRequestDigest &&
          !AuthorizeRead(**who, r->job_id()).ok()) {
        return ToGrpcStatus(absl::PermissionDeniedError(absl::StrCat(
            "request_digest: the verdict is bound to a job id of another tenant than '",
            (*who)->tenant, "'")));
      }
      *resp = *std::move(r);
      return grpc::Status::OK;
    });
  }

 private:
  // The authenticated caller; nullptr when the server authenticates nobody.
  absl::StatusOr<const Principal*> Who(grpc::ServerContext* ctx) const {
    if (tokens_ == nullptr) return nullptr;
    const auto& md = ctx->client_metadata();
    auto it = md.find("authorization");
    const std::string value =
        it == md.end() ? "" : std::string(it->second.data(), it->second.size());
    // Only names the TLS layer verified against --tls-client-ca.
    std::vector<std::string> common_names;
    const std::shared_ptr<const grpc::AuthContext> auth = ctx->auth_context();
    if (auth != nullptr && auth->IsPeerAuthenticated()) {
      for (const grpc::string_ref& cn : auth->FindPropertyValues("x509_common_name")) {
        common_names.emplace_back(cn.data(), cn.size());
      }
    }
    return Authenticate(*tokens_, value, common_names);
  }

  template <typename F>
  grpc::Status Timed(const char* method, F&& handler) {
    const absl::Time start = absl::Now();
    grpc::Status s = handler();
    metrics_->RecordRpc(method, rpc::GrpcCodeName(s.error_code()),
                        absl::ToDoubleSeconds(absl::Now() - start));
    return s;
  }

  grpc::Status DoUpload(grpc::ServerReader<v1::UploadRequest>* reader, v1::UploadResponse* resp,
                        const std::string& tenant) {
    auto writer = core_->blobs()->NewWriter();
    v1::UploadRequest req;
    int64_t expected = -1, total = 0;
    while (reader->Read(&req)) {
      if (static_cast<int64_t>(req.chunk().size()) > kMaxChunkBytes) {
        return ToGrpcStatus(absl::InvalidArgumentError(absl::StrCat(
            "chunk: ", req.chunk().size(), " bytes; at most ", kMaxChunkBytes, " per message")));
      }
      if (req.expected_size() > 0) expected = req.expected_size();
      if (expected > max_upload_bytes_) {
        return ToGrpcStatus(absl::ResourceExhaustedError(
            absl::StrCat("expected_size: ", expected, " bytes is over the upload limit of ",
                         max_upload_bytes_)));
      }
      total += static_cast<int64_t>(req.chunk().size());
      if (total > max_upload_bytes_) {
        return ToGrpcStatus(absl::ResourceExhaustedError(
            absl::StrCat("upload is over the limit of ", max_upload_bytes_, " bytes")));
      }
      if (absl::Status s = writer->Append(req.chunk()); !s.ok()) return ToGrpcStatus(s);
      metrics_->RecordUploadBytes(static_cast<int64_t>(req.chunk().size()));
    }
    if (total == 0) return ToGrpcStatus(absl::InvalidArgumentError("chunk: the upload was empty"));
    if (expected >= 0 && expected != total) {
      return ToGrpcStatus(absl::InvalidArgumentError(
          absl::StrCat("expected_size: announced ", expected, " bytes but received ", total)));
    }
    const absl::Time start = absl::Now();
    auto info = writer->Commit();
    metrics_->RecordStoreOperation("blob_put", absl::ToDoubleSeconds(absl::Now() - start));
    if (!info.ok()) {
      metrics_->RecordStoreError();
      return ToGrpcStatus(info.status());
    }
    if (store::BlobRetention* retention = core_->retention(); retention != nullptr) {
      // Charged once stored (the sha256 is known only now); refused, the
      // bytes this upload added go again, and nothing stored before is lost.
      auto pin = retention->Use("upload", tenant, info->sha256);
      if (!pin.ok()) {
        if (absl::IsResourceExhausted(pin.status())) {
          metrics_->RecordQuotaRefusal();
          retention->DiscardRefused(info->sha256, info->already_present).IgnoreError();
        }
        return ToGrpcStatus(pin.status());
      }
    }
    resp->set_sha256(info->sha256);
    resp->set_size_bytes(info->size);
    resp->set_already_present(info->already_present);
    return grpc::Status::OK;
  }

 private:
  PreflightCore* core_;
  int64_t max_upload_bytes_;
  ServiceMetrics* metrics_;
  const TokenTable* tokens_;
};

absl::StatusOr<std::string> ReadPemFile(const std::string& path, const char* flag) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::FailedPreconditionError(absl::StrCat(flag, ": ", path, " cannot be read"));
  std::ostringstream ss;
  ss << in.rdbuf();
  std::string pem = std::move(ss).str();
  if (pem.find("-----BEGIN ") == std::string::npos) {
    return absl::FailedPreconditionError(absl::StrCat(flag, ": ", path, " holds no PEM block"));
  }
  return pem;
}

// Plaintext, or TLS (mutual with a client CA) from the configured files.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> Credentials(const ServerConfig& c) {
  if (c.tls_cert_file.empty()) return grpc::InsecureServerCredentials();
  auto cert = ReadPemFile(c.tls_cert_file, "tls_cert");
  if (!cert.ok()) return cert.status();
  auto key = ReadPemFile(c.tls_key_file, "tls_key");
  if (!key.ok()) return key.status();
  grpc::SslServerCredentialsOptions options(
      c.tls_client_ca_file.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                   : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  options.pem_key_cert_pairs.push_back({*key, *cert});
  if (!c.tls_client_ca_file.empty()) {
    auto ca = ReadPemFile(c.tls_client_ca_file, "tls_client_ca");
    if (!ca.ok()) return ca.status();
    options.pem_root_certs = *ca;
  }
  return grpc::SslServerCredentials(options);
}

std::string DefaultWorkerBinary() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return "preflight-worker";
  std::string self(buf, static_cast<size_t>(n));
  return self.substr(0, self.rfind('/') + 1) + "preflight-worker";
}

}  // namespace

struct Server::Impl {
  // The pool's threads call back into health (Worker), and the core's
  // checks' threads use the pool: the servers go first, then the core
  // (waiting for its threads), then the pool, then the rest.
  ~Impl() {
    StopSweeps();
    {
      std::lock_guard<std::mutex> lock(health_mu);
      grpc_server.reset();
      health_server.reset();
    }
    service.reset();
    core.reset();
    pool.reset();
  }

  // Health: SERVING while not draining and a zygote is up. Guards the two
  // gRPC server pointers too, which the pool's callbacks read.
  std::mutex health_mu;
  bool draining = false;
  bool worker_up = true;
  void ApplyHealth() {  // Requires health_mu.
    const bool serving = !draining && worker_up;
    if (grpc_server) grpc_server->GetHealthCheckService()->SetServingStatus(serving);
    if (health_server) health_server->GetHealthCheckService()->SetServingStatus(serving);
  }
  void Worker(bool up) {
    std::lock_guard<std::mutex> lock(health_mu);
    worker_up = up;
    ApplyHealth();
  }

  std::unique_ptr<ServiceMetrics> metrics;
  std::unique_ptr<TokenTable> tokens;
  std::unique_ptr<crypto::Ed25519Signer> signer;
  absl::Status store_integrity;
  bool tls = false;
  store::Stores stores;
  std::unique_ptr<store::BlobRetention> retention;
  std::unique_ptr<worker::WorkerPool> pool;
  std::unique_ptr<PreflightCore> core;
  std::unique_ptr<Service> service;
  std::unique_ptr<grpc::Server> grpc_server;
  int port = 0;
  // Plaintext, health service only (ServerConfig::health_address).
  std::unique_ptr<grpc::Server> health_server;
  int health_port = 0;

  // The retention sweep: once now, then every `interval` until StopSweeps.
  std::mutex sweep_mu;
  std::condition_variable sweep_cv;
  bool sweep_stop = false;
  std::thread sweeper;
  void SweepOnce() {
    const absl::Time start = absl::Now();
    auto r = retention->Sweep();
    if (!r.ok()) {
      metrics->RecordStoreError();
      std::fprintf(stderr, "preflight-server: blob sweep failed: %s\n",
                   std::string(r.status().message()).c_str());
      return;
    }
    const int64_t stored = retention->StoredBytes().value_or(-1);
    metrics->RecordBlobSweep(r->blobs_removed, r->bytes_removed, std::max<int64_t>(stored, 0));
    std::fprintf(stderr,
                 "preflight-server: blob sweep: removed %d blobs (%lld bytes) unused for %s, "
                 "%lld bytes referenced, %d not removable%s%s, %.3f s\n",
                 r->blobs_removed, static_cast<long long>(r->bytes_removed),
                 retention->options().retention > absl::ZeroDuration()
                     ? absl::FormatDuration(retention->options().retention).c_str()
                     : "ever (no retention)",
                 static_cast<long long>(stored), r->remove_failures,
                 r->first_error.ok() ? "" : ": ",
                 r->first_error.ok() ? "" : std::string(r->first_error.message()).c_str(),
                 absl::ToDoubleSeconds(absl::Now() - start));
  }
  void StartSweeps(absl::Duration interval) {
    sweeper = std::thread([this, interval] {
      std::unique_lock<std::mutex> lock(sweep_mu);
      while (!sweep_stop) {
        lock.unlock();
        SweepOnce();
        lock.lock();
        sweep_cv.wait_for(lock, absl::ToChronoMilliseconds(interval), [&] { return sweep_stop; });
      }
    });
  }
  void StopSweeps() {
    {
      std::lock_guard<std::mutex> lock(sweep_mu);
      sweep_stop = true;
    }
    sweep_cv.notify_all();
    if (sweeper.joinable()) sweeper.join();
  }
};

absl::Status ServerConfig::Validate() const {
  if (address.empty() || address.find(':') == std::string::npos) {
    return absl::InvalidArgumentError("address: expected HOST:PORT");
  }
  if (core.job_slots < 1 || core.job_slots > 1024) {
    return absl::InvalidArgumentError("job_slots: must be in [1, 1024]");
  }
  if (core.queue_size < 0 || core.queue_size > 100000) {
    return absl::InvalidArgumentError("queue_size: must be in [0, 100000]");
  }
  if (core.max_inline_bytes < 1 || core.max_inline_bytes > (int64_t{256} << 20)) {
    return absl::InvalidArgumentError("max_inline_bytes: must be in [1, 256 MiB]");
  }
  if (max_upload_bytes < 1) return absl::InvalidArgumentError("max_upload_bytes: must be > 0");
  if (core.job_memory_bytes < (int64_t{256} << 20)) {
    return absl::InvalidArgumentError("job_memory: must be at least 256 MiB");
  }
  if (core.max_job_timeout_seconds <= 0) {
    return absl::InvalidArgumentError("max_job_timeout: must be > 0");
  }
  if (tls_cert_file.empty() != tls_key_file.empty()) {
    return absl::InvalidArgumentError("tls_cert, tls_key: give both or neither");
  }
  if (!tls_client_ca_file.empty() && tls_cert_file.empty()) {
    return absl::InvalidArgumentError(
        "tls_client_ca: mutual TLS needs the server's own --tls-cert and --tls-key");
  }
  if (worker_heartbeat_timeout != absl::ZeroDuration() &&
      (worker_heartbeat_timeout < absl::Seconds(1) || worker_heartbeat_timeout > absl::Hours(1))) {
    // Under a second, a loaded host's scheduling delay could pass for a
    // stuck zygote.
    return absl::InvalidArgumentError(
        "worker_heartbeat_timeout: must be 0 (off) or in [1, 3600] seconds");
  }
  if (tenant_quota_bytes < 0) return absl::InvalidArgumentError("tenant_quota: must be >= 0");
  for (const auto& [tenant, bytes] : tenant_quota_overrides) {
    if (tenant.empty() || bytes < 0) {
      return absl::InvalidArgumentError(
          "tenant_quota_overrides: expected TENANT=MB with a tenant name and MB >= 0");
    }
  }
  if (blob_retention < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("blob_retention: must be >= 0 (0: keep forever)");
  }
  if (blob_sweep_interval < absl::Seconds(1)) {
    return absl::InvalidArgumentError("blob_sweep_interval: must be at least 1 second");
  }
  if (core.lease_ttl < absl::Milliseconds(200) || core.lease_ttl > absl::Hours(1)) {
    return absl::InvalidArgumentError("lease_ttl: must be in [0.2, 3600] seconds");
  }
  return absl::OkStatus();
}

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Server::~Server() {
  if (impl_->grpc_server) Shutdown(absl::ZeroDuration());
}

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const ServerConfig& config,
                                                      prometheus::Registry& registry) {
  if (absl::Status s = config.Validate(); !s.ok()) return s;
  auto impl = std::make_unique<Impl>();
  impl->metrics = std::make_unique<ServiceMetrics>(registry);
  if (!config.tokens_file.empty()) {
    auto tokens = TokenTable::FromFile(config.tokens_file);
    if (!tokens.ok()) return tokens.status();
    impl->tokens = std::make_unique<TokenTable>(*std::move(tokens));
  }
  if (!config.signing_key_file.empty()) {
    auto signer = crypto::Ed25519Signer::FromPemFile(config.signing_key_file);
    if (!signer.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat("signing_key: ", signer.status().message()));
    }
    impl->signer = *std::move(signer);
  }
  auto credentials = Credentials(config);
  if (!credentials.ok()) return credentials.status();
  impl->tls = !config.tls_cert_file.empty();
  auto stores = store::OpenStore(config.store, config.max_upload_bytes, config.init_store);
  if (!stores.ok()) return stores.status();
  impl->stores = *std::move(stores);
  impl->store_integrity = impl->stores.verdicts->CheckIntegrity();
  worker::WorkerPoolConfig wc;
  wc.worker_binary = config.worker_binary.empty() ? DefaultWorkerBinary() : config.worker_binary;
  wc.heartbeat_timeout = config.worker_heartbeat_timeout;
  // Down (died, or stopped answering its heartbeat): NOT_SERVING until the
  // replacement zygote is up.
  wc.on_down = [i = impl.get()] { i->Worker(false); };
  wc.on_restart = [i = impl.get()] {
    i->metrics->RecordZygoteRestart();
    i->Worker(true);
  };
  auto pool = worker::WorkerPool::Start(wc);
  if (!pool.ok()) return pool.status();
  impl->pool = *std::move(pool);
  if (config.require_landlock && impl->pool->landlock_abi() == 0) {
    return absl::FailedPreconditionError(
        "require_landlock: this kernel has no Landlock, so jobs could read any file the "
        "server's user can");
  }
  // The device the node offers; the server itself never touches CUDA.
  const bool gpu = access("/dev/nvidia0", F_OK) == 0;
  impl->metrics->SetBuildInfo(PREFLIGHT_VERSION, impl->pool->torch_version(), gpu ? "cuda" : "cpu");
  impl->core = std::make_unique<PreflightCore>(
      config.core, impl->stores.blobs.get(), impl->stores.verdicts.get(), impl->pool.get(),
      impl->metrics.get(), impl->signer.get(), impl->stores.leases.get());
  {
    store::RetentionOptions ro;
    ro.default_quota_bytes = config.tenant_quota_bytes;
    ro.tenant_quota_bytes = config.tenant_quota_overrides;
    ro.retention = config.blob_retention;
    impl->retention = std::make_unique<store::BlobRetention>(
        std::move(ro), impl->stores.ledger.get(), impl->stores.blobs.get(),
        [] { return absl::Now(); });
    impl->core->set_retention(impl->retention.get());
  }
  impl->service = std::make_unique<Service>(impl->core.get(), config.max_upload_bytes,
                                            impl->metrics.get(), impl->tokens.get());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(config.address, *credentials, &impl->port);
  // Inline artifacts up to the limit, for both model and batch, plus slack.
  builder.SetMaxReceiveMessageSize(
      static_cast<int>(std::min<int64_t>(2 * config.core.max_inline_bytes + (1 << 20), INT32_MAX)));
  builder.SetMaxSendMessageSize(64 << 20);
  builder.RegisterService(impl->service.get());
  {
    std::lock_guard<std::mutex> lock(impl->health_mu);
    impl->grpc_server = builder.BuildAndStart();
  }
  if (!impl->grpc_server || impl->port == 0) {
    return absl::UnavailableError(absl::StrCat(
        "address: cannot listen on ", config.address,
        impl->tls ? " (with TLS: are --tls-cert and --tls-key a matching PEM pair?)" : ""));
  }
  if (!config.health_address.empty()) {
    // No service registered: the default health service is all it serves.
    grpc::ServerBuilder health;
    health.AddListeningPort(config.health_address, grpc::InsecureServerCredentials(),
                            &impl->health_port);
    std::lock_guard<std::mutex> lock(impl->health_mu);
    impl->health_server = health.BuildAndStart();
    if (!impl->health_server || impl->health_port == 0) {
      return absl::UnavailableError(
          absl::StrCat("health_address: cannot listen on ", config.health_address));
    }
  }
  {
    std::lock_guard<std::mutex> lock(impl->health_mu);
    impl->ApplyHealth();
  }
  // At start-up, then periodically; without a retention it only refreshes
  // the stored-bytes gauge.
  impl->StartSweeps(config.blob_sweep_interval);
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

int Server::port() const { return impl_->port; }
int Server::health_port() const { return impl_->health_port; }
const std::string& Server::store_name() const { return impl_->stores.name; }
double Server::worker_start_seconds() const { return impl_->pool->last_start_seconds(); }
int Server::worker_pid() const { return impl_->pool->zygote_pid(); }
int Server::landlock_abi() const { return impl_->pool->landlock_abi(); }
bool Server::authenticates() const { return impl_->tokens != nullptr; }
bool Server::tls() const { return impl_->tls; }
std::string Server::signing_key_id() const { return impl_->signer ? impl_->signer->key_id() : ""; }
absl::Status Server::store_integrity() const { return impl_->store_integrity; }

void Server::Shutdown(absl::Duration grace) {
  if (!impl_->grpc_server) return;
  impl_->core->StartDraining();
  {
    std::lock_guard<std::mutex> lock(impl_->health_mu);
    impl_->draining = true;
    impl_->ApplyHealth();
  }
  impl_->grpc_server->Shutdown(absl::ToChronoTime(absl::Now() + grace));
  impl_->grpc_server->Wait();
  std::lock_guard<std::mutex> lock(impl_->health_mu);
  impl_->grpc_server.reset();
  if (impl_->health_server) {
    impl_->health_server->Shutdown(absl::ToChronoTime(absl::Now()));
    impl_->health_server.reset();
  }
}

void Server::Wait() {
  if (impl_->grpc_server) impl_->grpc_server->Wait();
}

}  // namespace preflight::server
