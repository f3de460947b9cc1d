#include "service/server/server.h"

#include <unistd.h>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "preflight/v1/preflight.grpc.pb.h"
#include "service/rpc/grpc_status.h"
#include "service/store/store_factory.h"

namespace preflight::server {
namespace {

using rpc::ToGrpcStatus;

constexpr int64_t kMaxChunkBytes = 4 << 20;

class Service final : public v1::Preflight::Service {
 public:
  Service(PreflightCore* core, int64_t max_upload_bytes, ServiceMetrics* metrics)
      : core_(core), max_upload_bytes_(max_upload_bytes), metrics_(metrics) {}

  grpc::Status Check(grpc::ServerContext* ctx, const v1::CheckRequest* req,
                     v1::CheckResponse* resp) override {
    return Timed("Check", [&] {
      auto r = core_->Check(*req, absl::FromChrono(ctx->deadline()),
                            [ctx] { return ctx->IsCancelled(); });
      if (!r.ok()) return ToGrpcStatus(r.status());
      *resp = *std::move(r);
      return grpc::Status::OK;
    });
  }

  grpc::Status Upload(grpc::ServerContext*, grpc::ServerReader<v1::UploadRequest>* reader,
                      v1::UploadResponse* resp) override {
    return Timed("Upload", [&] { return DoUpload(reader, resp); });
  }

  grpc::Status GetVerdict(grpc::ServerContext*, const v1::GetVerdictRequest* req,
                          v1::GetVerdictResponse* resp) override {
    return Timed("GetVerdict", [&] {
      auto r = core_->GetVerdict(*req);
      if (!r.ok()) return ToGrpcStatus(r.status());
      *resp = *std::move(r);
      return grpc::Status::OK;
    });
  }

 private:
  template <typename F>
  grpc::Status Timed(const char* method, F&& handler) {
    const absl::Time start = absl::Now();
    grpc::Status s = handler();
    metrics_->RecordRpc(method, rpc::GrpcCodeName(s.error_code()),
                        absl::ToDoubleSeconds(absl::Now() - start));
    return s;
  }

  grpc::Status DoUpload(grpc::ServerReader<v1::UploadRequest>* reader, v1::UploadResponse* resp) {
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
    resp->set_sha256(info->sha256);
    resp->set_size_bytes(info->size);
    resp->set_already_present(info->already_present);
    return grpc::Status::OK;
  }

 private:
  PreflightCore* core_;
  int64_t max_upload_bytes_;
  ServiceMetrics* metrics_;
};

std::string DefaultWorkerBinary() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return "preflight-worker";
  std::string self(buf, static_cast<size_t>(n));
  return self.substr(0, self.rfind('/') + 1) + "preflight-worker";
}

}  // namespace

struct Server::Impl {
  std::unique_ptr<ServiceMetrics> metrics;
  store::Stores stores;
  std::unique_ptr<worker::WorkerPool> pool;
  std::unique_ptr<PreflightCore> core;
  std::unique_ptr<Service> service;
  std::unique_ptr<grpc::Server> grpc_server;
  int port = 0;
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
  auto stores = store::OpenStore(config.store, config.max_upload_bytes, config.init_store);
  if (!stores.ok()) return stores.status();
  impl->stores = *std::move(stores);
  worker::WorkerPoolConfig wc;
  wc.worker_binary = config.worker_binary.empty() ? DefaultWorkerBinary() : config.worker_binary;
  wc.on_restart = [m = impl->metrics.get()] { m->RecordZygoteRestart(); };
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
  impl->core = std::make_unique<PreflightCore>(config.core, impl->stores.blobs.get(),
                                               impl->stores.verdicts.get(), impl->pool.get(),
                                               impl->metrics.get(), impl->stores.leases.get());
  impl->service =
      std::make_unique<Service>(impl->core.get(), config.max_upload_bytes, impl->metrics.get());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(config.address, grpc::InsecureServerCredentials(), &impl->port);
  // Inline artifacts up to the limit, for both model and batch, plus slack.
  builder.SetMaxReceiveMessageSize(
      static_cast<int>(std::min<int64_t>(2 * config.core.max_inline_bytes + (1 << 20), INT32_MAX)));
  builder.SetMaxSendMessageSize(64 << 20);
  builder.RegisterService(impl->service.get());
  impl->grpc_server = builder.BuildAndStart();
  if (!impl->grpc_server || impl->port == 0) {
    return absl::UnavailableError(absl::StrCat("address: cannot listen on ", config.address));
  }
  impl->grpc_server->GetHealthCheckService()->SetServingStatus(true);
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

int Server::port() const { return impl_->port; }
const std::string& Server::store_name() const { return impl_->stores.name; }
double Server::worker_start_seconds() const { return impl_->pool->last_start_seconds(); }
int Server::worker_pid() const { return impl_->pool->zygote_pid(); }
int Server::landlock_abi() const { return impl_->pool->landlock_abi(); }

void Server::Shutdown(absl::Duration grace) {
  if (!impl_->grpc_server) return;
  impl_->core->StartDraining();
  impl_->grpc_server->GetHealthCheckService()->SetServingStatus(false);
  impl_->grpc_server->Shutdown(absl::ToChronoTime(absl::Now() + grace));
  impl_->grpc_server->Wait();
  impl_->grpc_server.reset();
}

void Server::Wait() {
  if (impl_->grpc_server) impl_->grpc_server->Wait();
}

}  // namespace preflight::server
