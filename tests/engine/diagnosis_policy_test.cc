#include "service/engine/diagnosis_policy.h"

#include <cmath>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "service/engine/curve.h"

namespace preflight::engine {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using K = ExperimentKind;

std::vector<double> Geometric(double start, double factor, int n) {
  std::vector<double> v;
  for (int i = 0; i < n; ++i) v.push_back(start * std::pow(factor, i));
  return v;
}

CurveAnalysis Classify(const std::vector<double>& c) {
  return ClassifyCurve(c, 0.01 * std::fabs(c.front()), false);
}

// A smooth curve stalled at `floor`: plateau.
std::vector<double> Plateau(double start, double floor, int n) {
  std::vector<double> v;
  for (int i = 0; i < n; ++i) v.push_back(floor + (start - floor) * std::exp(-0.2 * i));
  return v;
}

std::vector<double> Rising(int n) {
  std::vector<double> v;
  for (int i = 0; i < n; ++i) v.push_back(2.3 + 0.001 * i * i);
  return v;
}

PlanInputs Trained(bool train_mode = true, bool weight_decay = false) {
  return {.train_mode = train_mode, .weight_decay = weight_decay, .any_grad = true,
          .updates = 100};
}

TEST(PlanExperiments, EachCurveClassGetsItsExperiments) {
  const CurveAnalysis plateau = Classify(Plateau(2.3, 1.0, 200));
  ASSERT_EQ(plateau.curve_class, CurveClass::kPlateau);
  EXPECT_THAT(PlanExperiments(plateau, Trained()),
              ElementsAre(K::kLrMul10, K::kEvalMode, K::kLrDiv10));
  EXPECT_THAT(PlanExperiments(plateau, Trained(/*train_mode=*/false, /*weight_decay=*/true)),
              ElementsAre(K::kLrMul10, K::kNoWeightDecay, K::kLrDiv10));

  const CurveAnalysis rising = Classify(Rising(500));
  ASSERT_EQ(rising.curve_class, CurveClass::kRising);
  EXPECT_THAT(PlanExperiments(rising, Trained()),
              ElementsAre(K::kNegatedLoss, K::kLrDiv10, K::kLrDiv100));

  // Falls below zero without bound: a sign error is a candidate.
  std::vector<double> below;
  for (int i = 0; i < 100; ++i) below.push_back(-1.0 - 0.03 * i);
  const CurveAnalysis diverged = Classify(below);
  ASSERT_EQ(diverged.curve_class, CurveClass::kDiverged);
  EXPECT_THAT(PlanExperiments(diverged, Trained()),
              ElementsAre(K::kNegatedLoss, K::kLrDiv10, K::kLrDiv100));
  // Blows up upwards: only the learning rate.
  const CurveAnalysis blown = Classify(Geometric(1.0, 1.1, 100));
  ASSERT_EQ(blown.curve_class, CurveClass::kDiverged);
  EXPECT_THAT(PlanExperiments(blown, Trained()), ElementsAre(K::kLrDiv10, K::kLrDiv100));
}

TEST(PlanExperiments, NothingToTryWithoutAnUpdateOrAGradient) {
  const CurveAnalysis plateau = Classify(Plateau(2.3, 1.0, 200));
  PlanInputs broke = Trained();
  broke.updates = 0;
  EXPECT_TRUE(PlanExperiments(plateau, broke).empty());

  const CurveAnalysis flat = Classify(std::vector<double>(100, 2.3));
  ASSERT_EQ(flat.curve_class, CurveClass::kFlat);
  PlanInputs no_grad = Trained();
  no_grad.any_grad = false;
  EXPECT_TRUE(PlanExperiments(flat, no_grad).empty());
  EXPECT_THAT(PlanExperiments(flat, Trained()), ElementsAre(K::kLrMul10));
}

TEST(GradeExperiment, ConfirmedImprovedAndNoEffect) {
  const CurveAnalysis original = Classify(Plateau(2.3, 1.0, 200));
  EXPECT_EQ(GradeExperiment(original, Classify(Geometric(2.3, 0.9, 100))),
            v1::Experiment::CONFIRMED);
  // A different class (noisy) ending far below half the original's final loss.
  std::vector<double> better;
  for (int i = 0; i < 200; ++i) better.push_back(0.3 + 2.0 * std::exp(-0.05 * i) + 0.02 * (i % 2));
  const CurveAnalysis improved = Classify(better);
  ASSERT_EQ(improved.curve_class, CurveClass::kNoisy);
  ASSERT_LT(improved.final_value, 0.5);
  EXPECT_EQ(GradeExperiment(original, improved), v1::Experiment::IMPROVED);
  // The same stall again.
  EXPECT_EQ(GradeExperiment(original, Classify(Plateau(2.3, 1.01, 200))),
            v1::Experiment::NO_EFFECT);
  // Non-finite experiments never count as improvement.
  std::vector<double> nan_run = {2.3, 1.0, 0.5, NAN};
  EXPECT_EQ(GradeExperiment(original, ClassifyCurve(nan_run, 0.023, true)),
            v1::Experiment::NO_EFFECT);
}

TEST(DescribeChange, LearningRatesAsAUserWritesThem) {
  EXPECT_EQ(DescribeChange(K::kLrDiv10, 1e-3), "lr 0.0001");
  EXPECT_EQ(DescribeChange(K::kLrDiv100, 1e-3), "lr 1e-05");
  EXPECT_EQ(DescribeChange(K::kLrMul10, 1e-3), "lr 0.01");
  EXPECT_EQ(DescribeChange(K::kNegatedLoss, 1e-3), "train on -loss");
  // Division, not multiplication by 0.1: bitwise what a user's lr / 10 gives.
  EXPECT_EQ(ChangeFor(K::kLrDiv10).Lr(0.3), 0.3 / 10);
}

ExperimentResult Result(K kind, v1::Experiment::Outcome outcome, const std::vector<double>& c) {
  ExperimentResult r;
  r.kind = kind;
  r.change = DescribeChange(kind, 1e-3);
  r.outcome = outcome;
  r.analysis = Classify(c);
  r.last_loss = c.back();
  r.steps = static_cast<int>(c.size());
  return r;
}

TEST(DiagnosisHint, NamesOnlyConfirmedCauses) {
  const auto converged = Geometric(2.3, 0.9, 50);
  const auto stalled = Plateau(2.3, 1.0, 200);
  const std::string hint = DiagnosisHint(
      {Result(K::kNegatedLoss, v1::Experiment::CONFIRMED, converged),
       Result(K::kLrDiv10, v1::Experiment::NO_EFFECT, stalled)},
      Trained(), "fallback");
  EXPECT_THAT(hint, HasSubstr("Verified: negated_loss (train on -loss) makes the loss converge"));
  EXPECT_THAT(hint, HasSubstr("the objective has the wrong sign"));
  EXPECT_THAT(hint, ::testing::Not(HasSubstr("learning rate")));

  const std::string partial = DiagnosisHint(
      {Result(K::kLrMul10, v1::Experiment::IMPROVED, Plateau(2.3, 0.3, 200))}, Trained(),
      "fallback");
  EXPECT_THAT(partial, HasSubstr("Not confirmed, partly explained: lr_mul_10 (lr 0.01)"));
  EXPECT_THAT(partial, HasSubstr("fallback"));

  const std::string none =
      DiagnosisHint({Result(K::kLrMul10, v1::Experiment::NO_EFFECT, stalled)}, Trained(), "x");
  EXPECT_THAT(none, HasSubstr("Inconclusive: none of lr_mul_10 made the loss converge"));
}

TEST(DiagnosisHint, ExplainsWhyNothingRan) {
  PlanInputs broke = Trained();
  broke.updates = 0;
  EXPECT_THAT(DiagnosisHint({}, broke, "x"), HasSubstr("before any update"));
  PlanInputs no_grad = Trained();
  no_grad.any_grad = false;
  EXPECT_THAT(DiagnosisHint({}, no_grad, "canonical"),
              HasSubstr("no gradient reaches the parameters, so no training change can help. "
                        "canonical"));
}

}  // namespace
}  // namespace preflight::engine
