#include "service/engine/activation_policy.h"

#include <cmath>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "service/engine/thresholds.h"

namespace preflight::engine {
namespace {

using ::testing::HasSubstr;

ActivationEvidence Healthy() {
  return {
      .input_rms = 1.0, .target_rms = 0, .output_rms = 0.6, .grad_norm = 0.5, .param_norm = 12.0};
}

TEST(JudgeActivations, HealthyScalesAreNotExploding) {
  const ActivationDecision d = JudgeActivations(Healthy());
  EXPECT_FALSE(d.exploding);
  EXPECT_DOUBLE_EQ(d.scale, 1.0);
  EXPECT_DOUBLE_EQ(d.output_ratio, 0.6);
  EXPECT_NEAR(d.grad_to_param, 0.5 / 12.0, 1e-12);
}

TEST(JudgeActivations, OutputIsComparedWithTheLargerOfInputAndTargetScale) {
  struct Case {
    const char* name;
    double input_rms, target_rms, output_rms;
    bool exploding;
  };
  const Case cases[] = {
      // Unnormalised inputs (RMS 1e4) make a large output expected.
      {"large inputs", 1e4, 0, 5e5, false},
      // Regression targets in the thousands.
      {"large targets", 1, 3e3, 1e5, false},
      // Just below and above the bound at scale 1.
      {"below bound", 0.01, 0, 0.99 * kExplodingOutputFactor, false},
      {"above bound", 0.01, 0, 1.01 * kExplodingOutputFactor, true},
      {"recurrence", 1, 0, 3e26, true},
      // Token inputs have no scale: 1 is the floor.
      {"token inputs", 0, 0, 2e4, true},
      // A non-finite output is the numerics check's finding, not this one.
      {"inf output", 1, 0, INFINITY, false},
      {"nan output", 1, 0, NAN, false},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    ActivationEvidence e = Healthy();
    e.input_rms = c.input_rms;
    e.target_rms = c.target_rms;
    e.output_rms = c.output_rms;
    EXPECT_EQ(JudgeActivations(e).output_exploding, c.exploding);
    EXPECT_EQ(OutputExplodes(c.output_rms, c.input_rms, c.target_rms), c.exploding);
  }
}

TEST(JudgeActivations, GradientFarAboveParameterNormExplodes) {
  ActivationEvidence e = Healthy();
  e.grad_norm = 2 * kExplodingGradToParam * e.param_norm;
  const ActivationDecision d = JudgeActivations(e);
  EXPECT_TRUE(d.gradient_exploding);
  EXPECT_FALSE(d.output_exploding);
  EXPECT_TRUE(d.exploding);
  EXPECT_THAT(d.summary, HasSubstr("gradient norm is 2e+03x the parameter norm"));
  // Unknown gradient (no update ran): only the output is judged.
  e.grad_norm = -1;
  EXPECT_FALSE(JudgeActivations(e).exploding);
}

TEST(JudgeActivations, NamesTheFirstModulePastTheBoundAndItsGrowthPerCall) {
  ActivationEvidence e = Healthy();
  e.output_rms = 3e26;
  e.calls_known = true;
  // An input projection, then a recurrent layer called once per step whose
  // output triples each call, then the head (even larger, but later).
  e.calls.push_back({"inp", 0.8});
  e.calls.push_back({"rec", 0.0});  // From h = 0: not part of the growth.
  double rms = 0.5;
  for (int t = 0; t < 12; ++t) {
    e.calls.push_back({"rec", rms});
    rms *= 3;
  }
  e.calls.push_back({"head", 1e27});
  const ActivationDecision d = JudgeActivations(e);
  ASSERT_TRUE(d.exploding);
  EXPECT_EQ(d.module, "rec");
  EXPECT_EQ(d.module_calls, 13);
  // 0.5 * 3^k > 1e3 first at k = 7: the 9th call, counting the zero one.
  EXPECT_EQ(d.first_exploding_call, 9);
  EXPECT_NEAR(d.growth_per_call, 3.0, 1e-9);
  EXPECT_THAT(d.summary, HasSubstr("the first submodule past 1e+03 is rec (call 9 of 13, its "
                                   "output growing 3x per call)"));
}

TEST(JudgeActivations, SaysWhenTheLayerCannotBeNamed) {
  ActivationEvidence e = Healthy();
  e.output_rms = 1e9;
  EXPECT_THAT(JudgeActivations(e).summary, HasSubstr("does not expose its submodules"));
  e.calls_known = true;
  e.calls = {{"fc", 2.0}};  // Every submodule small: the growth is in forward() itself.
  const ActivationDecision d = JudgeActivations(e);
  EXPECT_TRUE(d.module.empty());
  EXPECT_THAT(d.summary, HasSubstr("no submodule output passed the bound"));
}

TEST(JudgeActivations, AGradientLedExplosionNamesTheParameterWithTheLargestGradient) {
  ActivationEvidence e = Healthy();
  e.grad_norm = 5 * kExplodingGradToParam * e.param_norm;  // 6e4
  e.calls_known = true;
  e.calls = {{"embed", 0.8}, {"head", 0.9}};  // No output past the bound.
  // A zero-initialised bias must not win on its ratio to its own norm.
  e.param_gradients = {
      {"embed.weight", 6e4, 10.0}, {"head.weight", 30.0, 6.0}, {"head.bias", 2.0, 0.0}};
  const ActivationDecision d = JudgeActivations(e);
  ASSERT_TRUE(d.gradient_exploding);
  EXPECT_FALSE(d.output_exploding);
  EXPECT_EQ(d.parameter, "embed.weight");
  EXPECT_EQ(d.module, "embed");  // The smaller-init experiment scales it.
  EXPECT_NEAR(d.parameter_grad_share, 1.0, 1e-9);
  EXPECT_NEAR(d.parameter_grad_ratio, 6e3, 1e-6);
  EXPECT_THAT(d.summary, HasSubstr("largest step-0 gradient is on embed.weight"));
  // A top-level parameter: no submodule, so every weight is scaled.
  e.param_gradients = {{"scale", 6e4, 0.0}};
  const ActivationDecision top = JudgeActivations(e);
  EXPECT_EQ(top.parameter, "scale");
  EXPECT_EQ(top.module, "");
  EXPECT_EQ(top.parameter_grad_ratio, 0);
  // An output explosion keeps naming the layer whose output blew up.
  e.output_rms = 1e9;
  e.calls = {{"embed", 0.8}, {"head", 1e9}};
  const ActivationDecision out = JudgeActivations(e);
  EXPECT_EQ(out.module, "head");
  EXPECT_TRUE(out.parameter.empty());
}

}  // namespace
}  // namespace preflight::engine
