// client/remote.cc against a fake Preflight service in-process on
// 127.0.0.1:0: what goes inline and what through Upload, the RPC deadline
// from engine::DeriveBudgets, and server errors arriving with their code and
// message intact.
#include "client/remote.h"

#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <mutex>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/time/clock.h"
#include "preflight/v1/preflight.grpc.pb.h"
#include "service/engine/budgets.h"
#include "service/store/sha256.h"

namespace preflight::client {
namespace {

using ::testing::HasSubstr;

class FakePreflight final : public v1::Preflight::Service {
 public:
  grpc::Status Check(grpc::ServerContext* ctx, const v1::CheckRequest* req,
                     v1::CheckResponse* resp) override {
    std::lock_guard<std::mutex> lock(mu);
    last_check = *req;
    check_deadline_seconds = absl::ToDoubleSeconds(absl::FromChrono(ctx->deadline()) - absl::Now());
    if (!check_error.ok()) return check_error;
    resp->mutable_report()->set_verdict(v1::FAIL);
    resp->set_request_digest(std::string(64, 'd'));
    return grpc::Status::OK;
  }
  grpc::Status Upload(grpc::ServerContext*, grpc::ServerReader<v1::UploadRequest>* reader,
                      v1::UploadResponse* resp) override {
    std::string bytes;
    v1::UploadRequest req;
    int64_t expected = 0;
    while (reader->Read(&req)) {
      if (req.expected_size() > 0) expected = req.expected_size();
      bytes += req.chunk();
    }
    std::lock_guard<std::mutex> lock(mu);
    ++uploads;
    if (expected != static_cast<int64_t>(bytes.size())) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "expected_size mismatch");
    }
    resp->set_sha256(store::Sha256Hex(bytes));
    resp->set_size_bytes(static_cast<int64_t>(bytes.size()));
    return grpc::Status::OK;
  }
  grpc::Status GetVerdict(grpc::ServerContext* ctx, const v1::GetVerdictRequest* req,
                          v1::GetVerdictResponse* resp) override {
    std::lock_guard<std::mutex> lock(mu);
    auto auth = ctx->client_metadata().find("authorization");
    last_authorization = auth == ctx->client_metadata().end()
                             ? ""
                             : std::string(auth->second.data(), auth->second.size());
    last_verdict = *req;
    verdict_deadline_seconds =
        absl::ToDoubleSeconds(absl::FromChrono(ctx->deadline()) - absl::Now());
    if (req->job_id() == "unknown") {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "no verdict for job id 'unknown'");
    }
    resp->mutable_report()->set_verdict(v1::PASS);
    resp->set_job_id(req->job_id());
    return grpc::Status::OK;
  }

  std::mutex mu;
  v1::CheckRequest last_check;
  v1::GetVerdictRequest last_verdict;
  std::string last_authorization;
  double check_deadline_seconds = 0, verdict_deadline_seconds = 0;
  grpc::Status check_error = grpc::Status::OK;
  int uploads = 0;
};

class RemoteTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.SetMaxReceiveMessageSize(64 << 20);
    builder.RegisterService(&fake_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port, 0);
    address_.server = "127.0.0.1:" + std::to_string(port);
    char tmpl[] = "/tmp/preflight-remote-test-XXXXXX";
    dir_ = mkdtemp(tmpl);
  }
  void TearDown() override {
    if (server_) server_->Shutdown();
    (void)std::system(("rm -rf " + dir_).c_str());
  }
  std::string File(const std::string& name, const std::string& content) {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path, std::ios::binary) << content;
    return path;
  }

  FakePreflight fake_;
  std::unique_ptr<grpc::Server> server_;
  Connection address_;
  std::string dir_;
};

TEST_F(RemoteTest, SmallFilesTravelInlineWithConfigJobIdAndBudgetDeadline) {
  v1::CheckConfig config;
  config.set_timeout_seconds(20);
  config.set_lr(0.5);
  auto r = RemoteCheck(address_, File("m.pt", "model"), File("b.pt", "batch"), config, "job-7");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->report().verdict(), v1::FAIL);
  EXPECT_EQ(r->request_digest(), std::string(64, 'd'));
  std::lock_guard<std::mutex> lock(fake_.mu);
  EXPECT_EQ(fake_.last_check.model().inline_(), "model");
  EXPECT_EQ(fake_.last_check.batch().inline_(), "batch");
  EXPECT_EQ(fake_.last_check.job_id(), "job-7");
  EXPECT_DOUBLE_EQ(fake_.last_check.config().lr(), 0.5);
  EXPECT_EQ(fake_.uploads, 0);
  const double want = engine::DeriveBudgets(20).rpc_deadline_seconds;
  EXPECT_LE(fake_.check_deadline_seconds, want + 1);  // grpc-timeout rounds up.
  EXPECT_GT(fake_.check_deadline_seconds, want - 30);
}

