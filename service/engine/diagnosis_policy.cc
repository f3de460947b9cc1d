#include "service/engine/diagnosis_policy.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "service/engine/config.h"
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
    {ExperimentKind::kMoreSteps, "more_steps", "the step budget is too small",
     "the model needs more steps", "raise --steps (or the learning rate)"},
    {ExperimentKind::kSmallerInit, "smaller_init",
     "the activations explode from the initial weight scale",
     "the activations explode from the initial weight scale (a layer or recurrence whose gain "
     "is far above 1)",
     "initialise that layer smaller (a recurrent weight with gain below 1), add normalisation, "
     "or clip its output"},
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
    case ExperimentKind::kMoreSteps: c.steps_multiplier = kMoreStepsFactor; break;
    case ExperimentKind::kSmallerInit: c.init_scale = kSmallerInitScale; break;
  }
  return c;
}

std::string DescribeChange(ExperimentKind kind, double base_lr, int base_steps,
                           const std::string& module) {
  const ExperimentChange c = ChangeFor(kind);
  if (c.init_scale != 1) {
    return absl::StrFormat("%s x%.3g", module.empty() ? "every weight" : module + "'s weights",
                           c.init_scale);
  }
  if (c.steps_multiplier != 1) {
    return base_steps > 0 ? absl::StrCat("max_steps ", base_steps * c.steps_multiplier)
                          : absl::StrCat(c.steps_multiplier, "x the step budget");
  }
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
    case CurveClass::kRising: plan = {K::kNegatedLoss, K::kLrDiv10, K::kLrDiv100}; break;
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
      // Only a curve still moving at the end can profit from a longer run.
      if (a.tail_drop >= kMoreStepsTailDrop) plan.push_back(K::kMoreSteps);
      break;
    case CurveClass::kFlat:
      // Without any gradient no training setting can help.
      if (in.any_grad) plan = {K::kLrMul10};
      break;
    case CurveClass::kConverged: break;
  }
  // An exploding forward is the likeliest cause of any failing curve, a
  // flat one included: exploded pre-activations saturate to zero gradient.
  if (in.exploding && a.curve_class != CurveClass::kConverged) {
    plan.insert(plan.begin(), K::kSmallerInit);
  }
  return plan;
}

v1::Experiment::Outcome GradeExperiment(const CurveAnalysis& original,
                                        const CurveAnalysis& experiment) {
  if (experiment.curve_class == CurveClass::kConverged) return v1::Experiment::CONFIRMED;
  const double orig_final =
      std::isfinite(original.final_value) && original.first_non_finite_step < 0
          ? std::fabs(original.final_value)
          : INFINITY;
  const double bar = kImprovedShare * std::min(orig_final, std::fabs(original.initial));
  if (experiment.first_non_finite_step < 0 && std::isfinite(experiment.final_value) &&
      std::fabs(experiment.final_value) < bar) {
    return v1::Experiment::IMPROVED;
  }
  return v1::Experiment::NO_EFFECT;
}

double ImprovementFactor(const CurveAnalysis& original, const CurveAnalysis& experiment) {
  const double o = std::fabs(original.final_value);
  const double e = std::fabs(experiment.final_value);
  if (!std::isfinite(o) || !std::isfinite(e) || original.first_non_finite_step >= 0 ||
      experiment.first_non_finite_step >= 0 || e == 0) {
    return 0;
  }
  return o / e;
}

double EarlyStopLevel(const CurveAnalysis& original) {
  const double o = std::isfinite(original.final_value) && original.first_non_finite_step < 0
                       ? std::fabs(original.final_value)
                       : 0;
  return std::max(o, std::fabs(original.initial));
}

std::string DescribeResult(const ExperimentResult& r) {
  std::string s = absl::StrFormat("%s (%s): %s", SpecOf(r.kind).name, r.change, r.analysis.summary);
  if (r.improvement_factor > 0) {
    absl::StrAppendFormat(&s, "; final loss %.3gx lower than the original's", r.improvement_factor);
  }
  if (r.stopped_early) s += "; stopped early: no better than the original's start";
  return s;
}

void MeasureTail(const std::vector<double>& losses, FloorEvidence* e) {
  const size_t n = losses.size();
  const size_t w = std::max<size_t>(1, n / 10);
  if (n < 10) return;
  // A window's mean and its step-to-step variance: half the mean squared
  // successive difference, which a slow trend barely adds to.
  auto stats = [&](size_t begin) {
    double sum = 0, sq = 0;
    for (size_t i = begin; i < begin + w; ++i) {
      sum += losses[i];
      if (i > begin) sq += (losses[i] - losses[i - 1]) * (losses[i] - losses[i - 1]);
    }
    return std::pair(sum / static_cast<double>(w),
                     w > 1 ? sq / (2.0 * static_cast<double>(w - 1)) : 0.0);
  };
  const auto [before, var_before] = stats(n - n / 5 - w / 2);
  const auto [last, var_last] = stats(n - w);
  const double level = std::max(std::fabs(last), 1e-12);
  e->tail_move = std::fabs(before - last) / level;
  e->tail_noise = std::sqrt((var_before + var_last) / static_cast<double>(w)) / level;
}

