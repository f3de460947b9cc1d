#include "service/engine/diagnosis_policy.h"

#include <cmath>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "service/engine/config.h"
#include "service/engine/curve.h"
#include "service/engine/thresholds.h"

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
  return {.train_mode = train_mode, .weight_decay = weight_decay, .any_grad = true, .updates = 100};
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

TEST(ImprovementFactor, RatioOfFinalLossesOrZero) {
  const CurveAnalysis original = Classify(Plateau(2.3, 1.0, 200));
  EXPECT_NEAR(ImprovementFactor(original, Classify(Plateau(2.3, 0.1, 200))), 10.0, 1e-6);
  EXPECT_NEAR(ImprovementFactor(original, Classify(Plateau(2.3, 2.0, 200))), 0.5, 1e-6);
  std::vector<double> nan_run = {2.3, 1.0, NAN};
  EXPECT_EQ(ImprovementFactor(original, ClassifyCurve(nan_run, 0.023, true)), 0);
}

TEST(EarlyStopLevel, TheWorseOfTheOriginalsStartAndEnd) {
  EXPECT_DOUBLE_EQ(EarlyStopLevel(Classify(Plateau(2.3, 1.0, 200))), 2.3);
  const CurveAnalysis rising = Classify(Rising(500));
  EXPECT_DOUBLE_EQ(EarlyStopLevel(rising), rising.final_value);
}

FloorEvidence Stationary() {
  return {.grad_norm_initial = 1.0,
          .grad_norm_final = 0.005,
          .param_norm_final = 7.0,
          .memorised_share = 1.0,
          .clean = true};
}

TEST(JudgeFloor, StationaryMemorisedCleanPlateauIsAFloor) {
  const CurveAnalysis floor = Classify(Plateau(2.0, 0.45, 500));
  ASSERT_EQ(floor.curve_class, CurveClass::kPlateau);
  const FloorDecision d = JudgeFloor(floor, Stationary());
  EXPECT_TRUE(d.stationary);
  EXPECT_TRUE(d.converged_to_floor);
  EXPECT_NEAR(d.grad_collapse, 0.005, 1e-12);
  EXPECT_THAT(d.summary, HasSubstr("100% of samples memorised"));
}

TEST(JudgeFloor, EachMissingConditionKeepsTheFailure) {
  const CurveAnalysis floor = Classify(Plateau(2.0, 0.45, 500));
  struct Case {
    const char* name;
    FloorEvidence evidence;
    bool stationary;
  };
  FloorEvidence live_gradient = Stationary();  // lr too low, weight decay: gradient stays.
  live_gradient.grad_norm_final = 0.3;
  FloorEvidence large_vs_params = Stationary();  // Collapsed vs start, not vs the weights.
  large_vs_params.param_norm_final = 1.0;
  large_vs_params.grad_norm_final = 0.01;
  FloorEvidence not_memorised = Stationary();
  not_memorised.memorised_share = 0.75;
  FloorEvidence unmeasurable = Stationary();
  unmeasurable.memorised_share = -1;
  FloorEvidence explained = Stationary();  // e.g. a softmax before the loss.
  explained.clean = false;
  for (const Case& c : {Case{"live gradient", live_gradient, false},
                        Case{"gradient large vs params", large_vs_params, false},
                        Case{"not memorised", not_memorised, true},
                        Case{"memorisation unmeasurable", unmeasurable, true},
                        Case{"explained by an earlier finding", explained, true}}) {
    SCOPED_TRACE(c.name);
    const FloorDecision d = JudgeFloor(floor, c.evidence);
    EXPECT_EQ(d.stationary, c.stationary);
    EXPECT_FALSE(d.converged_to_floor);
  }
}

TEST(JudgeFloor, OnlyAStoppedPlateauQualifies) {
  // Still falling over the tail: not stopped, whatever the gradient says.
  std::vector<double> creeping;
  for (int i = 0; i < 500; ++i) creeping.push_back(2.0 - 0.003 * i);
  const CurveAnalysis creep = Classify(creeping);
  ASSERT_EQ(creep.curve_class, CurveClass::kPlateau);
  EXPECT_FALSE(JudgeFloor(creep, Stationary()).stationary);
  // Other classes never do.
  EXPECT_FALSE(JudgeFloor(Classify(Rising(500)), Stationary()).converged_to_floor);
  EXPECT_FALSE(JudgeFloor(Classify(Geometric(2.3, 0.9, 100)), Stationary()).converged_to_floor);
}

