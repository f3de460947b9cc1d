#include "service/engine/structure_policy.h"

#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "service/engine/thresholds.h"

namespace preflight::engine {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

// A healthy MLP classifier as the probes measure it: unbounded output,
// full-rank logits, clearly non-linear, no coupling, every parameter fed.
StructureEvidence Healthy() {
  StructureEvidence e;
  e.output_rank = 9;
  e.needed_rank = 9;
  e.samples = 32;
  e.output_dims = 10;
  e.nonlinearity = 0.2;
  e.cross_sample_change = 0;
  e.inputs = 1;
  e.param_names = {"0.weight", "0.bias", "2.weight", "2.bias"};
  e.param_received_grad = {true, true, true, true};
  return e;
}

TEST(JudgeStructure, HealthyModelHasNoStructuralCause) {
  const StructureDecision d = JudgeStructure(Healthy());
  EXPECT_FALSE(d.saturated || d.class_ids_as_values || d.low_rank || d.linear || d.samples_mixed ||
               d.input_ignored || d.gradient_blocked);
  EXPECT_EQ(StructuralCauses(d, true), "");
}

TEST(JudgeStructure, BoundedOutputWithTargetsBeyondIsSaturated) {
  StructureEvidence e = Healthy();
  e.bound_measured = true;
  e.regression_loss = true;
  e.amplified_min = -1;
  e.amplified_max = 1;
  e.at_bound_share = 0.9;
  e.targets_beyond = 0.6;
  e.target_min = -4.8;
  e.target_max = 5.1;
  const StructureDecision d = JudgeStructure(e);
  EXPECT_TRUE(d.saturated);
  EXPECT_FALSE(d.class_ids_as_values);
  EXPECT_THAT(d.saturated_summary, HasSubstr("[-1, 1]"));
  EXPECT_THAT(d.saturated_summary, HasSubstr("60% of the targets"));
}

TEST(JudgeStructure, SaturationNeedsBothTheBoundAndTargetsBeyondIt) {
  StructureEvidence e = Healthy();
  e.bound_measured = true;
  e.regression_loss = true;
  // A sigmoid output with targets in [0, 1]: bounded, but the targets fit.
  e.at_bound_share = 1.0;
  e.targets_beyond = 0;
  EXPECT_FALSE(JudgeStructure(e).saturated);
  // An unbounded output: no ties at its extremes, whatever the targets.
  e.at_bound_share = 2.0 / 32;
  e.targets_beyond = 0.5;
  EXPECT_FALSE(JudgeStructure(e).saturated);
  // Just at the two thresholds.
  e.at_bound_share = kAtBoundShare;
  e.targets_beyond = kTargetsBeyondShare;
  EXPECT_TRUE(JudgeStructure(e).saturated);
}

TEST(JudgeStructure, ClassIdsUnderARegressionLossAreATargetMismatch) {
  StructureEvidence e = Healthy();
  e.bound_measured = true;
  e.regression_loss = true;
  e.amplified_min = 0;
  e.amplified_max = 1;
  e.at_bound_share = 1.0;
  e.targets_beyond = 0.6;
  e.targets_look_like_class_ids = true;
  e.distinct_targets = 5;
  const StructureDecision d = JudgeStructure(e);
  EXPECT_TRUE(d.class_ids_as_values);
  EXPECT_FALSE(d.saturated);  // One cause, named once.
  EXPECT_THAT(d.mismatch_summary, HasSubstr("5 distinct integer class ids"));
}

TEST(JudgeStructure, LowRankOnlyWhenTheTargetsNeedMore) {
  StructureEvidence e = Healthy();
  e.output_rank = 1;
  e.needed_rank = 9;
  StructureDecision d = JudgeStructure(e);
  EXPECT_TRUE(d.low_rank);
  EXPECT_THAT(d.low_rank_summary, HasSubstr("rank 1"));
  EXPECT_THAT(d.low_rank_summary, HasSubstr("need rank 9"));
  // Fewer samples than classes: the rank the batch needs is what counts.
  e.output_rank = 7;
  e.needed_rank = 7;
  EXPECT_FALSE(JudgeStructure(e).low_rank);
  e.output_rank = -1;  // Not measured.
  EXPECT_FALSE(JudgeStructure(e).low_rank);
}

TEST(JudgeStructure, LinearModelIsACauseOnlyForAFailedCurve) {
  StructureEvidence e = Healthy();
  e.nonlinearity = 3e-8;
  const StructureDecision d = JudgeStructure(e);
  EXPECT_TRUE(d.linear);
  EXPECT_THAT(StructuralCauses(d, true), HasSubstr("missing non-linearity"));
  EXPECT_EQ(StructuralCauses(d, false), "");
  e.nonlinearity = 10 * kLinearTol;
  EXPECT_FALSE(JudgeStructure(e).linear);
  e.nonlinearity = -1;
  EXPECT_FALSE(JudgeStructure(e).linear);
}

TEST(JudgeStructure, CoupledSamplesAreMixed) {
  StructureEvidence e = Healthy();
  e.cross_sample_change = 0.4;
  EXPECT_TRUE(JudgeStructure(e).samples_mixed);
  e.cross_sample_change = kCrossSampleTol / 10;  // Float noise.
  EXPECT_FALSE(JudgeStructure(e).samples_mixed);
}

TEST(JudgeStructure, OneOfSeveralInputsIgnored) {
  StructureEvidence e = Healthy();
  e.inputs = 2;
  e.ignored_inputs = {"inputs[1]"};
  const StructureDecision d = JudgeStructure(e);
  EXPECT_TRUE(d.input_ignored);
  EXPECT_THAT(d.ignored_summary, HasSubstr("input inputs[1]"));
  // Every input ignored is OUTPUT_IGNORES_INPUT's own case (init.cc).
  e.ignored_inputs = {"inputs[0]", "inputs[1]"};
  EXPECT_FALSE(JudgeStructure(e).input_ignored);
}

TEST(JudgeStructure, BlockedGradientSaysWhereItStops) {
  StructureEvidence e = Healthy();
  e.param_received_grad = {false, false, true, true};
  const StructureDecision d = JudgeStructure(e);
  ASSERT_TRUE(d.gradient_blocked);
  EXPECT_EQ(d.blocked_last, "0.bias");
  EXPECT_EQ(d.blocked_next, "2.weight");
  EXPECT_THAT(d.blocked_summary, HasSubstr("between 0.bias"));
  EXPECT_THAT(d.blocked_summary, HasSubstr("detach()"));
}

TEST(JudgeStructure, UnusedTrailingBranchIsNotBetweenLayers) {
  StructureEvidence e = Healthy();
  e.param_received_grad = {true, true, false, false};
  const StructureDecision d = JudgeStructure(e);
  ASSERT_TRUE(d.gradient_blocked);
  EXPECT_EQ(d.blocked_next, "");
  EXPECT_THAT(d.blocked_summary, HasSubstr("unused branch"));
  // No parameter with a gradient at all: nothing is "blocked" in between.
  e.param_received_grad = {false, false, false, false};
  EXPECT_FALSE(JudgeStructure(e).gradient_blocked);
}

TEST(StructuralHint, KeepsAVerifiedHint) {
  const std::string verified = "Verified: lr_mul_10 (lr 0.01) makes the loss converge.";
  EXPECT_EQ(StructuralHint("the model is linear", verified), verified);
}

TEST(StructuralHint, NamesTheMeasuredCauseInsteadOfInconclusive) {
  const std::string h =
      StructuralHint("the model is linear in its input",
                     "Inconclusive: none of lr_mul_10, lr_div_10 made the loss converge.");
  EXPECT_THAT(h, StartsWith("Measured (structural probes at init, not verified by an "
                            "experiment): the model is linear in its input."));
  EXPECT_THAT(h, HasSubstr("None of lr_mul_10, lr_div_10"));
  EXPECT_THAT(h, Not(HasSubstr("Inconclusive")));
}

TEST(StructuralHint, NoCauseLeavesTheHint) {
  EXPECT_EQ(StructuralHint("", "Inconclusive: x."), "Inconclusive: x.");
}

}  // namespace
}  // namespace preflight::engine
