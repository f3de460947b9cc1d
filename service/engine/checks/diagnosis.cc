// The curve of the main run, and for a failing curve the differential
// diagnosis: the experiments diagnosis_policy.h plans, run from the same
// initial weights, graded, and the hint it allows. Also the two verdicts
// that are not plain convergence: an irreducible minimum (PASS with
// CONVERGED_TO_FLOOR) and a target reached through a blow-up
// (UNSTABLE_CONVERGENCE).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>
#include <memory>
#include <thread>
#include <vector>

#include <c10/util/Exception.h>
#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "service/engine/checks/check.h"
#include "service/engine/config.h"
#include "service/engine/curve.h"
#include "service/engine/diagnosis_policy.h"
#include "service/engine/report_util.h"
#include "service/engine/thresholds.h"
#include "service/util/usable_cpus.h"

namespace preflight::engine::internal {
namespace {

// How an experiment's run is graded against the original.
enum class Grading { kCurve, kStability };

// The options of one experiment's run: the configured ones with the one
// setting the experiment changes.
RunOptions ExperimentOptions(const CheckContext& c, const CurveAnalysis& original,
                             ExperimentKind kind) {
  const ExperimentChange change = ChangeFor(kind);
  RunOptions o = RunOptionsFor(c);
  o.negate_loss = change.negate_loss;
  o.lr = change.Lr(o.lr);
  if (change.zero_weight_decay) o.weight_decay = 0;
  if (change.eval_mode) o.train_mode = false;
  o.max_steps *= change.steps_multiplier;
  o.init_scale = change.init_scale;
  o.init_scale_module = c.exploding_module.value_or("");
  o.early_stop_step = static_cast<int>(kEarlyStopShare * o.max_steps);
  o.early_stop_level = EarlyStopLevel(original);
  return o;
}

// Trains experiment runs, up to `parallelism` at a time, each on a thread of
// its own with the main run's intra-op thread count. Runs never share
// mutable state: each trains its own clone (made here, on the calling
// thread) of the loaded model, and ExperimentParallelism allows more than
// one at a time only for models that neither draw random numbers nor change
// their inputs. So the traces, and every report built from them, are the
// same whatever the parallelism; only the wall time differs.
class ExperimentRunner {
 public:
  ExperimentRunner(const CheckContext& c, int parallelism)
      : c_(c), parallelism_(std::max(1, parallelism)) {}

  // The traces of `runs`, in order. A non-LibTorch error in any run is
  // rethrown here (after every thread has joined), as Train would throw it.
  std::vector<RunTrace> Run(const std::vector<RunOptions>& runs) {
    std::vector<RunTrace> traces(runs.size());
    if (parallelism_ == 1 || runs.size() <= 1) {
      for (size_t i = 0; i < runs.size(); ++i) {
        const absl::Time start = absl::Now();
        traces[i] = Train(*c_.model, c_.batch, runs[i]);
        serial_seconds_ += absl::ToDoubleSeconds(absl::Now() - start);
      }
      return traces;
    }
    RunPooled(runs, traces);
    return traces;
  }

  int parallelism() const { return parallelism_; }
  // The runs' own wall times summed.
  double serial_seconds() const { return serial_seconds_; }

 private:
  // A thread's LibTorch warnings, replayed on the calling thread in run
  // order after the runs so that the report lists them as a sequential
  // diagnosis would (warning handlers are thread-local).
  class WarningBuffer : public c10::WarningHandler {
   public:
    void process(const c10::Warning& warning) override { warnings.push_back(warning); }
    std::vector<c10::Warning> warnings;
  };

  // `parallelism_` threads take the next run as they finish one (runs
  // stopped early free their thread for the next), so the wall time is
  // close to the total over the threads, not the longest run per wave.
  void RunPooled(const std::vector<RunOptions>& runs, std::vector<RunTrace>& traces) {
    const size_t n = runs.size();
    std::vector<std::unique_ptr<Model>> clones;
    for (size_t i = 0; i < n; ++i) clones.push_back(c_.model->Clone());
    std::vector<WarningBuffer> warnings(n);
    std::vector<double> seconds(n, 0);
    std::vector<std::exception_ptr> errors(n);
    std::atomic<size_t> next{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < parallelism_ && static_cast<size_t>(t) < n; ++t) {
      threads.emplace_back([&] {
        for (size_t i = next++; i < n; i = next++) {
          c10::WarningUtils::WarningHandlerGuard guard(&warnings[i]);
          const absl::Time start = absl::Now();
          try {
            traces[i] = Train(std::move(clones[i]), c_.batch, runs[i]);
          } catch (...) {
            errors[i] = std::current_exception();
          }
          seconds[i] = absl::ToDoubleSeconds(absl::Now() - start);
        }
      });
    }
    for (std::thread& t : threads) t.join();
    c10::WarningHandler* handler = c10::WarningUtils::get_warning_handler();
    for (size_t i = 0; i < n; ++i) {
      for (const c10::Warning& w : warnings[i].warnings) handler->process(w);
      serial_seconds_ += seconds[i];
    }
    for (const std::exception_ptr& e : errors) {
      if (e) std::rethrow_exception(e);
    }
  }