// A plateau with deterministic step-to-step jitter of +-`jitter` (relative),
// as a stochastic objective (a VAE's sampled latent) gives.
std::vector<double> JitteryFloor(double start, double floor, double jitter, int n) {
  std::vector<double> v;
  uint32_t state = 12345;
  for (int i = 0; i < n; ++i) {
    state = state * 1664525u + 1013904223u;  // LCG: the same curve every run.
    const double u = static_cast<double>(state >> 8) / static_cast<double>(1u << 24) - 0.5;
    const double level = floor + (start - floor) * std::exp(-i / 20.0);
    v.push_back(level * (1 + 2 * jitter * u));
  }
  return v;
}

TEST(MeasureTail, WindowMeansAndTheJitterTheyCarry) {
  FloorEvidence flat;
  MeasureTail(std::vector<double>(500, 0.45), &flat);
  EXPECT_DOUBLE_EQ(flat.tail_move, 0);
  EXPECT_DOUBLE_EQ(flat.tail_noise, 0);

  // A slow steady fall: moves, and the trend is not taken for jitter.
  std::vector<double> creeping;
  for (int i = 0; i < 500; ++i) creeping.push_back(2.0 - 0.003 * i);
  FloorEvidence creep;
  MeasureTail(creeping, &creep);
  EXPECT_NEAR(creep.tail_move, 0.225 / 0.5765, 0.01);  // Window centres 75 steps apart.
  EXPECT_LT(creep.tail_noise, 1e-3);

  FloorEvidence jittery;
  MeasureTail(JitteryFloor(1.0, 0.05, 0.1, 500), &jittery);
  EXPECT_LT(jittery.tail_move, 0.03);
  EXPECT_GT(jittery.tail_noise, 0.005);
  EXPECT_LT(jittery.tail_noise, 0.03);

  FloorEvidence short_curve;
  MeasureTail({1.0, 0.5, 0.4}, &short_curve);
  EXPECT_EQ(short_curve.tail_move, -1);
}

// A stochastic objective's curve is noisy, not a plateau: at its floor the
// averaged gradient has collapsed and the level no longer moves beyond its
// jitter. The same jitter with a live averaged gradient (heavy dropout still
// pushing the logits) is no floor.
TEST(JudgeFloor, ANoisyCurveAtItsFloorQualifiesByItsAveragedGradient) {
  const std::vector<double> losses = JitteryFloor(1.0, 0.05, 0.3, 500);
  const CurveAnalysis noisy = Classify(losses);
  ASSERT_EQ(noisy.curve_class, CurveClass::kNoisy);
  FloorEvidence e = Stationary();
  MeasureTail(losses, &e);
  FloorDecision d = JudgeFloor(noisy, e);
  EXPECT_TRUE(d.stationary) << d.summary;
  EXPECT_TRUE(d.converged_to_floor);
  EXPECT_THAT(d.summary, HasSubstr("averaged gradient"));
  EXPECT_THAT(d.summary, HasSubstr("jitter"));

  FloorEvidence live = e;
  live.grad_norm_final = 0.2;
  EXPECT_FALSE(JudgeFloor(noisy, live).stationary);
  // Moving beyond what the jitter explains.
  FloorEvidence moving = e;
  moving.tail_move = kFloorTailMove + 2 * e.tail_noise + 0.01;
  EXPECT_FALSE(JudgeFloor(noisy, moving).stationary);
}

TEST(GradeStabilityExperiment, ConfirmedOnlyWithoutTheSpike) {
  Stability original;
  original.first_target_step = 6;
  original.peak_ratio = 8000;
  original.unstable = true;
  const std::vector<double> clean = Geometric(2.3, 0.9, 60);
  const CurveAnalysis converged = Classify(clean);
  EXPECT_EQ(GradeStabilityExperiment(original, converged, AnalyzeStability(clean, 0.023)),
            v1::Experiment::CONFIRMED);
  std::vector<double> smaller_spike = {2.3, 300, 50, 0.01};
  EXPECT_EQ(GradeStabilityExperiment(original, Classify(smaller_spike),
                                     AnalyzeStability(smaller_spike, 0.023)),
            v1::Experiment::IMPROVED);
  const std::vector<double> stalled = Plateau(2.3, 1.0, 200);
  EXPECT_EQ(GradeStabilityExperiment(original, Classify(stalled), AnalyzeStability(stalled, 0.023)),
            v1::Experiment::NO_EFFECT);
}

