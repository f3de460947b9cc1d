// LibTorch from the pinned wheel next to Debian's protobuf, gRPC and Abseil
// in one binary: a TorchScript module trains, a proto round-trips through
// JSON, and a gRPC channel object is created — with no symbol clashes.
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <torch/script.h>
#include <torch/torch.h>

#include "absl/status/status.h"
#include "preflight/v1/report.pb.h"

namespace {

TEST(LinkProbe, TorchProtobufGrpcAbseilCoexist) {
  torch::jit::Module m("probe");
  m.register_parameter("w", torch::ones({2, 2}).requires_grad_(true), /*is_buffer=*/false);
  m.define("def forward(self, x):\n  return x.matmul(self.w)\n");
  std::vector<torch::Tensor> params;
  for (const auto& p : m.parameters()) params.push_back(p);
  torch::optim::SGD opt(params, torch::optim::SGDOptions(0.1));
  const auto x = torch::eye(2);
  double first = 0, last = 0;
  for (int i = 0; i < 20; ++i) {
    opt.zero_grad();
    auto loss = m.forward({x}).toTensor().pow(2).sum();
    if (i == 0) first = loss.item<double>();
    last = loss.item<double>();
    loss.backward();
    opt.step();
  }
  EXPECT_LT(last, first * 0.1);

  preflight::v1::Report report;
  report.set_verdict(preflight::v1::FAIL);
  std::string json;
  ASSERT_TRUE(google::protobuf::util::MessageToJsonString(report, &json).ok());
  EXPECT_NE(json.find("\"FAIL\""), std::string::npos);

  auto channel = grpc::CreateChannel("127.0.0.1:1", grpc::InsecureChannelCredentials());
  EXPECT_NE(channel, nullptr);
  EXPECT_TRUE(absl::OkStatus().ok());
}

}  // namespace