  const CheckContext& c_;
  const int parallelism_;
  double serial_seconds_ = 0;
};

// Grades an experiment's finished run and records it in the report and as
// evidence on `curve_finding`.
ExperimentResult RecordExperiment(const CheckContext& c, const CurveAnalysis& original,
                                  const Stability& original_stability, Grading grading,
                                  ExperimentKind kind, const RunOptions& o, const RunTrace& r,
                                  v1::Finding* curve_finding) {
  const ExperimentSpec& spec = SpecOf(kind);
  ExperimentResult result;
  result.kind = kind;
  result.change = DescribeChange(kind, c.config.lr(), c.config.max_steps(), o.init_scale_module);
  // The experiment's target: the same relative reduction of its own loss.
  const double target = OverfitTarget(c.config, r.losses.empty() ? 0 : r.losses[0], c.chance_loss);
  result.analysis = ClassifyCurve(r.losses, target, r.failure != v1::FINDING_CODE_UNSPECIFIED);
  result.outcome = grading == Grading::kStability
                       ? GradeStabilityExperiment(original_stability, result.analysis,
                                                  AnalyzeStability(r.losses, target))
                       : GradeExperiment(original, result.analysis);
  result.last_loss = r.losses.empty() ? NAN : r.losses.back();
  result.steps = static_cast<int>(r.losses.size());
  result.improvement_factor = ImprovementFactor(original, result.analysis);
  result.stopped_early = r.stopped_early;

  v1::Experiment* e = c.report->add_experiments();
  e->set_name(spec.name);
  e->set_hypothesis(spec.hypothesis);
  e->set_steps_run(result.steps);
  e->set_initial_loss(r.losses.empty() ? NAN : r.losses.front());
  e->set_final_loss(result.last_loss);
  e->set_curve(CurveCode(result.analysis.curve_class));
  e->set_outcome(result.outcome);
  e->set_improvement_factor(result.improvement_factor);
  e->set_stopped_early(result.stopped_early);
  AddText(curve_finding, absl::StrCat("experiment_", spec.name),
          absl::StrCat(v1::Experiment::Outcome_Name(result.outcome), ": ", DescribeResult(result)));
  return result;
}

// The main run's inputs differ from the batch as loaded: forward() changed
// them in place.
bool InputsMutated(const CheckContext& c) {
  for (size_t i = 0; i < c.batch.inputs.size() && i < c.pristine_inputs.size(); ++i) {
    if (!c.batch.inputs[i].isTensor()) continue;
    const torch::Tensor& now = c.batch.inputs[i].toTensor();
    if (!now.sizes().equals(c.pristine_inputs[i].sizes()) ||
        !torch::equal(now, c.pristine_inputs[i])) {
      return true;
    }
  }
  return false;
}

int ParallelismFor(const CheckContext& c, size_t planned) {
  ParallelismInputs in;
  in.requested = c.config.parallel_experiments();
  in.usable_cpus = util::UsableCpus();
  in.intra_op_threads = c.config.intra_op_threads();
  in.cuda = c.device.is_cuda();
  in.draws_random = c.main_run->drew_random;
  in.mutates_inputs = InputsMutated(c);
  in.planned = static_cast<int>(planned);
  return ExperimentParallelism(in);
}

// The experiments' summed own time and how many ran at once, for Timing.
void RecordDiagnosisTiming(const CheckContext& c, const ExperimentRunner& runner, size_t ran) {
  v1::Timing* t = c.report->mutable_timing();
  t->set_diagnosis_serial_seconds(runner.serial_seconds());
  t->set_diagnosis_parallelism(ran == 0 ? 0 : std::min<int>(runner.parallelism(), ran));
}

PlanInputs PlanInputsOf(const CheckContext& c) {
  const RunTrace& run = *c.main_run;
  PlanInputs in;
  in.train_mode = c.config.train_mode();
  in.weight_decay = c.config.weight_decay() > 0;
  for (const auto& p : run.params) in.any_grad |= p.received_grad;
  in.updates = run.updates;
  in.exploding = c.exploding_module.has_value();
  return in;
}

void Diagnose(CheckContext& c, const CurveAnalysis& a, v1::Finding* curve_finding) {
  const PlanInputs in = PlanInputsOf(c);
  const std::vector<ExperimentKind> plan = PlanExperiments(a, in);
  std::vector<RunOptions> runs;
  for (ExperimentKind kind : plan) runs.push_back(ExperimentOptions(c, a, kind));
  ExperimentRunner runner(c, ParallelismFor(c, plan.size()));
  const std::vector<RunTrace> traces = runner.Run(runs);
  RecordDiagnosisTiming(c, runner, plan.size());
  std::vector<ExperimentResult> results;
  for (size_t i = 0; i < plan.size(); ++i) {
    results.push_back(RecordExperiment(c, a, Stability{}, Grading::kCurve, plan[i], runs[i],
                                       traces[i], curve_finding));
  }
  curve_finding->set_hint(DiagnosisHint(results, in, curve_finding->hint()));
  // The smaller-init run is the exploding forward's own verification: its
  // finding carries the result too.
  for (const ExperimentResult& r : results) {
    if (r.kind != ExperimentKind::kSmallerInit) continue;
    for (v1::Finding& f : *c.report->mutable_findings()) {
      if (f.code() != v1::EXPLODING_ACTIVATIONS) continue;
      AddText(&f, "experiment_smaller_init",
              absl::StrCat(v1::Experiment::Outcome_Name(r.outcome), ": ", DescribeResult(r)));
      if (r.outcome != v1::Experiment::NO_EFFECT) f.set_hint(DiagnosisHint({r}, in, f.hint()));
    }
  }
  // Converging with the same settings and a longer budget shows the model
  // can fit the batch: like a curve still falling steeply, a warning.
  for (const ExperimentResult& r : results) {
    if (r.kind == ExperimentKind::kMoreSteps && r.outcome == v1::Experiment::CONFIRMED) {
      curve_finding->set_severity(v1::Finding::WARN);
    }
  }
}

// Records the time of the follow-up experiments in the report's timing.
class DiagnosisTimer {
 public:
  explicit DiagnosisTimer(v1::Report* report) : report_(report), start_(absl::Now()) {}
  ~DiagnosisTimer() {
    report_->mutable_timing()->set_diagnosis_seconds(absl::ToDoubleSeconds(absl::Now() - start_));
  }