TEST(PlanExperiments, MoreStepsOnlyForACurveStillMoving) {
  // Still falling 2% per 10 steps at the end, total drop < 90%: not "still
  // falling steeply", but moving.
  std::vector<double> creeping;
  for (int i = 0; i < 500; ++i) creeping.push_back(0.5 + 1.2 * std::exp(-0.003 * i));
  const CurveAnalysis creep = Classify(creeping);
  ASSERT_EQ(creep.curve_class, CurveClass::kPlateau);
  ASSERT_GE(creep.tail_drop, kMoreStepsTailDrop);
  EXPECT_THAT(PlanExperiments(creep, Trained()),
              ElementsAre(K::kLrMul10, K::kEvalMode, K::kLrDiv10, K::kMoreSteps));
  // A curve that stopped moving cannot profit from more steps.
  EXPECT_THAT(PlanExperiments(Classify(Plateau(2.3, 1.0, 200)), Trained()),
              ElementsAre(K::kLrMul10, K::kEvalMode, K::kLrDiv10));
}

TEST(GradeExperiment, SameClassFarLowerIsImproved) {
  // lr x10 on a slow linear model: still a plateau, but 18x lower.
  const CurveAnalysis original = Classify(Plateau(1.7, 0.36, 500));
  const CurveAnalysis faster = Classify(Plateau(1.7, 0.02, 500));
  ASSERT_EQ(faster.curve_class, CurveClass::kPlateau);
  EXPECT_EQ(GradeExperiment(original, faster), v1::Experiment::IMPROVED);
  EXPECT_NEAR(ImprovementFactor(original, faster), 0.36 / 0.02, 0.1);
}

TEST(DescribeChange, LearningRatesAsAUserWritesThem) {
  EXPECT_EQ(DescribeChange(K::kLrDiv10, 1e-3), "lr 0.0001");
  EXPECT_EQ(DescribeChange(K::kLrDiv100, 1e-3), "lr 1e-05");
  EXPECT_EQ(DescribeChange(K::kLrMul10, 1e-3), "lr 0.01");
  EXPECT_EQ(DescribeChange(K::kNegatedLoss, 1e-3), "train on -loss");
  // Division, not multiplication by 0.1: bitwise what a user's lr / 10 gives.
  EXPECT_EQ(ChangeFor(K::kLrDiv10).Lr(0.3), 0.3 / 10);
}

TEST(PlanExperiments, AnExplodingForwardTriesASmallerInitFirst) {
  PlanInputs exploding = Trained();
  exploding.exploding = true;
  const CurveAnalysis plateau = Classify(Plateau(2.3, 1.0, 200));
  EXPECT_THAT(PlanExperiments(plateau, exploding),
              ElementsAre(K::kSmallerInit, K::kLrMul10, K::kEvalMode, K::kLrDiv10));
  // Exploded pre-activations can saturate every gradient to zero: a flat
  // curve without any gradient still gets the one experiment that can help.
  const CurveAnalysis flat = Classify(std::vector<double>(100, 2.3));
  exploding.any_grad = false;
  EXPECT_THAT(PlanExperiments(flat, exploding), ElementsAre(K::kSmallerInit));
  // Nothing before the first update, as for every other experiment.
  exploding.updates = 0;
  EXPECT_TRUE(PlanExperiments(plateau, exploding).empty());
}

