#include "service/engine/diagnosis_policy.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "service/engine/thresholds.h"

namespace preflight::engine {
namespace {

constexpr ExperimentSpec kSpecs[] = {
    {ExperimentKind::kNegatedLoss, "negated_loss", "the objective has the wrong sign",
     "the objective has the wrong sign: it is being maximised",
     "negate the loss (e.g. minimise -log p, not log p)"},
    {ExperimentKind::kLrDiv10, "lr_div_10", "the learning rate is too high",
     "the learning rate is too high", "lower the learning rate"},
    {ExperimentKind::kLrDiv100, "lr_div_100", "the learning rate is far too high",
     "the learning rate is far too high", "lower the learning rate"},
    {ExperimentKind::kLrMul10, "lr_mul_10", "the learning rate is too low",
     "the learning rate is too low", "raise the learning rate"},
    {ExperimentKind::kNoWeightDecay, "weight_decay_0", "weight decay over-regularises",
     "weight decay over-regularises the model", "lower or remove weight decay"},
    {ExperimentKind::kEvalMode, "eval_mode", "train-mode randomness (dropout) blocks memorising",
     "train-mode behaviour (dropout or batch statistics) keeps the loss from reaching the "
     "target",
     "reduce dropout, or check layers that behave differently in training"},
};

}  // namespace

const ExperimentSpec& SpecOf(ExperimentKind kind) {
  for (const ExperimentSpec& s : kSpecs) {
    if (s.kind == kind) return s;
  }
  return kSpecs[0];  // Unreachable: every kind has a spec.
}

ExperimentChange ChangeFor(ExperimentKind kind) {
  ExperimentChange c;
  switch (kind) {
    case ExperimentKind::kNegatedLoss: c.negate_loss = true; break;
    case ExperimentKind::kLrDiv10: c.lr_divisor = 10; break;
    case ExperimentKind::kLrDiv100: c.lr_divisor = 100; break;
    case ExperimentKind::kLrMul10: c.lr_multiplier = 10; break;
    case ExperimentKind::kNoWeightDecay: c.zero_weight_decay = true; break;
    case ExperimentKind::kEvalMode: c.eval_mode = true; break;
  }
  return c;
}

std::string DescribeChange(ExperimentKind kind, double base_lr) {
  const ExperimentChange c = ChangeFor(kind);
  if (c.negate_loss) return "train on -loss";
  if (c.zero_weight_decay) return "weight_decay 0";
  if (c.eval_mode) return "eval mode";
  return absl::StrFormat("lr %.3g", c.Lr(base_lr));
}

std::vector<ExperimentKind> PlanExperiments(const CurveAnalysis& a, const PlanInputs& in) {
  // A NaN/Inf before the first update does not depend on any training
  // setting: no experiment can change it.
  if (in.updates == 0) return {};
  using K = ExperimentKind;
  std::vector<K> plan;
  switch (a.curve_class) {
    case CurveClass::kRising:
      plan = {K::kNegatedLoss, K::kLrDiv10, K::kLrDiv100};
      break;
    case CurveClass::kDiverged:
      if (a.final_value < 0 || a.best < 0 || a.final_value < a.initial) {
        plan.push_back(K::kNegatedLoss);
      }
      plan.push_back(K::kLrDiv10);
      plan.push_back(K::kLrDiv100);
      break;
    case CurveClass::kOscillating:
      plan = {K::kLrDiv10, K::kLrDiv100};
      if (in.train_mode) plan.push_back(K::kEvalMode);
      break;
    case CurveClass::kNoisy:
      plan = {K::kLrDiv10};
      if (in.train_mode) plan.push_back(K::kEvalMode);
      break;
    case CurveClass::kPlateau:
      plan = {K::kLrMul10};
      if (in.weight_decay) plan.push_back(K::kNoWeightDecay);
      if (in.train_mode) plan.push_back(K::kEvalMode);
      plan.push_back(K::kLrDiv10);
      break;
    case CurveClass::kFlat:
      // Without any gradient no training setting can help.
      if (in.any_grad) plan = {K::kLrMul10};
      break;
    case CurveClass::kConverged:
      break;
  }
  return plan;
}

v1::Experiment::Outcome GradeExperiment(const CurveAnalysis& original,
                                        const CurveAnalysis& experiment) {
  if (experiment.curve_class == CurveClass::kConverged) return v1::Experiment::CONFIRMED;
  const double orig_final = std::isfinite(original.final_value) &&
                                    original.first_non_finite_step < 0
                                ? std::fabs(original.final_value)
                                : INFINITY;
  const double bar = kImprovedShare * std::min(orig_final, std::fabs(original.initial));
  if (experiment.curve_class != original.curve_class && experiment.first_non_finite_step < 0 &&
      std::fabs(experiment.final_value) < bar) {
    return v1::Experiment::IMPROVED;
  }
  return v1::Experiment::NO_EFFECT;
}

std::string DescribeResult(const ExperimentResult& r) {
  return absl::StrFormat("%s (%s): %s", SpecOf(r.kind).name, r.change, r.analysis.summary);
}

std::string DiagnosisHint(const std::vector<ExperimentResult>& results, const PlanInputs& in,
                          const std::string& fallback) {
  std::vector<std::string> confirmed, improved, tried;
  for (const ExperimentResult& r : results) {
    const ExperimentSpec& spec = SpecOf(r.kind);
    tried.push_back(spec.name);
    if (r.outcome == v1::Experiment::CONFIRMED) {
      confirmed.push_back(absl::StrFormat(
          "%s (%s) makes the loss converge, %.4g -> %.4g in %d steps: %s; %s", spec.name,
          r.change, r.analysis.initial, r.last_loss, r.steps, spec.cause, spec.action));
    } else if (r.outcome == v1::Experiment::IMPROVED) {
      improved.push_back(DescribeResult(r));
    }
  }
  if (!confirmed.empty()) {
    return absl::StrCat("Verified: ", absl::StrJoin(confirmed, ". Also verified: "), ".");
  }
  if (!improved.empty()) {
    return absl::StrCat("Not confirmed, partly explained: ", absl::StrJoin(improved, "; "),
                        " — better, but the target was not reached. ", fallback);
  }
  if (!tried.empty()) {
    return absl::StrCat("Inconclusive: none of ", absl::StrJoin(tried, ", "),
                        " made the loss converge. Check that the loss gets the right inputs, "
                        "that labels match inputs, and the data pipeline.");
  }
  if (in.updates == 0) {
    return "Not a training-setting problem: the first step already produced a non-finite "
           "value, before any update. Fix the operation named in the numerics finding.";
  }
  return absl::StrCat("Inconclusive: no gradient reaches the parameters, so no training "
                      "change can help. ", fallback);
}

}  // namespace preflight::engine
