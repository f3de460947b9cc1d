// The .pt2 interpreter over real torch.export programs: the fixtures are
// written at test time by tests/engine/pt2/make_pt2_fixtures.py with the
// pinned torch (ctest fixture pt2_fixtures), each with eager PyTorch's
// output for the same weights.
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "service/engine/batch.h"
#include "service/engine/config.h"
#include "service/engine/engine.h"
#include "service/engine/model_loader.h"
#include "service/engine/report_util.h"

namespace preflight::engine {
namespace {

using internal::Batch;
using internal::LoadBatch;
using internal::LoadModel;
using internal::Model;
using ::testing::HasSubstr;

const torch::Device kCpu(torch::kCPU);

std::string Fixture(const std::string& name) {
  const char* dir = std::getenv("PREFLIGHT_PT2_FIXTURES");
  EXPECT_NE(dir, nullptr) << "PREFLIGHT_PT2_FIXTURES is not set (run through ctest)";
  std::ifstream in(std::string(dir ? dir : ".") + "/" + name, std::ios::binary);
  EXPECT_TRUE(in.good()) << "missing fixture " << name;
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

std::unique_ptr<Model> Load(const std::string& name) {
  auto m = LoadModel(Fixture(name), kCpu);
  EXPECT_TRUE(m.ok()) << name << ": " << m.status();
  return m.ok() ? *std::move(m) : nullptr;
}

// A reference file: {"inputs": x, "targets": eager output}.
Batch Ref(const std::string& name) {
  auto b = LoadBatch(Fixture(name + ".ref.pt"), kCpu);
  EXPECT_TRUE(b.ok()) << name << ": " << b.status();
  return b.ok() ? *std::move(b) : Batch{};
}

torch::Tensor Run(Model& m, const Batch& ref) {
  EXPECT_TRUE(m.AcceptBatch(ref.inputs, ref.input_names, ref.targets).ok());
  auto out = m.Forward(ref.inputs);
  EXPECT_TRUE(out.ok()) << out.status();
  return out.ok() && out->isTensor() ? out->toTensor() : torch::Tensor();
}

absl::Status LoadStatus(const std::string& name) { return LoadModel(Fixture(name), kCpu).status(); }

TEST(ExportedModel, MlpForwardMatchesEagerAndGradientsFlow) {
  auto m = Load("mlp.pt2");
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->format(), v1::EXPORTED_PROGRAM);
  EXPECT_FALSE(m->capabilities().own_loss);
  ASSERT_EQ(m->Parameters().size(), 4u);
  EXPECT_EQ(m->Parameters()[0].name, "net.0.weight");
  auto run = m->Clone();
  const Batch ref = Ref("mlp");
  torch::Tensor out = Run(*run, ref);
  ASSERT_TRUE(out.defined());
  EXPECT_TRUE(torch::allclose(out, ref.targets, 1e-5, 1e-6));
  out.square().sum().backward();
  for (const auto& p : run->Parameters()) {
    SCOPED_TRACE(p.name);
    EXPECT_TRUE(p.tensor.is_leaf());
    ASSERT_TRUE(p.tensor.grad().defined());
    EXPECT_GT(p.tensor.grad().abs().sum().item<double>(), 0);
  }
  // The loaded model is untouched by the clone's backward.
  EXPECT_FALSE(m->Parameters()[0].tensor.grad().defined());
}

TEST(ExportedModel, BatchNormTrainForwardUpdatesRunningStats) {
  for (const std::string name : {"conv_bn.pt2", "conv_bn_functional.pt2"}) {
    SCOPED_TRACE(name);
    auto m = Load(name);
    ASSERT_NE(m, nullptr);
    auto run = m->Clone();
    run->SetTraining(true);
    const Batch ref = Ref("conv_bn");
    torch::Tensor out = Run(*run, ref);
    ASSERT_TRUE(out.defined());
    EXPECT_TRUE(torch::allclose(out, ref.targets, 1e-4, 1e-5));
    const Batch stats = Ref("conv_bn_stats");  // inputs: running_mean, targets: running_var.
    torch::Tensor mean, var, tracked;
    for (const auto& b : run->Buffers()) {
      if (b.name == "bn.running_mean") mean = b.tensor;
      if (b.name == "bn.running_var") var = b.tensor;
      if (b.name == "bn.num_batches_tracked") tracked = b.tensor;
    }
    ASSERT_TRUE(mean.defined() && var.defined() && tracked.defined());
    EXPECT_TRUE(torch::allclose(mean, stats.inputs[0].toTensor(), 1e-5, 1e-6));
    EXPECT_TRUE(torch::allclose(var, stats.targets, 1e-5, 1e-6));
    EXPECT_EQ(tracked.item<int64_t>(), 1);
    // The loaded model's buffers are its own.
    for (const auto& b : m->Buffers()) {
      if (b.name == "bn.num_batches_tracked") EXPECT_EQ(b.tensor.item<int64_t>(), 0);
    }
  }
}

TEST(ExportedModel, EvalModeFlipsBakedTrainFlags) {
  {
    auto m = Load("conv_bn.pt2");
    ASSERT_NE(m, nullptr);
    auto run = m->Clone();
    run->SetTraining(false);
    const Batch ref = Ref("conv_bn_eval");
    torch::Tensor out = Run(*run, ref);
    ASSERT_TRUE(out.defined());
    EXPECT_TRUE(torch::allclose(out, ref.targets, 1e-4, 1e-5));
    for (const auto& b : run->Buffers()) {
      if (b.name == "bn.num_batches_tracked") EXPECT_EQ(b.tensor.item<int64_t>(), 0);
      if (b.name == "bn.running_mean") EXPECT_EQ(b.tensor.abs().sum().item<double>(), 0);
    }
  }
  auto m = Load("dropout.pt2");
  ASSERT_NE(m, nullptr);
  const Batch ref = Ref("dropout_eval");
  auto run = m->Clone();
  run->SetTraining(false);
  torch::Tensor eval_out = Run(*run, ref);
  ASSERT_TRUE(eval_out.defined());
  EXPECT_TRUE(torch::allclose(eval_out, ref.targets, 1e-5, 1e-6));
  run->SetTraining(true);
  torch::manual_seed(0);
  torch::Tensor train_out = Run(*run, ref);
  ASSERT_TRUE(train_out.defined());
  // Dropout p=0.5 over 1024 units: about half are zeroed, the rest doubled.
  const double zeroed = (train_out == 0).to(torch::kDouble).mean().item<double>();
  EXPECT_GT(zeroed, 0.35);
  EXPECT_LT(zeroed, 0.65);
  torch::Tensor kept = train_out != 0;
  EXPECT_TRUE(torch::allclose(train_out.masked_select(kept), 2 * ref.targets.masked_select(kept),
                              1e-4, 1e-5));
}

TEST(ExportedModel, NoGradRegionRunsWithoutGradient) {
  auto m = Load("no_grad.pt2");
  ASSERT_NE(m, nullptr);
  auto run = m->Clone();
  const Batch ref = Ref("no_grad");
  torch::Tensor out = Run(*run, ref);
  ASSERT_TRUE(out.defined());
  EXPECT_TRUE(torch::allclose(out, ref.targets, 1e-5, 1e-6));
  EXPECT_TRUE(out.requires_grad());
  EXPECT_TRUE(torch::GradMode::is_enabled());
}

TEST(ExportedModel, OwnLossContract) {
  auto m = Load("own_loss.pt2");
  ASSERT_NE(m, nullptr);
  EXPECT_TRUE(m->capabilities().own_loss);
  auto batch = LoadBatch(Fixture("own_loss.batch.pt"), kCpu);
  ASSERT_TRUE(batch.ok()) << batch.status();
  ASSERT_TRUE(m->AcceptBatch(batch->inputs, batch->input_names, batch->targets).ok());
  auto run = m->Clone();
  auto out = run->Forward(batch->inputs);
  ASSERT_TRUE(out.ok()) << out.status();
  auto loss = run->OwnLoss(*out, batch->targets);
  ASSERT_TRUE(loss.ok()) << loss.status();
  const Batch ref = Ref("own_loss");  // inputs: eager output, targets: eager loss.
  EXPECT_TRUE(torch::allclose(out->toTensor(), ref.inputs[0].toTensor(), 1e-5, 1e-6));
  EXPECT_NEAR(loss->item<double>(), ref.targets.item<double>(), 1e-5);
  EXPECT_EQ(loss->dim(), 0);
}

TEST(ExportedModel, DynamicBatchWithinRangeConstraints) {
  auto m = Load("conv_bn.pt2");
  ASSERT_NE(m, nullptr);
  auto small = LoadBatch(Fixture("conv_bn_batch3.batch.pt"), kCpu);
  ASSERT_TRUE(small.ok());
  EXPECT_TRUE(m->AcceptBatch(small->inputs, small->input_names, small->targets).ok());
  auto run = m->Clone();
  auto out = run->Forward(small->inputs);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->toTensor().size(0), 3);
  auto big = LoadBatch(Fixture("conv_bn_batch65.batch.pt"), kCpu);
  ASSERT_TRUE(big.ok());
  absl::Status s = m->AcceptBatch(big->inputs, big->input_names, big->targets);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("inputs (program input 'x') has shape [65, 2, 6, 6]"));
  EXPECT_THAT(s.message(), HasSubstr("in [2, 64], 2, 6, 6]"));
}

