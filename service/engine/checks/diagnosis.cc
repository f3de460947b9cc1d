// The curve of the main run, and for a failing curve the differential
// diagnosis: the experiments diagnosis_policy.h plans, run from the same
// initial weights, graded, and the hint it allows.
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "service/engine/checks/check.h"
#include "service/engine/config.h"
#include "service/engine/curve.h"
#include "service/engine/diagnosis_policy.h"
#include "service/engine/report_util.h"

namespace preflight::engine::internal {
namespace {

ExperimentResult RunExperiment(const CheckContext& c, const CurveAnalysis& original,
                               ExperimentKind kind, v1::Finding* curve_finding) {
  const ExperimentSpec& spec = SpecOf(kind);
  const ExperimentChange change = ChangeFor(kind);
  RunOptions o = RunOptionsFor(c);
  o.negate_loss = change.negate_loss;
  o.lr = change.Lr(o.lr);
  if (change.zero_weight_decay) o.weight_decay = 0;
  if (change.eval_mode) o.train_mode = false;
  const RunTrace r = Train(*c.model, c.batch, o);

  ExperimentResult result;
  result.kind = kind;
  result.change = DescribeChange(kind, c.config.lr());
  // The experiment's target: the same relative reduction of its own loss.
  result.analysis = ClassifyCurve(
      r.losses, OverfitTarget(c.config, r.losses.empty() ? 0 : r.losses[0]),
      r.failure != v1::FINDING_CODE_UNSPECIFIED);
  result.outcome = GradeExperiment(original, result.analysis);
  result.last_loss = r.losses.empty() ? NAN : r.losses.back();
  result.steps = static_cast<int>(r.losses.size());

  v1::Experiment* e = c.report->add_experiments();
  e->set_name(spec.name);
  e->set_hypothesis(spec.hypothesis);
  e->set_steps_run(result.steps);
  e->set_initial_loss(r.losses.empty() ? NAN : r.losses.front());
  e->set_final_loss(result.last_loss);
  e->set_curve(CurveCode(result.analysis.curve_class));
  e->set_outcome(result.outcome);
  AddText(curve_finding, absl::StrCat("experiment_", spec.name),
          absl::StrCat(v1::Experiment::Outcome_Name(result.outcome), ": ",
                       DescribeResult(result)));
  return result;
}

void Diagnose(CheckContext& c, const CurveAnalysis& a, v1::Finding* curve_finding) {
  const RunTrace& run = *c.main_run;
  PlanInputs in;
  in.train_mode = c.config.train_mode();
  in.weight_decay = c.config.weight_decay() > 0;
  for (const auto& p : run.params) in.any_grad |= p.received_grad;
  in.updates = run.updates;
  std::vector<ExperimentResult> results;
  for (ExperimentKind kind : PlanExperiments(a, in)) {
    results.push_back(RunExperiment(c, a, kind, curve_finding));
  }
  curve_finding->set_hint(DiagnosisHint(results, in, curve_finding->hint()));
}

}  // namespace

Next CheckCurve(CheckContext& c) {
  const RunTrace& run = *c.main_run;
  const bool errored = run.failure == v1::FORWARD_ERROR || run.failure == v1::LOSS_ERROR ||
                       run.failure == v1::BACKWARD_ERROR;
  if (errored || run.losses.empty()) return Next::kContinue;
  const CurveAnalysis a =
      ClassifyCurve(run.losses, c.target, run.failure != v1::FINDING_CODE_UNSPECIFIED);
  if (a.curve_class == CurveClass::kConverged) {
    auto* f = AddFinding(c.report, v1::OVERFIT_CONVERGED, v1::Finding::INFO, "overfit",
                         a.summary);
    AddNumber(f, "initial_loss", a.initial);
    AddNumber(f, "final_loss", run.losses.back());
    AddNumber(f, "steps", static_cast<double>(run.losses.size()));
    return Next::kContinue;
  }
  // A curve still falling steeply when the budget ran out shows the model
  // can fit the batch; it warns (with the verified cause) instead of
  // blocking the job.
  const auto severity = a.curve_class == CurveClass::kPlateau && a.still_falling
                            ? v1::Finding::WARN
                            : v1::Finding::FAIL;
  auto* f = AddFinding(c.report, CurveCode(a.curve_class), severity, "overfit",
                       absl::StrCat("did not fit one batch in ", run.losses.size(),
                                    " steps: ", a.summary));
  AddNumber(f, "initial_loss", a.initial);
  AddNumber(f, "final_loss", a.final_value);
  AddNumber(f, "target_loss", c.target);
  AddNumber(f, "steps", static_cast<double>(run.losses.size()));
  if (c.config.diagnose()) {
    const absl::Time start = absl::Now();
    Diagnose(c, a, f);
    c.report->mutable_timing()->set_diagnosis_seconds(absl::ToDoubleSeconds(absl::Now() - start));
  }
  return Next::kContinue;
}

}  // namespace preflight::engine::internal
