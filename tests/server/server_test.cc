// The real server in-process on 127.0.0.1:0 with the real zygote worker:
// transport-level behaviour the core tests cannot see.
#include "service/server/server.h"

#include <prometheus/registry.h>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "preflight/v1/preflight.grpc.pb.h"

namespace preflight::server {
namespace {

class ServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/preflight-server-test-XXXXXX";
    ServerConfig config;
    config.address = "127.0.0.1:0";
    config.store = mkdtemp(tmpl);
    config.worker_binary = PREFLIGHT_WORKER_BINARY;
    auto server = Server::Start(config, registry_);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(server_->port()),
                                   grpc::InsecureChannelCredentials());
  }
  prometheus::Registry registry_;
  std::unique_ptr<Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
};

TEST_F(ServerTest, ReportsTheLandlockAbiItsJobsRunUnder) {
  // What a sandboxed job sees must be what this kernel offers.
  const long abi = syscall(SYS_landlock_create_ruleset, nullptr, 0, 1 /*VERSION*/);
  EXPECT_EQ(server_->landlock_abi(), abi < 0 ? 0 : abi);
}

TEST_F(ServerTest, HealthServiceReportsServing) {
  // grpc.health.v1.Health/Check with an empty HealthCheckRequest; the
  // response's field 1 (status) is SERVING = 1, encoded as 08 01.
  grpc::GenericStub stub(channel_);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::ByteBuffer request, response;
  grpc::Slice empty("", 0);
  request = grpc::ByteBuffer(&empty, 1);
  grpc::Status status;
  bool done = false;
  std::mutex mu;
  std::condition_variable cv;
  stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&](grpc::Status s) {
                   std::lock_guard<std::mutex> lock(mu);
                   status = s;
                   done = true;
                   cv.notify_all();
                 });
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return done; });
  ASSERT_TRUE(status.ok()) << status.error_message();
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(response.Dump(&slices).ok());
  std::string bytes;
  for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  EXPECT_EQ(bytes, std::string("\x08\x01", 2));
}

TEST_F(ServerTest, OneGibInlineMessageIsResourceExhausted) {
  auto stub = v1::Preflight::NewStub(channel_);
  v1::CheckRequest req;
  req.mutable_model()->set_inline_(std::string(size_t{1} << 30, 'x'));
  req.mutable_batch()->set_inline_("b");
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  v1::CheckResponse resp;
  const grpc::Status s = stub->Check(&ctx, req, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
}

TEST_F(ServerTest, MissingModelIsInvalidArgumentNamingTheField) {
  auto stub = v1::Preflight::NewStub(channel_);
  v1::CheckRequest req;
  req.mutable_batch()->set_inline_("b");
  grpc::ClientContext ctx;
  v1::CheckResponse resp;
  const grpc::Status s = stub->Check(&ctx, req, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("model: is required"), std::string::npos);
}

TEST_F(ServerTest, GarbageBytesAreInvalidArgumentNamingTheField) {
  auto stub = v1::Preflight::NewStub(channel_);
  v1::CheckRequest req;
  req.mutable_model()->set_inline_("definitely not a zip archive");
  req.mutable_batch()->set_inline_("nor this");
  grpc::ClientContext ctx;
  v1::CheckResponse resp;
  const grpc::Status s = stub->Check(&ctx, req, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("model.inline: not a TorchScript"), std::string::npos)
      << s.error_message();
}

TEST_F(ServerTest, ZipThatIsNotTorchScriptIsAnOkRpcWithAnErrorVerdict) {
  // Past the zip header only the worker can tell: verdicts are data.
  auto stub = v1::Preflight::NewStub(channel_);
  v1::CheckRequest req;
  req.mutable_model()->set_inline_(std::string("PK\x03\x04 truncated zip", 19));
  req.mutable_batch()->set_inline_(std::string("PK\x03\x04 nor this", 13));
  grpc::ClientContext ctx;
  v1::CheckResponse resp;
  const grpc::Status s = stub->Check(&ctx, req, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(resp.report().verdict(), v1::ERROR);
  ASSERT_GE(resp.report().findings_size(), 1);
  EXPECT_EQ(resp.report().findings(0).code(), v1::ARTIFACT_INVALID);
}

TEST_F(ServerTest, AfterShutdownChecksAreUnavailable) {
  server_->Shutdown(absl::Seconds(1));
  auto stub = v1::Preflight::NewStub(channel_);
  v1::CheckRequest req;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::CheckResponse resp;
  EXPECT_EQ(stub->Check(&ctx, req, &resp).error_code(), grpc::StatusCode::UNAVAILABLE);
}

}  // namespace
}  // namespace preflight::server
