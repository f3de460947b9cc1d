#include "client/remote.h"

#include <sys/stat.h>

#include <chrono>
#include <fstream>
#include <memory>
#include <sstream>

#include <grpcpp/grpcpp.h>

#include "absl/random/random.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/server_target.h"
#include "preflight/v1/preflight.grpc.pb.h"
#include "service/engine/budgets.h"
#include "service/rpc/grpc_status.h"

namespace preflight::client {
namespace {

constexpr size_t kChunkBytes = 1 << 20;

// A channel to every server `server` names, calls spread by round_robin.
absl::StatusOr<std::shared_ptr<grpc::Channel>> Channel(const std::string& server) {
  auto spec = ParseServerSpec(server);
  if (!spec.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("server: ", spec.status().message()));
  }
  absl::BitGen gen;
  auto target = GrpcTarget(*spec, SystemResolver, gen);
  if (!target.ok()) {
    return absl::Status(target.status().code(),
                        absl::StrCat("server: ", target.status().message()));
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  args.SetServiceConfigJSON(kRoundRobinServiceConfig);
  return grpc::CreateCustomChannel(*target, grpc::InsecureChannelCredentials(), args);
}

// More than one server: the calls of one command may reach different ones.
bool SeveralServers(const std::string& server) {
  auto spec = ParseServerSpec(server);
  return spec.ok() && (spec->addresses.size() > 1 || absl::StartsWith(spec->uri, "dns:") ||
                       absl::StrContains(spec->uri, ','));
}

void SetDeadline(grpc::ClientContext* ctx, double seconds) {
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000)));
}

absl::StatusOr<int64_t> FileSize(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0)
    return absl::NotFoundError(absl::StrCat("cannot open '", path, "'"));
  return static_cast<int64_t>(st.st_size);
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open '", path, "'"));
  std::ostringstream ss;
  ss << in.rdbuf();
  return std::move(ss).str();
}

absl::StatusOr<std::string> UploadWith(v1::Preflight::Stub* stub, const std::string& path) {
  auto size = FileSize(path);
  if (!size.ok()) return size.status();
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open '", path, "'"));
  grpc::ClientContext ctx;
  SetDeadline(&ctx, 600);
  v1::UploadResponse resp;
  auto writer = stub->Upload(&ctx, &resp);
  std::string buf(kChunkBytes, '\0');
  bool first = true;
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    const auto n = in.gcount();
    if (n <= 0) break;
    v1::UploadRequest req;
    req.set_chunk(buf.data(), static_cast<size_t>(n));
    if (first) req.set_expected_size(*size);
    first = false;
    if (!writer->Write(req)) break;  // The server ended the stream; Finish says why.
  }
  writer->WritesDone();
  if (absl::Status s = rpc::FromGrpcStatus(writer->Finish()); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("upload of ", path, ": ", s.message()));
  }
  return resp.sha256();
}

absl::Status ArtifactFrom(v1::Preflight::Stub* stub, const std::string& path, v1::Artifact* a) {
  auto size = FileSize(path);
  if (!size.ok()) return size.status();
  if (*size > kInlineThresholdBytes) {
    auto sha = UploadWith(stub, path);
    if (!sha.ok()) return sha.status();
    a->set_sha256(*sha);
    return absl::OkStatus();
  }
  auto bytes = ReadFile(path);
  if (!bytes.ok()) return bytes.status();
  a->set_inline_(*std::move(bytes));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<v1::CheckResponse> RemoteCheck(const std::string& server,
                                              const std::string& model_path,
                                              const std::string& batch_path,
                                              const v1::CheckConfig& config,
                                              const std::string& job_id) {
  auto channel = Channel(server);
  if (!channel.ok()) return channel.status();
  auto stub = v1::Preflight::NewStub(*channel);
  v1::CheckRequest req;
  if (absl::Status s = ArtifactFrom(stub.get(), model_path, req.mutable_model()); !s.ok()) return s;
  if (absl::Status s = ArtifactFrom(stub.get(), batch_path, req.mutable_batch()); !s.ok()) return s;
  const bool uploaded = req.model().has_sha256() || req.batch().has_sha256();
  *req.mutable_config() = config;
  req.set_job_id(job_id);
  grpc::ClientContext ctx;
  // The check's own budget plus time to wait for a job slot. Past it the
  // server sees the call cancelled and frees the job's slot.
  SetDeadline(&ctx, engine::DeriveBudgets(config.timeout_seconds()).rpc_deadline_seconds);
  v1::CheckResponse resp;
  if (absl::Status s = rpc::FromGrpcStatus(stub->Check(&ctx, req, &resp)); !s.ok()) {
    if (s.code() == absl::StatusCode::kNotFound && uploaded && SeveralServers(server)) {
      // The upload and the check are separate calls: round_robin may send
      // them to different servers, which then must share one store.
      return absl::NotFoundError(absl::StrCat(
          s.message(), " (the upload and the check may reach different servers of '", server,
          "': they must share one store, e.g. a fleet on --store postgresql://...)"));
    }
    return s;
  }
  return resp;
}

absl::StatusOr<v1::GetVerdictResponse> RemoteVerdict(const std::string& server,
                                                     const std::string& job_id,
                                                     const std::string& digest,
                                                     double timeout_seconds) {
  auto channel = Channel(server);
  if (!channel.ok()) return channel.status();
  auto stub = v1::Preflight::NewStub(*channel);
  v1::GetVerdictRequest req;
  if (!job_id.empty()) {
    req.set_job_id(job_id);
  } else {
    req.set_request_digest(digest);
  }
  grpc::ClientContext ctx;
  SetDeadline(&ctx, timeout_seconds);
  v1::GetVerdictResponse resp;
  if (absl::Status s = rpc::FromGrpcStatus(stub->GetVerdict(&ctx, req, &resp)); !s.ok()) return s;
  return resp;
}

absl::StatusOr<std::string> UploadFile(const std::string& server, const std::string& path) {
  auto channel = Channel(server);
  if (!channel.ok()) return channel.status();
  auto stub = v1::Preflight::NewStub(*channel);
  return UploadWith(stub.get(), path);
}

}  // namespace preflight::client
