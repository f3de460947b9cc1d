#include "service/engine/config.h"

#include <cmath>
#include <functional>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "service/engine/losses.h"

namespace preflight::engine {
namespace {

using ::testing::HasSubstr;

v1::CheckConfig Defaults() {
  v1::CheckConfig c;
  ApplyDefaults(&c);
  return c;
}

TEST(ApplyDefaults, DocumentedDefaults) {
  const v1::CheckConfig c = Defaults();
  EXPECT_EQ(c.optimizer(), "adam");
  EXPECT_DOUBLE_EQ(c.lr(), 1e-3);
  EXPECT_EQ(c.max_steps(), 500);
  EXPECT_EQ(c.seed(), 0u);
  EXPECT_EQ(c.device(), "auto");
  EXPECT_EQ(c.dtype(), "fp32");
  EXPECT_EQ(c.intra_op_threads(), 1);
  EXPECT_TRUE(c.train_mode());
  EXPECT_TRUE(c.diagnose());
  EXPECT_EQ(c.determinism_steps(), 20);
  EXPECT_DOUBLE_EQ(c.target_ratio(), 0.01);
  EXPECT_TRUE(c.loss().empty());  // Resolved by the engine (model.loss or cross_entropy).
  EXPECT_TRUE(ValidateConfig(c).ok());
}

TEST(ApplyDefaults, KeepsExplicitZeroes) {
  v1::CheckConfig c;
  c.set_determinism_steps(0);
  c.set_train_mode(false);
  ApplyDefaults(&c);
  EXPECT_EQ(c.determinism_steps(), 0);
  EXPECT_FALSE(c.train_mode());
}

TEST(ValidateConfig, RejectsEachBadFieldByName) {
  struct Case {
    std::string field;
    std::function<void(v1::CheckConfig*)> mutate;
  };
  const Case cases[] = {
      {"loss:", [](auto* c) { c->set_loss("hinge"); }},
      {"optimizer:", [](auto* c) { c->set_optimizer("lbfgs"); }},
      {"lr:", [](auto* c) { c->set_lr(-0.1); }},
      {"dtype:", [](auto* c) { c->set_dtype("float8"); }},
      {"lr:", [](auto* c) { c->set_lr(std::nan("")); }},
      {"weight_decay:", [](auto* c) { c->set_weight_decay(-1); }},
      {"momentum:", [](auto* c) { c->set_momentum(0.9); }},  // adam
      {"max_steps:", [](auto* c) { c->set_max_steps(-5); }},
      {"max_steps:", [](auto* c) { c->set_max_steps(kMaxSteps + 1); }},
      {"device:", [](auto* c) { c->set_device("tpu"); }},
      {"device:", [](auto* c) { c->set_device("cuda:x"); }},
      {"intra_op_threads:", [](auto* c) { c->set_intra_op_threads(0); }},
      {"parallel_experiments:", [](auto* c) { c->set_parallel_experiments(-1); }},
      {"parallel_experiments:",
       [](auto* c) { c->set_parallel_experiments(kMaxParallelExperiments + 1); }},
      {"target_ratio:", [](auto* c) { c->set_target_ratio(1.5); }},
      {"determinism_steps:", [](auto* c) { c->set_determinism_steps(501); }},
      {"timeout_seconds:", [](auto* c) { c->set_timeout_seconds(-1); }},
  };
  for (const auto& tc : cases) {
    SCOPED_TRACE(tc.field);
    v1::CheckConfig c = Defaults();
    tc.mutate(&c);
    const absl::Status s = ValidateConfig(c);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(s.message()), HasSubstr(tc.field));
  }
}

TEST(ValidateConfig, AcceptsEveryBuiltinLossAndDevice) {
  for (const char* loss :
       {"cross_entropy", "nll", "mse", "l1", "smooth_l1", "bce_with_logits", "bce", "model.loss"}) {
    v1::CheckConfig c = Defaults();
    c.set_loss(loss);
    EXPECT_TRUE(ValidateConfig(c).ok()) << loss;
  }
  for (const char* dev : {"auto", "cpu", "cuda", "cuda:3"}) {
    v1::CheckConfig c = Defaults();
    c.set_device(dev);
    EXPECT_TRUE(ValidateConfig(c).ok()) << dev;
  }
  v1::CheckConfig sgd = Defaults();
  sgd.set_optimizer("sgd");
  sgd.set_momentum(0.9);
  EXPECT_TRUE(ValidateConfig(sgd).ok());
}

}  // namespace
}  // namespace preflight::engine

