#include "service/engine/structure_policy.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "service/engine/thresholds.h"

namespace preflight::engine {
namespace {

std::string JoinFirst(const std::vector<std::string>& names, size_t n = 3) {
  std::vector<std::string> head(names.begin(), names.begin() + std::min(n, names.size()));
  std::string s = absl::StrJoin(head, ", ");
  if (names.size() > n) absl::StrAppend(&s, " and ", names.size() - n, " more");
  return s;
}

}  // namespace

StructureDecision JudgeStructure(const StructureEvidence& e) {
  StructureDecision d;
  if (e.bound_measured && e.at_bound_share >= kAtBoundShare &&
      e.targets_beyond >= kTargetsBeyondShare) {
    const std::string range = absl::StrFormat(
        "with the inputs x%g the output stays in [%.4g, %.4g] (%.0f%% of its "
        "values exactly at a bound), while %.0f%% of the targets lie outside "
        "it (targets range over [%.4g, %.4g])",
        kProbeGain, e.amplified_min, e.amplified_max, 100 * e.at_bound_share,
        100 * e.targets_beyond, e.target_min, e.target_max);
    if (e.regression_loss && e.targets_look_like_class_ids) {
      d.class_ids_as_values = true;
      d.mismatch_summary = absl::StrFormat(
          "the targets are %d distinct integer class ids, used as values by a regression "
          "loss on a bounded output: %s",
          e.distinct_targets, range);
    } else {
      d.saturated = true;
      d.saturated_summary = absl::StrCat("the output is bounded: ", range);
    }
  }
  if (e.output_rank >= 0 && e.needed_rank > 0 && e.output_rank < e.needed_rank) {
    d.low_rank = true;
    d.low_rank_summary = absl::StrFormat(
        "the %d x %d output matrix has rank %d (centred over the samples; singular values "
        "above %g of the largest) but the targets need rank %d",
        e.samples, e.output_dims, e.output_rank, kRankRelTol, e.needed_rank);
  }
  if (e.nonlinearity >= 0 && e.nonlinearity <= kLinearTol) {
    d.linear = true;
    d.linear_summary = absl::StrFormat(
        "the model is linear in its input: f(0.3 x1 + 0.7 x2) equals 0.3 f(x1) + 0.7 f(x2) to "
        "%.2g of the output's spread (a missing non-linearity between layers)",
        e.nonlinearity);
  }
  if (e.cross_sample_change > kCrossSampleTol) {
    d.samples_mixed = true;
    d.mixed_summary = absl::StrFormat(
        "the samples are mixed: changing sample 0's input moves the other samples' outputs by "
        "%.3g of its own output's change (in eval mode; a softmax/normalisation or pooling over "
        "dim 0, or a reshape across the batch)",
        e.cross_sample_change);
  }
  if (e.inputs > 1 && !e.ignored_inputs.empty() &&
      static_cast<int>(e.ignored_inputs.size()) < e.inputs) {
    d.input_ignored = true;
    d.ignored_summary = absl::StrFormat(
        "the output does not depend on input%s %s: replacing %s with other samples' values "
        "leaves every output unchanged",
        e.ignored_inputs.size() > 1 ? "s" : "", absl::StrJoin(e.ignored_inputs, ", "),
        e.ignored_inputs.size() > 1 ? "them" : "it");
  }
  std::vector<std::string> without;
  int last_without = -1;
  const int n = static_cast<int>(std::min(e.param_names.size(), e.param_received_grad.size()));
  for (int i = 0; i < n; ++i) {
    if (!e.param_received_grad[i]) {
      without.push_back(e.param_names[i]);
      last_without = i;
    }
  }
  if (!without.empty() && static_cast<int>(without.size()) < n) {
    d.gradient_blocked = true;
    d.blocked_last = e.param_names[last_without];
    for (int i = last_without + 1; i < n; ++i) {
      if (e.param_received_grad[i]) {
        d.blocked_next = e.param_names[i];
        break;
      }
    }
    d.blocked_summary = absl::StrFormat(
        "the gradient is blocked inside forward: %d of %d parameters (%s) never get one",
        without.size(), n, JoinFirst(without));
    if (!d.blocked_next.empty()) {
      absl::StrAppendFormat(
          &d.blocked_summary,
          "; it stops between %s (the last without a gradient) and %s (the first after it "
          "with one): look there for detach(), torch.no_grad(), .data, argmax/round/sign or a "
          "comparison, or an integer cast, and remove it (or use a straight-through "
          "estimator)",
          d.blocked_last, d.blocked_next);
    } else {
      absl::StrAppend(&d.blocked_summary,
                      "; they come after every parameter that has one: an unused branch or "
                      "output, or a detach()/no_grad() before the loss");
    }
  }
  return d;
}

std::string StructuralCauses(const StructureDecision& d, bool curve_failed) {
  std::vector<std::string> causes;
  if (d.class_ids_as_values) causes.push_back(d.mismatch_summary);
  if (d.saturated) causes.push_back(d.saturated_summary);
  if (d.gradient_blocked) causes.push_back(d.blocked_summary);
  if (d.input_ignored) causes.push_back(d.ignored_summary);
  if (d.samples_mixed) causes.push_back(d.mixed_summary);
  if (d.low_rank) causes.push_back(d.low_rank_summary);
  if (d.linear && curve_failed) causes.push_back(d.linear_summary);
  return absl::StrJoin(causes, "; ");
}

std::string StructuralHint(const std::string& causes, const std::string& hint) {
  if (causes.empty() || absl::StartsWith(hint, "Verified")) return hint;
  std::string rest = hint;
  if (absl::StartsWith(rest, "Inconclusive: ")) rest = rest.substr(14);
  if (!rest.empty()) rest[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(rest[0])));
  return absl::StrCat("Measured (structural probes at init, not verified by an experiment): ",
                      causes, ". The experiments: ", rest);
}

}  // namespace preflight::engine