TEST(DescribeChange, SmallerInitNamesTheModule) {
  EXPECT_EQ(ChangeFor(K::kSmallerInit).init_scale, kSmallerInitScale);
  EXPECT_EQ(DescribeChange(K::kSmallerInit, 1e-3, 500, "rnn"), "rnn's weights x0.1");
  EXPECT_EQ(DescribeChange(K::kSmallerInit, 1e-3, 500), "every weight x0.1");
  EXPECT_EQ(std::string(SpecOf(K::kSmallerInit).name), "smaller_init");
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
  const std::string hint =
      DiagnosisHint({Result(K::kNegatedLoss, v1::Experiment::CONFIRMED, converged),
                     Result(K::kLrDiv10, v1::Experiment::NO_EFFECT, stalled)},
                    Trained(), "fallback");
  EXPECT_THAT(hint, HasSubstr("Verified: negated_loss (train on -loss) makes the loss converge"));
  EXPECT_THAT(hint, HasSubstr("the objective has the wrong sign"));
  EXPECT_THAT(hint, ::testing::Not(HasSubstr("learning rate")));

  const std::string partial =
      DiagnosisHint({Result(K::kLrMul10, v1::Experiment::IMPROVED, Plateau(2.3, 0.3, 200))},
                    Trained(), "fallback");
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

TEST(DiagnosisHint, NamesALargeImprovementAndMoreSteps) {
  ExperimentResult faster = Result(K::kLrMul10, v1::Experiment::IMPROVED, Plateau(1.7, 0.02, 500));
  faster.improvement_factor = 25.7;
  const std::string hint = DiagnosisHint({faster}, Trained(), "fallback");
  EXPECT_THAT(hint, HasSubstr("Partly verified: lr_mul_10 (lr 0.01) lowers the final loss 25.7x"));
  EXPECT_THAT(hint, HasSubstr("the learning rate is too low; raise the learning rate"));

  ExperimentResult small = faster;
  small.improvement_factor = 3;
  EXPECT_THAT(DiagnosisHint({small}, Trained(), "fallback"),
              HasSubstr("Not confirmed, partly explained"));

  ExperimentResult longer =
      Result(K::kMoreSteps, v1::Experiment::CONFIRMED, Geometric(1.7, 0.997, 1400));
  longer.change = DescribeChange(K::kMoreSteps, 1e-3, 500);
  EXPECT_EQ(longer.change, "max_steps 2000");
  EXPECT_THAT(DiagnosisHint({faster, longer}, Trained(), "fallback"),
              HasSubstr("the model needs more steps: it converges at step 1400 with 4x the "
                        "budget"));
}

TEST(ExperimentParallelism, OneRunPerIntraOpThreadsCpusWhenAuto) {
  ParallelismInputs in;
  in.planned = 4;
  in.usable_cpus = 8;
  in.intra_op_threads = 2;
  EXPECT_EQ(ExperimentParallelism(in), 4);
  in.usable_cpus = 2;
  EXPECT_EQ(ExperimentParallelism(in), 1);
  in.intra_op_threads = 1;
  EXPECT_EQ(ExperimentParallelism(in), 2);
  in.usable_cpus = 64;  // Never more than the plan.
  EXPECT_EQ(ExperimentParallelism(in), 4);
  in.planned = 40;  // Nor more than the hard cap.
  EXPECT_EQ(ExperimentParallelism(in), kMaxParallelExperiments);
}

TEST(ExperimentParallelism, RequestedCountWinsOverCpus) {
  ParallelismInputs in;
  in.planned = 5;
  in.usable_cpus = 1;
  in.requested = 3;
  EXPECT_EQ(ExperimentParallelism(in), 3);
  in.requested = 1;
  in.usable_cpus = 16;
  EXPECT_EQ(ExperimentParallelism(in), 1);
}

TEST(ExperimentParallelism, SequentialWhenRunsCouldSeeEachOther) {
  ParallelismInputs base;
  base.planned = 4;
  base.usable_cpus = 8;
  ASSERT_EQ(ExperimentParallelism(base), 4);
  ParallelismInputs random = base;
  random.draws_random = true;
  EXPECT_EQ(ExperimentParallelism(random), 1);
  ParallelismInputs mutating = base;
  mutating.mutates_inputs = true;
  EXPECT_EQ(ExperimentParallelism(mutating), 1);
  ParallelismInputs cuda = base;
  cuda.cuda = true;
  cuda.requested = 4;
  EXPECT_EQ(ExperimentParallelism(cuda), 1);
  ParallelismInputs single = base;
  single.planned = 1;
  EXPECT_EQ(ExperimentParallelism(single), 1);
}

}  // namespace
}  // namespace preflight::engine