 private:
  v1::Report* report_;
  absl::Time start_;
};

// The target was reached only after the loss blew up: a WARN when the loss
// stayed at the target for the settle window, a FAIL when it left it again.
void ReportUnstable(CheckContext& c, const CurveAnalysis& a, const Stability& s) {
  const RunTrace& run = *c.main_run;
  const bool settled = s.settled && run.failure == v1::FINDING_CODE_UNSPECIFIED;
  auto* f = AddFinding(
      c.report, v1::UNSTABLE_CONVERGENCE, settled ? v1::Finding::WARN : v1::Finding::FAIL,
      "overfit",
      absl::StrFormat(
          "the loss reached the target (%.3g) at step %d only after rising to "
          "%.3gx its initial %.4g; %s",
          c.target, s.first_target_step, s.peak_ratio, a.initial,
          settled ? absl::StrFormat("it stayed there for %d more steps",
                                    static_cast<int>(run.losses.size()) - 1 - s.first_target_step)
                  : std::string("it did not stay there")));
  AddNumber(f, "initial_loss", a.initial);
  AddNumber(f, "peak_ratio", s.peak_ratio);
  AddNumber(f, "first_target_step", s.first_target_step);
  AddNumber(f, "final_loss", run.losses.back());
  AddNumber(f, "target_loss", c.target);
  if (!c.config.diagnose()) return;
  DiagnosisTimer timer(c.report);
  // In waves of the runner's parallelism; the report keeps the experiments
  // up to the first CONFIRMED one, as a sequential diagnosis would.
  const std::vector<ExperimentKind> plan = PlanStabilityExperiments();
  ExperimentRunner runner(c, ParallelismFor(c, plan.size()));
  std::vector<ExperimentResult> results;
  bool confirmed = false;
  for (size_t begin = 0; begin < plan.size() && !confirmed; begin += runner.parallelism()) {
    const size_t end = std::min(plan.size(), begin + runner.parallelism());
    std::vector<RunOptions> runs;
    for (size_t i = begin; i < end; ++i) runs.push_back(ExperimentOptions(c, a, plan[i]));
    const std::vector<RunTrace> traces = runner.Run(runs);
    for (size_t i = begin; i < end && !confirmed; ++i) {
      results.push_back(RecordExperiment(c, a, s, Grading::kStability, plan[i], runs[i - begin],
                                         traces[i - begin], f));
      confirmed = results.back().outcome == v1::Experiment::CONFIRMED;
    }
  }
  RecordDiagnosisTiming(c, runner, results.size());
  f->set_hint(
      absl::StrCat("The target was touched only through a blow-up (often huge "
                   "logits), not by fitting. ",
                   DiagnosisHint(results, PlanInputsOf(c), f->hint())));
}

}  // namespace

Next CheckCurve(CheckContext& c) {
  const RunTrace& run = *c.main_run;
  const bool errored = run.failure == v1::FORWARD_ERROR || run.failure == v1::LOSS_ERROR ||
                       run.failure == v1::BACKWARD_ERROR;
  if (errored || run.losses.empty()) return Next::kContinue;
  const CurveAnalysis a =
      ClassifyCurve(run.losses, c.target, run.failure != v1::FINDING_CODE_UNSPECIFIED);
  const Stability stability = AnalyzeStability(run.losses, c.target);
  if (stability.unstable) {
    ReportUnstable(c, a, stability);
    return Next::kContinue;
  }
  if (a.curve_class == CurveClass::kConverged) {
    auto* f = AddFinding(c.report, v1::OVERFIT_CONVERGED, v1::Finding::INFO, "overfit", a.summary);
    AddNumber(f, "initial_loss", a.initial);
    AddNumber(f, "final_loss", run.losses.back());
    AddNumber(f, "steps", static_cast<double>(run.losses.size()));
    return Next::kContinue;
  }
  const FloorEvidence evidence = FloorEvidenceOf(c);
  const FloorDecision floor = JudgeFloor(a, evidence);
  if (floor.converged_to_floor) {
    auto* f = AddFinding(
        c.report, v1::CONVERGED_TO_FLOOR, v1::Finding::INFO, "overfit",
        absl::StrFormat("the loss settled at a floor of %.4g (from %.4g; the target %.3g lies "
                        "below it): %s",
                        a.final_value, a.initial, c.target, floor.summary));
    AddNumber(f, "floor_loss", a.final_value);
    AddNumber(f, "initial_loss", a.initial);
    AddNumber(f, "grad_norm_collapse", floor.grad_collapse);
    AddNumber(f, "grad_to_param_norm", floor.grad_to_param);
    AddNumber(f, "memorised_share", evidence.memorised_share);
    if (evidence.worst_regression_error >= 0) {
      AddNumber(f, "worst_sample_error_to_spread", evidence.worst_regression_error);
    }
    AddNumber(f, "tail_move", floor.tail_move);
    if (evidence.tail_noise > 0) AddNumber(f, "tail_noise", evidence.tail_noise);
    AddNumber(f, "steps", static_cast<double>(run.losses.size()));
    return Next::kContinue;
  }
  // A curve still falling steeply when the budget ran out shows the model
  // can fit the batch; it warns (with the verified cause) instead of
  // blocking the job.
  const auto severity = a.curve_class == CurveClass::kPlateau && a.still_falling
                            ? v1::Finding::WARN
                            : v1::Finding::FAIL;
  auto* f = AddFinding(
      c.report, CurveCode(a.curve_class), severity, "overfit",
      absl::StrCat("did not fit one batch in ", run.losses.size(), " steps: ", a.summary));
  AddNumber(f, "initial_loss", a.initial);
  AddNumber(f, "final_loss", a.final_value);
  AddNumber(f, "target_loss", c.target);
  AddNumber(f, "steps", static_cast<double>(run.losses.size()));
  if (floor.grad_collapse > 0) {
    AddNumber(f, "grad_norm_collapse", floor.grad_collapse);
    AddNumber(f, "grad_to_param_norm", floor.grad_to_param);
  }
  AddNumber(f, "memorised_share", evidence.memorised_share);
  if (evidence.worst_regression_error >= 0) {
    AddNumber(f, "worst_sample_error_to_spread", evidence.worst_regression_error);
  }
  if (a.curve_class == CurveClass::kPlateau || a.curve_class == CurveClass::kNoisy) {
    AddNumber(f, "tail_move", floor.tail_move);
  }
  if (floor.stationary) {
    // Why this floor is not accepted as an irreducible minimum.
    AddText(f, "stationary_point",
            absl::StrCat(floor.summary, evidence.clean ? ""
                                                       : "; an earlier finding can "
                                                         "explain the floor"));
  }
  if (c.config.diagnose()) {
    DiagnosisTimer timer(c.report);
    Diagnose(c, a, f);
  }
  return Next::kContinue;
}

}  // namespace preflight::engine::internal