namespace preflight::engine {
namespace {

using ::testing::HasSubstr;

TEST(ParseDevice, OneParserForEveryLayer) {
  EXPECT_EQ(ParseDevice("auto")->kind, DeviceSpec::kAuto);
  EXPECT_EQ(ParseDevice("cpu")->kind, DeviceSpec::kCpu);
  EXPECT_FALSE(ParseDevice("cpu")->MayUseCuda());
  EXPECT_TRUE(ParseDevice("auto")->MayUseCuda());
  EXPECT_EQ(ParseDevice("cuda")->index, 0);
  EXPECT_EQ(ParseDevice("cuda:3")->index, 3);
  for (const char* bad : {"", "gpu", "cuda:", "cuda:-1", "cuda:1024", "cuda:1x", "CPU"}) {
    SCOPED_TRACE(bad);
    const auto d = ParseDevice(bad);
    ASSERT_FALSE(d.ok());
    EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(d.status().message()), HasSubstr("device: expected auto, cpu"));
  }
}

TEST(ParseOptimizer, KnownNamesOnly) {
  EXPECT_EQ(*ParseOptimizer("adam"), Optimizer::kAdam);
  EXPECT_EQ(*ParseOptimizer("adamw"), Optimizer::kAdamW);
  EXPECT_EQ(*ParseOptimizer("sgd"), Optimizer::kSgd);
  EXPECT_THAT(std::string(ParseOptimizer("lbfgs").status().message()),
              HasSubstr("optimizer: unknown optimizer 'lbfgs'"));
}

TEST(OverfitTarget, AbsoluteTargetWinsElseRatioOfInitialMagnitude) {
  v1::CheckConfig c;
  ApplyDefaults(&c);
  EXPECT_DOUBLE_EQ(OverfitTarget(c, 2.3), 0.023);
  EXPECT_DOUBLE_EQ(OverfitTarget(c, -2.3), 0.023);
  c.set_target_loss(0.5);
  EXPECT_DOUBLE_EQ(OverfitTarget(c, 2.3), 0.5);
}

TEST(OverfitTarget, InflatedInitialLossIsBoundedByChanceLevel) {
  v1::CheckConfig c;
  ApplyDefaults(&c);
  const double ln10 = std::log(10.0);
  // A 50x output layer starts at ~15.6 on 10 classes: 1% of ln 10, not of 15.6.
  EXPECT_DOUBLE_EQ(OverfitTarget(c, 15.6, ln10), 0.01 * ln10);
  // A start below chance (a pretrained head) keeps its own scale.
  EXPECT_DOUBLE_EQ(OverfitTarget(c, 1.0, ln10), 0.01);
  // No chance level known (own loss, regression): unchanged.
  EXPECT_DOUBLE_EQ(OverfitTarget(c, 15.6, 0), 0.156);
  c.set_target_loss(0.5);
  EXPECT_DOUBLE_EQ(OverfitTarget(c, 15.6, ln10), 0.5);
}

TEST(ApplyDefaults, ExplicitOutOfRangeValuesAreValidatedNotReplaced) {
  struct Case {
    std::string field;
    std::function<void(v1::CheckConfig*)> set;
  } cases[] = {
      {"lr:", [](auto* c) { c->set_lr(0); }},
      {"max_steps:", [](auto* c) { c->set_max_steps(0); }},
      {"intra_op_threads:", [](auto* c) { c->set_intra_op_threads(0); }},
      {"target_ratio:", [](auto* c) { c->set_target_ratio(0); }},
      {"timeout_seconds:", [](auto* c) { c->set_timeout_seconds(0); }},
  };
  for (const auto& tc : cases) {
    SCOPED_TRACE(tc.field);
    v1::CheckConfig c;
    tc.set(&c);
    ApplyDefaults(&c);
    const absl::Status s = ValidateConfig(c);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(s.message()), HasSubstr(tc.field));
  }
}

TEST(Losses, OneTableForValidationAndTheEngine) {
  EXPECT_EQ(BuiltinLossNames(), "cross_entropy, nll, mse, l1, smooth_l1, bce_with_logits, bce");
  ASSERT_NE(FindLoss(kDefaultLoss), nullptr);
  EXPECT_EQ(FindLoss("bce_with_logits")->family, LossFamily::kBinary);
  EXPECT_TRUE(FindLoss("bce_with_logits")->takes_logits);
  EXPECT_FALSE(FindLoss("bce")->takes_logits);
  EXPECT_EQ(FindLoss("smooth_l1")->family, LossFamily::kRegression);
  EXPECT_EQ(FindLoss(kModelLoss), nullptr);
  for (const LossInfo& l : BuiltinLosses()) {
    v1::CheckConfig c;
    c.set_loss(l.name);
    ApplyDefaults(&c);
    EXPECT_TRUE(ValidateConfig(c).ok()) << l.name;
  }
}

}  // namespace
}  // namespace preflight::engine
