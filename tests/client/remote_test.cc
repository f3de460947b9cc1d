// client/remote.cc against a fake Preflight service in-process on
// 127.0.0.1:0: what goes inline and what through Upload, the RPC deadline
// from engine::DeriveBudgets, and server errors arriving with their code and
// message intact.
#include "client/remote.h"

#include <grpcpp/grpcpp.h>

#include <unistd.h>
#include <chrono>

#include <cstdlib>
#include <fstream>
#include <mutex>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/random/random.h"
#include "absl/time/clock.h"
#include "client/server_target.h"
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
    ++verdicts;
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
  int verdicts = 0;  // GetVerdict calls received.
};

// A fake on 127.0.0.1:0 with its own state: one server of a list.
struct FakeServer {
  FakePreflight service;
  std::unique_ptr<grpc::Server> server;
  std::string address;
  int Verdicts() {
    std::lock_guard<std::mutex> lock(service.mu);
    return service.verdicts;
  }
};

std::unique_ptr<FakeServer> StartFake() {
  auto f = std::make_unique<FakeServer>();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&f->service);
  f->server = builder.BuildAndStart();
  if (f->server == nullptr || port <= 0) return nullptr;
  f->address = "127.0.0.1:" + std::to_string(port);
  return f;
}

// A loopback address nothing listens on: a port the kernel handed out and
// took back (connections to it are refused).
std::string DeadAddress() {
  auto f = StartFake();
  if (f == nullptr) return "";
  const std::string address = f->address;
  f->server->Shutdown();
  return address;
}

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

// A plaintext connection to `server` (any --server form).
Connection To(const std::string& server) {
  Connection c;
  c.server = server;
  return c;
}

TEST_F(RemoteTest, AListSpreadsCallsOverEveryServer) {
  auto a = StartFake(), b = StartFake();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  const std::string both = a->address + "," + b->address;
  // Each call is a new client (as each CLI run is); the list's order is
  // shuffled per client, so both servers get calls, 50% each in expectation.
  for (int i = 0; i < 64 && (a->Verdicts() == 0 || b->Verdicts() == 0); ++i) {
    auto r = RemoteVerdict(To(both), "job", "", 10);
    ASSERT_TRUE(r.ok()) << r.status();
  }
  EXPECT_GT(a->Verdicts(), 0);  // One missed by 64 fair draws: p = 2^-63.
  EXPECT_GT(b->Verdicts(), 0);
}

TEST_F(RemoteTest, OneChannelWithTheClientSettingsAlternatesBetweenServers) {
  // What makes it round_robin and not the shuffle alone: pick_first would
  // send every call of one channel to one server. The channel is built as
  // remote.cc builds it (GrpcTarget + kRoundRobinServiceConfig).
  auto a = StartFake(), b = StartFake();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  auto spec = ParseServerSpec(a->address + "," + b->address);
  ASSERT_TRUE(spec.ok()) << spec.status();
  absl::BitGen gen;
  auto target = GrpcTarget(*spec, SystemResolver, gen);
  ASSERT_TRUE(target.ok()) << target.status();
  grpc::ChannelArguments args;
  args.SetServiceConfigJSON(kRoundRobinServiceConfig);
  auto stub = v1::Preflight::NewStub(
      grpc::CreateCustomChannel(*target, grpc::InsecureChannelCredentials(), args));
  // Until the second connection is up, calls go to the first; then they alternate.
  for (int i = 0; i < 500 && (a->Verdicts() == 0 || b->Verdicts() == 0); ++i) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::GetVerdictRequest req;
    req.set_job_id("job");
    v1::GetVerdictResponse resp;
    ASSERT_TRUE(stub->GetVerdict(&ctx, req, &resp).ok());
  }
  EXPECT_GT(a->Verdicts(), 0);
  EXPECT_GT(b->Verdicts(), 0);
}

TEST_F(RemoteTest, ADeadAddressInAListIsSkipped) {
  const std::string dead = DeadAddress();
  ASSERT_FALSE(dead.empty());
  for (const std::string& server : {dead + "," + address_.server, address_.server + "," + dead}) {
    SCOPED_TRACE(server);
    for (int i = 0; i < 8; ++i) {
      auto r = RemoteVerdict(To(server), "job", "", 10);
      ASSERT_TRUE(r.ok()) << r.status();
    }
    auto c = RemoteCheck(To(server), File("m.pt", "model"), File("b.pt", "batch"),
                         v1::CheckConfig(), "");
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->report().verdict(), v1::FAIL);
  }
}

TEST_F(RemoteTest, ADnsTargetReachesTheServer) {
  // localhost has 127.0.0.1 (listening) and usually ::1 (refused, skipped).
  const std::string port = address_.server.substr(address_.server.rfind(':') + 1);
  auto r = RemoteVerdict(To("dns:///localhost:" + port), "job", "", 10);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->job_id(), "job");
}

TEST_F(RemoteTest, EveryAddressDeadIsUnavailable) {
  const std::string server = DeadAddress() + "," + DeadAddress();
  auto r = RemoteVerdict(To(server), "job", "", 10);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
}

TEST_F(RemoteTest, ABadServerValueIsInvalidArgumentBeforeAnyCall) {
  auto r = RemoteVerdict(To(address_.server + ","), "job", "", 10);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("server: empty address in the list"));
  auto c =
      RemoteCheck(To("http://h:1"), File("m.pt", "m"), File("b.pt", "b"), v1::CheckConfig(), "");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("server: unsupported scheme 'http'"));
  std::lock_guard<std::mutex> lock(fake_.mu);
  EXPECT_EQ(fake_.verdicts, 0);
  EXPECT_FALSE(fake_.last_check.has_model());
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
