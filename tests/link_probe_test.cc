// LibTorch from the pinned wheel next to Debian's protobuf, gRPC and Abseil
// in one binary. Each assertion needs the libraries to work together, not
// just to link: the wheel carries its own protobuf, so a header/library
// mismatch or a second descriptor pool shows up here as a failed version
// check or a message that does not survive the trip; a gRPC or Abseil clash
// as a call that does not come back with its status and payload.
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <google/protobuf/stubs/common.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/message_differencer.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <torch/script.h>
#include <torch/torch.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "preflight/v1/preflight.grpc.pb.h"
#include "preflight/v1/report.pb.h"

namespace {

using google::protobuf::util::MessageDifferencer;

// Trains a one-matrix TorchScript module for a few SGD steps: the loss curve.
std::vector<double> TrainProbe() {
  torch::jit::Module m("probe");
  m.register_parameter("w", torch::ones({2, 2}).requires_grad_(true), /*is_buffer=*/false);
  m.define("def forward(self, x):\n  return x.matmul(self.w)\n");
  std::vector<torch::Tensor> params;
  for (const auto& p : m.parameters()) params.push_back(p);
  torch::optim::SGD opt(params, torch::optim::SGDOptions(0.1));
  const auto x = torch::eye(2);
  std::vector<double> curve;
  for (int i = 0; i < 20; ++i) {
    opt.zero_grad();
    auto loss = m.forward({x}).toTensor().pow(2).sum();
    curve.push_back(loss.item<double>());
    loss.backward();
    opt.step();
  }
  return curve;
}

preflight::v1::Report ProbeReport(const std::vector<double>& curve) {
  preflight::v1::Report report;
  report.set_verdict(preflight::v1::FAIL);
  for (double l : curve) report.add_loss_curve(l);
  report.mutable_environment()->set_torch_version(TORCH_VERSION);
  return report;
}

TEST(LinkProbe, TorchScriptTrains) {
  const std::vector<double> curve = TrainProbe();
  ASSERT_EQ(curve.size(), 20u);
  EXPECT_DOUBLE_EQ(curve.front(), 4.0);  // sum((I @ ones)^2): four ones.
  EXPECT_LT(curve.back(), curve.front() * 0.1);
}

TEST(LinkProbe, ProtobufHeadersMatchTheLinkedRuntime) {
  // Aborts when the headers compiled here (Debian's) and the runtime linked
  // (which must not be the wheel's bundled copy) disagree.
  GOOGLE_PROTOBUF_VERIFY_VERSION;
  // The generated descriptor is in the one pool that reflection (JSON) uses.
  EXPECT_EQ(google::protobuf::DescriptorPool::generated_pool()->FindMessageTypeByName(
                "preflight.v1.Report"),
            preflight::v1::Report::descriptor());
}

TEST(LinkProbe, TorchValuesRoundTripThroughProtobuf) {
  const preflight::v1::Report report = ProbeReport(TrainProbe());

  std::string json;
  ASSERT_TRUE(google::protobuf::util::MessageToJsonString(report, &json).ok());
  EXPECT_NE(json.find("\"verdict\":\"FAIL\""), std::string::npos) << json;
  preflight::v1::Report from_json;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json, &from_json).ok()) << json;
  EXPECT_TRUE(MessageDifferencer::Equals(report, from_json)) << from_json.DebugString();

  preflight::v1::Report from_wire;
  ASSERT_TRUE(from_wire.ParseFromString(report.SerializeAsString()));
  EXPECT_TRUE(MessageDifferencer::Equals(report, from_wire)) << from_wire.DebugString();
}

// GetVerdict answers a torch-computed report for job "probe" and an
// INVALID_ARGUMENT naming the field for anything else.
class ProbeService final : public preflight::v1::Preflight::Service {
 public:
  explicit ProbeService(preflight::v1::Report report) : report_(std::move(report)) {}

  grpc::Status GetVerdict(grpc::ServerContext*, const preflight::v1::GetVerdictRequest* req,
                          preflight::v1::GetVerdictResponse* resp) override {
    if (req->job_id() != "probe") {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          absl::StrCat("job_id: unknown '", req->job_id(), "'"));
    }
    *resp->mutable_report() = report_;
    return grpc::Status::OK;
  }

 private:
  const preflight::v1::Report report_;
};

TEST(LinkProbe, GrpcCarriesATorchReportOverLoopback) {
  const preflight::v1::Report report = ProbeReport(TrainProbe());
  ProbeService service(report);
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  ASSERT_GT(port, 0);

  auto stub = preflight::v1::Preflight::NewStub(
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    preflight::v1::GetVerdictRequest req;
    req.set_job_id("probe");
    preflight::v1::GetVerdictResponse resp;
    const grpc::Status s = stub->GetVerdict(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_code() << ": " << s.error_message();
    EXPECT_TRUE(MessageDifferencer::Equals(resp.report(), report)) << resp.DebugString();
  }
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    preflight::v1::GetVerdictRequest req;
    req.set_job_id("other");
    preflight::v1::GetVerdictResponse resp;
    const grpc::Status s = stub->GetVerdict(&ctx, req, &resp);
    // Through Abseil: the numeric codes agree and the message survives.
    const absl::Status status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_EQ(status.message(), "job_id: unknown 'other'");
  }
  server->Shutdown();
}

}  // namespace