TEST(ExportedModel, StaticBatchMustMatchExactly) {
  auto m = Load("mlp.pt2");
  ASSERT_NE(m, nullptr);
  auto b = LoadBatch(Fixture("mlp_batch9.batch.pt"), kCpu);
  ASSERT_TRUE(b.ok());
  absl::Status s = m->AcceptBatch(b->inputs, b->input_names, b->targets);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("has shape [9, 12]; the program expects [8, 12]"));
}

TEST(ExportedModel, HostileArchivesAreRefusedByName) {
  struct Case {
    std::string file;
    absl::StatusCode code;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"malformed_json.pt2", absl::StatusCode::kInvalidArgument,
       "record 'models/model.json' is not valid JSON"},
      {"short_weight.pt2", absl::StatusCode::kInvalidArgument,
       "entry 'net.0.weight': record 'data/weights/weight_0' holds 760 bytes, but its Float "
       "sizes [16, 12] strides [12, 1] offset 0 address 768"},
      {"path_traversal.pt2", absl::StatusCode::kInvalidArgument,
       "unsafe path_name '../../../etc/passwd'"},
      {"unknown_op.pt2", absl::StatusCode::kUnimplemented,
       "operator 'aten::no_such_op' is not known to this LibTorch"},
      {"file_op.pt2", absl::StatusCode::kUnimplemented,
       "operator 'aten::from_file' is refused: it reads a file"},
      {"custom_op.pt2", absl::StatusCode::kUnimplemented,
       "operator 'torch.ops.evil.relu.default' is in namespace 'evil'"},
      {"future_schema.pt2", absl::StatusCode::kUnimplemented,
       "schema_version 9.0 is outside the supported range 8.0 - 8.20"},
      {"million_nodes.pt2", absl::StatusCode::kInvalidArgument,
       "record 'models/model.json' declares"},
      {"zip_bomb.pt2", absl::StatusCode::kInvalidArgument,
       "record 'models/model.json' declares 268"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.file);
    absl::Status s = LoadStatus(c.file);
    EXPECT_EQ(s.code(), c.code) << s;
    EXPECT_THAT(s.message(), HasSubstr(c.message));
  }
}

