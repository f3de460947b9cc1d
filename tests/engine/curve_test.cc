#include "service/engine/curve.h"

#include <cmath>
#include <vector>

#include <gtest/gtest.h>

namespace preflight::engine {
namespace {

std::vector<double> Geometric(double start, double factor, int n) {
  std::vector<double> v;
  for (int i = 0; i < n; ++i) v.push_back(start * std::pow(factor, i));
  return v;
}

TEST(ClassifyCurve, ConvergedWhenTargetReached) {
  auto c = Geometric(2.3, 0.9, 100);
  const auto a = ClassifyCurve(c, 0.023, false);
  EXPECT_EQ(a.curve_class, CurveClass::kConverged);
  EXPECT_EQ(CurveCode(a.curve_class), v1::OVERFIT_CONVERGED);
}

TEST(ClassifyCurve, NegativeObjectiveNeverConverges) {
  // log p minimised: falls from -2.3 without bound; |loss| grows.
  std::vector<double> c;
  for (int i = 0; i < 200; ++i) c.push_back(-2.3 - 0.5 * i);
  const auto a = ClassifyCurve(c, 0.023, false);
  EXPECT_EQ(a.curve_class, CurveClass::kDiverged);
  EXPECT_NE(a.summary.find("grew"), std::string::npos) << a.summary;
}

TEST(ClassifyCurve, UnboundedBelowZeroIsDiverged) {
  std::vector<double> c;
  for (int i = 0; i < 100; ++i) c.push_back(-1.0 - 0.03 * i);  // -1 -> -4: below by > |L0|.
  const auto a = ClassifyCurve(c, 0.01, false);
  EXPECT_EQ(a.curve_class, CurveClass::kDiverged);
  EXPECT_NE(a.summary.find("below zero"), std::string::npos) << a.summary;
}

TEST(ClassifyCurve, NonFiniteIsDivergedWithStep) {
  std::vector<double> c = {2.3, 2.0, 1.5, NAN};
  const auto a = ClassifyCurve(c, 0.023, true);
  EXPECT_EQ(a.curve_class, CurveClass::kDiverged);
  EXPECT_EQ(a.first_non_finite_step, 3);
}

TEST(ClassifyCurve, ExplosiveGrowthIsDiverged) {
  const auto a = ClassifyCurve(Geometric(1.0, 1.1, 100), 0.01, false);
  EXPECT_EQ(a.curve_class, CurveClass::kDiverged);
}

TEST(ClassifyCurve, SteadyRiseIsRisingEvenPastTheBlowUpBound) {
  // Quadratic growth 2.3 -> ~250: a flipped objective, not an instability.
  std::vector<double> c;
  for (int i = 0; i < 500; ++i) c.push_back(2.3 + 0.001 * i * i);
  EXPECT_EQ(ClassifyCurve(c, 0.023, false).curve_class, CurveClass::kRising);
}

TEST(ClassifyCurve, ModestRiseIsRising) {
  std::vector<double> c;
  for (int i = 0; i < 100; ++i) c.push_back(1.0 + 0.01 * i);
  EXPECT_EQ(ClassifyCurve(c, 0.01, false).curve_class, CurveClass::kRising);
}

TEST(ClassifyCurve, ConstantIsFlat) {
  std::vector<double> c(300, 2.302585);
  const auto a = ClassifyCurve(c, 0.023, false);
  EXPECT_EQ(a.curve_class, CurveClass::kFlat);
  EXPECT_EQ(CurveCode(a.curve_class), v1::LOSS_FLAT);
}

TEST(ClassifyCurve, LargeSwingsAreOscillating) {
  std::vector<double> c;
  for (int i = 0; i < 200; ++i) c.push_back(1.0 + 0.4 * ((i % 2) ? 1 : -1));
  EXPECT_EQ(ClassifyCurve(c, 0.01, false).curve_class, CurveClass::kOscillating);
}

TEST(ClassifyCurve, SmallSwingsOnAFloorAreNoisy) {
  std::vector<double> c;
  for (int i = 0; i < 200; ++i) c.push_back(0.3 + 0.02 * ((i % 2) ? 1 : -1));
  c.front() = 2.3;
  EXPECT_EQ(ClassifyCurve(c, 0.023, false).curve_class, CurveClass::kNoisy);
}

TEST(ClassifyCurve, StalledCurveIsPlateauNotStillFalling) {
  std::vector<double> c;
  for (int i = 0; i < 300; ++i) c.push_back(0.5 + 1.8 * std::exp(-i / 20.0));
  const auto a = ClassifyCurve(c, 0.023, false);
  EXPECT_EQ(a.curve_class, CurveClass::kPlateau);
  EXPECT_FALSE(a.still_falling);
}

TEST(ClassifyCurve, SteepTailIsPlateauStillFalling) {
  // 2.3 -> 0.03 and still dropping ~40% in the last 20% of steps.
  const auto a = ClassifyCurve(Geometric(2.3, 0.9914, 500), 0.023, false);
  ASSERT_EQ(a.curve_class, CurveClass::kPlateau) << a.summary;
  EXPECT_TRUE(a.still_falling);
  EXPECT_GT(a.tail_drop, 0.2);
}

TEST(ClassifyCurve, SlowCreepIsPlateauNotStillFalling) {
  // lr far too low: 3% drop in total.
  std::vector<double> c;
  for (int i = 0; i < 500; ++i) c.push_back(2.3 - 0.00015 * i);
  const auto a = ClassifyCurve(c, 0.023, false);
  EXPECT_EQ(a.curve_class, CurveClass::kPlateau);
  EXPECT_FALSE(a.still_falling);
}

TEST(ClassifyCurve, ThresholdsAreScaleFree) {
  // The same shapes at 1e-4 and 1e4 times the scale classify the same.
  for (double scale : {1e-4, 1.0, 1e4}) {
    SCOPED_TRACE(scale);
    std::vector<double> osc, flat, rise;
    for (int i = 0; i < 200; ++i) {
      osc.push_back(scale * (1.0 + 0.4 * ((i % 2) ? 1 : -1)));
      flat.push_back(scale);
      rise.push_back(scale * (1.0 + 0.01 * i));
    }
    EXPECT_EQ(ClassifyCurve(osc, 0.01 * scale, false).curve_class, CurveClass::kOscillating);
    EXPECT_EQ(ClassifyCurve(flat, 0.01 * scale, false).curve_class, CurveClass::kFlat);
    EXPECT_EQ(ClassifyCurve(rise, 0.01 * scale, false).curve_class, CurveClass::kRising);
  }
}

TEST(ReachedTarget, JudgesMagnitude) {
  EXPECT_TRUE(ReachedTarget(0.005, 0.01));
  EXPECT_TRUE(ReachedTarget(-0.005, 0.01));
  EXPECT_FALSE(ReachedTarget(-5.0, 0.01));
  EXPECT_FALSE(ReachedTarget(NAN, 0.01));
}

TEST(AnalyzeStability, TargetReachedThroughABlowUp) {
  // Adam at lr 20: 2.3 -> 1e4 -> touches 0 (huge logits) and stays there.
  const std::vector<double> spike = {2.3, 9000, 18000, 4000, 0.0, 0.0, 0.0};
  const Stability s = AnalyzeStability(spike, 0.023);
  EXPECT_EQ(s.first_target_step, 4);
  EXPECT_NEAR(s.peak_ratio, 18000 / 2.3, 1e-6);
  EXPECT_TRUE(s.unstable);
  EXPECT_TRUE(s.settled);
  // It left the target again.
  const Stability left = AnalyzeStability({2.3, 9000, 0.0, 50.0}, 0.023);
  EXPECT_TRUE(left.unstable);
  EXPECT_FALSE(left.settled);
}

TEST(AnalyzeStability, SmoothOrUnreachedIsStable) {
  std::vector<double> smooth;
  for (int i = 0; i < 60; ++i) smooth.push_back(2.3 * std::pow(0.9, i));
  const Stability s = AnalyzeStability(smooth, 0.023);
  EXPECT_GE(s.first_target_step, 0);
  EXPECT_FALSE(s.unstable);
  // A 5x bump on the way is within the divergence bound.
  EXPECT_FALSE(AnalyzeStability({2.3, 11.0, 1.0, 0.01}, 0.023).unstable);
  const Stability never = AnalyzeStability({2.3, 9000, 2.0}, 0.023);
  EXPECT_EQ(never.first_target_step, -1);
  EXPECT_FALSE(never.unstable);
}

}  // namespace
}  // namespace preflight::engine
