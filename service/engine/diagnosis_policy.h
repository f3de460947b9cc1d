// The differential diagnosis as policy: which follow-up experiments a failing
// loss curve calls for, how an experiment's outcome is graded, and which
// cause the hint may state. No LibTorch: the runner (checks/diagnosis.cc)
// trains; this decides, and is unit-tested on hand-made curves.
//
// The rule the hint follows is the seeds' recipe made strict: a cause is
// named only when an experiment that changes exactly that setting makes the
// loss converge (CONFIRMED); an IMPROVED experiment is reported as partial
// evidence; otherwise the hint says "inconclusive".
//
//   auto plan = PlanExperiments(analysis, {.train_mode = true, ...});
//   for (ExperimentKind k : plan) { ... run with ChangeFor(k) ...
//     results.push_back({k, change, GradeExperiment(analysis, run), run, ...}); }
//   finding->set_hint(DiagnosisHint(results, plan_inputs, finding->hint()));
#pragma once

#include <string>
#include <vector>

#include "preflight/v1/report.pb.h"
#include "service/engine/curve.h"

namespace preflight::engine {

enum class ExperimentKind {
  kNegatedLoss,
  kLrDiv10,
  kLrDiv100,
  kLrMul10,
  kNoWeightDecay,
  kEvalMode,
  kMoreSteps,  // kMoreStepsFactor x the step budget, same settings.
  // The weights of the submodule an exploding forward names (all weights
  // when none is named) scaled by kSmallerInitScale before training.
  kSmallerInit,
};

struct ExperimentSpec {
  ExperimentKind kind;
  const char* name;        // Stable id in reports: "negated_loss", "lr_div_10", ...
  const char* hypothesis;  // What it tests, in words.
  const char* cause;       // Stated in the hint when confirmed.
  const char* action;      // What to change, when confirmed.
};
const ExperimentSpec& SpecOf(ExperimentKind kind);

// The one setting an experiment changes relative to the original run.
struct ExperimentChange {
  bool negate_loss = false;  // Train on -loss.
  // The learning rate becomes lr / lr_divisor * lr_multiplier (written as a
  // division so that lr / 10 is the same double a user would type).
  double lr_divisor = 1;
  double lr_multiplier = 1;
  double Lr(double base_lr) const { return base_lr / lr_divisor * lr_multiplier; }
  bool zero_weight_decay = false;
  bool eval_mode = false;    // Train with train-mode behaviour off.
  int steps_multiplier = 1;  // The step budget becomes max_steps x this.
  // The named submodule's weights (rank >= 2) start at this multiple of
  // their initial values.
  double init_scale = 1;
};
ExperimentChange ChangeFor(ExperimentKind kind);
// "train on -loss", "lr 0.0001", "weight_decay 0", "eval mode", "max_steps 2000",
// "rnn's weights x0.1" (`module`: the submodule kSmallerInit scales; "" = all).
std::string DescribeChange(ExperimentKind kind, double base_lr, int base_steps = 0,
                           const std::string& module = "");

// Facts about the original run the plan depends on.
struct PlanInputs {
  bool train_mode = true;     // Eval mode is a change only from train mode.
  bool weight_decay = false;  // Weight decay 0 is a change only from > 0.
  bool any_grad = false;      // Some parameter received a gradient.
  int updates = 0;            // Optimizer steps the original run took.
  // The forward explodes at init (EXPLODING_ACTIVATIONS): a smaller initial
  // weight scale is the first hypothesis for any failing curve.
  bool exploding = false;
};

// The experiments, in the order they run, for a curve that did not
// converge. Empty when no training setting can change the outcome (a
// NaN/Inf before the first update; a flat curve with no gradient at all).
std::vector<ExperimentKind> PlanExperiments(const CurveAnalysis& original,
                                            const PlanInputs& inputs);

// CONFIRMED: the experiment's run converged. IMPROVED: a finite curve whose
// final |loss| is below kImprovedShare of the better of the original's final
// and initial |loss| (its ImprovementFactor says by how much). NO_EFFECT
// otherwise.
v1::Experiment::Outcome GradeExperiment(const CurveAnalysis& original,
                                        const CurveAnalysis& experiment);

struct ExperimentResult {
  ExperimentKind kind;
  std::string change;  // DescribeChange().
  v1::Experiment::Outcome outcome;
  CurveAnalysis analysis;         // Of the experiment's own run.
  double last_loss = 0;           // The experiment's last recorded loss.
  int steps = 0;                  // Points in its curve.
  double improvement_factor = 0;  // ImprovementFactor(original, analysis).
  bool stopped_early = false;     // Stopped by the early-stop rule.
};

// |final loss| of the original over the experiment's (> 1: the experiment
// ended lower); 0 when either is not finite or the experiment's is 0 while
// the original's is not (an unbounded improvement is reported as CONFIRMED).
double ImprovementFactor(const CurveAnalysis& original, const CurveAnalysis& experiment);

// The |loss| level an experiment must be below at the early-stop step
// (kEarlyStopShare of its budget) to keep running: it has not even got below
// where the original run started and ended, so it cannot win.
double EarlyStopLevel(const CurveAnalysis& original);

// --- Irreducible minimum ---------------------------------------------------

// What the floor judgement needs from the main run.
struct FloorEvidence {
  double grad_norm_initial = 0;  // Global gradient norm at step 0.
  // The norm of the gradient averaged over the budget's last window
  // (RunTrace::grad_window_mean_norm), or the mean of the last norms.
  double grad_norm_final = 0;
  double param_norm_final = 0;  // Global parameter norm after the run.
  double memorised_share = -1;  // Share of samples fitted; -1: not measurable.
  // Regression: the worst sample's RMS error / the targets' standard
  // deviation (memorised up to kFloorRegressionError); -1 for other losses.
  double worst_regression_error = -1;
  // The loss level's movement over the curve's last fifth (mean of the last
  // tenth vs the tenth centred at the fifth's start) relative to the level,
  // and the standard error of that difference from step-to-step jitter; -1:
  // the curve is too short.
  double tail_move = -1;
  double tail_noise = 0;
  bool clean = true;  // No WARN-or-worse finding before the curve check.
};

// Sets evidence->tail_move and tail_noise from the curve: window means
// rather than two single steps, since a stochastic objective's loss jitters
// from step to step, and the standard error of their difference (what the
// jitter alone explains). Leaves them for curves under 10 steps.
void MeasureTail(const std::vector<double>& losses, FloorEvidence* evidence);

struct FloorDecision {
  bool stationary = false;          // Stopped moving with a collapsed gradient.
  bool converged_to_floor = false;  // Stationary, memorised and clean.
  double grad_collapse = 0;         // grad_norm_final / grad_norm_initial.
  double grad_to_param = 0;         // grad_norm_final / param_norm_final.
  double tail_move = 0;             // Tail movement (window means; else two steps).
  std::string summary;              // The numbers, in words.
};

// A non-converged curve is at an irreducible minimum when it is a plateau,
// or a noisy curve (a stochastic objective), that stopped moving (tail
// movement <= kFloorTailMove plus twice what its jitter explains) with the
// averaged gradient collapsed (kFloorGradCollapse of its start,
// kFloorGradToParam of the parameter norm), every sample memorised, and no
// earlier finding that could hold the loss up (a softmax before the loss
// also gives a floor).
FloorDecision JudgeFloor(const CurveAnalysis& curve, const FloorEvidence& evidence);

// --- Unstable convergence ----------------------------------------------------

// The experiments for a run that reached its target only after a blow-up.
std::vector<ExperimentKind> PlanStabilityExperiments();

// CONFIRMED: the experiment converged without the blow-up; IMPROVED: it
// converged with a smaller peak; NO_EFFECT otherwise.
v1::Experiment::Outcome GradeStabilityExperiment(const Stability& original,
                                                 const CurveAnalysis& experiment,
                                                 const Stability& experiment_stability);

// "experiment (change): summary", the evidence line of one experiment.
std::string DescribeResult(const ExperimentResult& result);

// The hint of the curve finding after the experiments in `results` ran.
// Confirmed causes are stated as verified; an IMPROVED experiment whose
// factor is at least kNamedImprovementFactor names its cause as partly
// verified (e.g. lr x10 lowering the final loss 25x: "the learning rate is
// too low"); otherwise the hint says what was tried.
// `fallback` is the finding's canonical hint, kept when nothing explains it.
std::string DiagnosisHint(const std::vector<ExperimentResult>& results, const PlanInputs& inputs,
                          const std::string& fallback);

// --- Parallel experiments ------------------------------------------------

// What decides how many follow-up experiments train at once.
struct ParallelismInputs {
  int requested = 0;         // CheckConfig.parallel_experiments: 0 auto, 1 off, N at most N.
  int usable_cpus = 1;       // CPUs the job may run on (its affinity mask).
  int intra_op_threads = 1;  // Threads each run uses (the main run's, so results match).
  bool cuda = false;         // Runs on a GPU.
  // The main run drew from the default generator (dropout, randn): runs at
  // once would interleave their draws, and results would depend on timing.
  bool draws_random = false;
  // forward() changed its input in place: runs at once would race on it.
  bool mutates_inputs = false;
  int planned = 0;  // Experiments in the plan.
};

// Runs at once: 1 when any run could see another's effects (shared
// generator, mutated inputs), on CUDA (runs on one device's default stream
// would serialise anyway), or when asked; otherwise the requested count, or
// for 0 one run per intra_op_threads CPUs; never more than planned, never
// more than kMaxParallelExperiments. Each run keeps intra_op_threads
// threads, so every experiment computes exactly what it would alone.
int ExperimentParallelism(const ParallelismInputs& inputs);

}  // namespace preflight::engine