v1::Report Check(const std::string& model, const std::string& batch) {
  v1::CheckConfig c;
  c.set_device("cpu");
  ApplyDefaults(&c);
  return RunCheck(c, {Fixture(model), Fixture(batch)});
}

bool Has(const v1::Report& r, v1::FindingCode code) {
  for (const auto& f : r.findings()) {
    if (f.code() == code) return true;
  }
  return false;
}

TEST(ExportedModelCheck, HealthyMlpPassesAndReportsTheFormat) {
  v1::Report r = Check("mlp.pt2", "mlp.batch.pt");
  EXPECT_EQ(r.verdict(), v1::PASS) << r.DebugString();
  EXPECT_EQ(r.model().format(), v1::EXPORTED_PROGRAM);
  EXPECT_TRUE(Has(r, v1::OVERFIT_CONVERGED));
}

TEST(ExportedModelCheck, BrokenModelsFail) {
  v1::Report ignores = Check("ignores_input.pt2", "mlp.batch.pt");
  EXPECT_EQ(ignores.verdict(), v1::FAIL);
  EXPECT_TRUE(Has(ignores, v1::OUTPUT_IGNORES_INPUT)) << ignores.DebugString();
  v1::Report sign = Check("sign_error.pt2", "own_loss.batch.pt");
  EXPECT_EQ(sign.verdict(), v1::FAIL);
  EXPECT_TRUE(Has(sign, v1::LOSS_DIVERGED) || Has(sign, v1::LOSS_RISING)) << sign.DebugString();
}

TEST(ExportedModelCheck, RefusedOpIsArtifactUnsupportedAndBadShapeDataInvalid) {
  v1::Report refused = Check("file_op.pt2", "mlp.batch.pt");
  EXPECT_EQ(refused.verdict(), v1::ERROR);
  ASSERT_EQ(refused.findings_size(), 1);
  EXPECT_EQ(refused.findings(0).code(), v1::ARTIFACT_UNSUPPORTED);
  EXPECT_THAT(refused.findings(0).message(), HasSubstr("aten::from_file"));
  v1::Report shape = Check("mlp.pt2", "mlp_batch9.batch.pt");
  EXPECT_EQ(shape.verdict(), v1::ERROR);
  ASSERT_EQ(shape.findings_size(), 1);
  EXPECT_EQ(shape.findings(0).code(), v1::DATA_INVALID);
}

}  // namespace
}  // namespace preflight::engine