TEST_F(RemoteTest, LargeFilesGoThroughUploadAndTravelBySha256) {
  const std::string big(kInlineThresholdBytes + 1, 'x');
  auto r = RemoteCheck(address_, File("m.pt", big), File("b.pt", "batch"), v1::CheckConfig(), "");
  ASSERT_TRUE(r.ok()) << r.status();
  std::lock_guard<std::mutex> lock(fake_.mu);
  EXPECT_EQ(fake_.uploads, 1);
  EXPECT_EQ(fake_.last_check.model().sha256(), store::Sha256Hex(big));
  EXPECT_EQ(fake_.last_check.batch().inline_(), "batch");
}

TEST_F(RemoteTest, ServerErrorsKeepTheirCodeAndMessage) {
  struct Case {
    grpc::StatusCode grpc_code;
    absl::StatusCode absl_code;
    std::string message;
  } cases[] = {
      {grpc::StatusCode::INVALID_ARGUMENT, absl::StatusCode::kInvalidArgument,
       "config.lr: must be > 0"},
      {grpc::StatusCode::RESOURCE_EXHAUSTED, absl::StatusCode::kResourceExhausted,
       "all 2 job slots are busy; retry in a few seconds"},
      {grpc::StatusCode::UNAVAILABLE, absl::StatusCode::kUnavailable,
       "the server is shutting down; retry elsewhere"},
  };
  const std::string m = File("m.pt", "model"), b = File("b.pt", "batch");
  for (const auto& tc : cases) {
    SCOPED_TRACE(tc.message);
    {
      std::lock_guard<std::mutex> lock(fake_.mu);
      fake_.check_error = grpc::Status(tc.grpc_code, tc.message);
    }
    auto r = RemoteCheck(address_, m, b, v1::CheckConfig(), "");
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), tc.absl_code);
    EXPECT_EQ(r.status().message(), tc.message);
  }
}

TEST_F(RemoteTest, MissingFileIsNotFoundBeforeAnythingIsSent) {
  auto r = RemoteCheck(address_, dir_ + "/absent.pt", File("b.pt", "b"), v1::CheckConfig(), "");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("absent.pt"));
  std::lock_guard<std::mutex> lock(fake_.mu);
  EXPECT_FALSE(fake_.last_check.has_model());
}

TEST_F(RemoteTest, VerdictByJobIdOrDigestWithItsTimeout) {
  auto by_job = RemoteVerdict(address_, "train/run-42", "", 7);
  ASSERT_TRUE(by_job.ok()) << by_job.status();
  EXPECT_EQ(by_job->job_id(), "train/run-42");
  {
    std::lock_guard<std::mutex> lock(fake_.mu);
    EXPECT_EQ(fake_.last_verdict.job_id(), "train/run-42");
    EXPECT_LE(fake_.verdict_deadline_seconds, 7 + 1);
    EXPECT_GT(fake_.verdict_deadline_seconds, 0);
  }
  ASSERT_TRUE(RemoteVerdict(address_, "", std::string(64, 'a'), 7).ok());
  {
    std::lock_guard<std::mutex> lock(fake_.mu);
    EXPECT_EQ(fake_.last_verdict.request_digest(), std::string(64, 'a'));
  }
  auto missing = RemoteVerdict(address_, "unknown", "", 7);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(missing.status().message(), "no verdict for job id 'unknown'");
}

TEST_F(RemoteTest, UnreachableServerIsUnavailable) {
  server_->Shutdown();
  server_.reset();
  auto r = RemoteVerdict(address_, "job", "", 10);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
}

TEST_F(RemoteTest, TokenTravelsAsBearerMetadataEvenOnPlaintext) {
  ASSERT_TRUE(RemoteVerdict(address_, "job", "", 10).ok());
  EXPECT_EQ(fake_.last_authorization, "") << "no token, no metadata";
  Connection with_token = address_;
  with_token.token = "tok-0123456789abcdef";
  ASSERT_TRUE(RemoteVerdict(with_token, "job", "", 10).ok());
  EXPECT_EQ(fake_.last_authorization, "Bearer tok-0123456789abcdef");
}

TEST_F(RemoteTest, UnreadableTlsFilesAreFailedPreconditionNamingTheFlag) {
  Connection tls = address_;
  tls.tls_ca_file = dir_ + "/absent-ca.pem";
  auto r = RemoteVerdict(tls, "job", "", 10);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("--tls-ca: cannot read"));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("absent-ca.pem"));
}

}  // namespace
}  // namespace preflight::client