FloorDecision JudgeFloor(const CurveAnalysis& a, const FloorEvidence& e) {
  FloorDecision d;
  const double tail = e.tail_move >= 0 ? e.tail_move : std::fabs(a.tail_drop);
  d.tail_move = tail;
  if (!(e.grad_norm_initial > 0) || !(e.param_norm_final > 0)) return d;
  d.grad_collapse = e.grad_norm_final / e.grad_norm_initial;
  d.grad_to_param = e.grad_norm_final / e.param_norm_final;
  const bool settling = (a.curve_class == CurveClass::kPlateau && !a.still_falling) ||
                        a.curve_class == CurveClass::kNoisy;
  if (!settling) return d;
  d.stationary = tail <= kFloorTailMove + 2 * e.tail_noise &&
                 d.grad_collapse <= kFloorGradCollapse && d.grad_to_param <= kFloorGradToParam;
  std::string memorised =
      e.memorised_share < 0
          ? std::string("memorisation not measurable for this loss and target")
          : absl::StrFormat("%.0f%% of samples memorised", 100 * e.memorised_share);
  d.summary = absl::StrFormat(
      "the %sgradient norm fell to %.2g of its start and %.2g of the parameter norm, the last "
      "20%% of steps moved the loss %.2f%%%s; %s",
      a.curve_class == CurveClass::kNoisy ? "averaged " : "", d.grad_collapse, d.grad_to_param,
      100 * tail,
      e.tail_noise > 0.001 ? absl::StrFormat(" (step-to-step jitter %.2f%%)", 100 * e.tail_noise)
                           : "",
      memorised);
  d.converged_to_floor = d.stationary && e.memorised_share >= 1.0 && e.clean;
  return d;
}

std::vector<ExperimentKind> PlanStabilityExperiments() {
  return {ExperimentKind::kLrDiv10, ExperimentKind::kLrDiv100};
}

v1::Experiment::Outcome GradeStabilityExperiment(const Stability& original,
                                                 const CurveAnalysis& experiment,
                                                 const Stability& s) {
  if (experiment.curve_class != CurveClass::kConverged) return v1::Experiment::NO_EFFECT;
  if (!s.unstable) return v1::Experiment::CONFIRMED;
  return s.peak_ratio < original.peak_ratio ? v1::Experiment::IMPROVED : v1::Experiment::NO_EFFECT;
}

std::string DiagnosisHint(const std::vector<ExperimentResult>& results, const PlanInputs& in,
                          const std::string& fallback) {
  std::vector<std::string> confirmed, named, improved, tried;
  for (const ExperimentResult& r : results) {
    const ExperimentSpec& spec = SpecOf(r.kind);
    tried.push_back(spec.name);
    if (r.outcome == v1::Experiment::CONFIRMED) {
      const std::string cause =
          r.kind == ExperimentKind::kMoreSteps
              ? absl::StrFormat("%s: it converges at step %d with %dx the budget", spec.cause,
                                r.steps, ChangeFor(r.kind).steps_multiplier)
              : std::string(spec.cause);
      confirmed.push_back(absl::StrFormat(
          "%s (%s) makes the loss converge, %.4g -> %.4g in %d steps: %s; %s", spec.name, r.change,
          r.analysis.initial, r.last_loss, r.steps, cause, spec.action));
    } else if (r.outcome == v1::Experiment::IMPROVED &&
               r.improvement_factor >= kNamedImprovementFactor) {
      named.push_back(absl::StrFormat(
          "%s (%s) lowers the final loss %.3gx (to %.4g) without reaching the target: %s; %s",
          spec.name, r.change, r.improvement_factor, r.analysis.final_value, spec.cause,
          spec.action));
    } else if (r.outcome == v1::Experiment::IMPROVED) {
      improved.push_back(DescribeResult(r));
    }
  }
  if (!confirmed.empty()) {
    return absl::StrCat("Verified: ", absl::StrJoin(confirmed, ". Also verified: "), ".");
  }
  if (!named.empty()) {
    return absl::StrCat("Partly verified: ", absl::StrJoin(named, ". Also: "), ".");
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
  return absl::StrCat(
      "Inconclusive: no gradient reaches the parameters, so no training "
      "change can help. ",
      fallback);
}

int ExperimentParallelism(const ParallelismInputs& in) {
  if (in.planned <= 1 || in.requested == 1 || in.cuda || in.draws_random || in.mutates_inputs) {
    return 1;
  }
  const int by_cpus = std::max(1, in.usable_cpus / std::max(1, in.intra_op_threads));
  const int wanted = in.requested > 1 ? in.requested : by_cpus;
  return std::clamp(std::min(wanted, in.planned), 1, kMaxParallelExperiments);
}

}  // namespace preflight::engine
