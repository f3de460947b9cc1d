// Gradient flow of the main run: parameters that never get a gradient, dead
// units, vanishing and exploding gradients.
#include <cmath>

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "service/engine/checks/check.h"
#include "service/engine/report_util.h"
#include "service/engine/thresholds.h"

namespace preflight::engine::internal {

Next CheckGradientFlow(CheckContext& c) {
  const RunTrace& t = *c.main_run;
  // Without one completed update there is no gradient history to judge.
  if (t.updates == 0) return Next::kContinue;

  std::vector<std::string> no_grad;
  for (const auto& p : t.params) {
    if (!p.received_grad) no_grad.push_back(p.name);
  }
  if (!no_grad.empty()) {
    const bool all = no_grad.size() == t.params.size();
    auto* f = AddFinding(
        c.report, v1::PARAM_NO_GRAD, all ? v1::Finding::FAIL : v1::Finding::WARN, "gradient_flow",
        absl::StrFormat("%d of %d trainable parameters never received a non-zero gradient in "
                        "%d steps: %s",
                        no_grad.size(), t.params.size(), t.updates, JoinFirst(no_grad)));
    AddNumber(f, "parameters_without_grad", static_cast<double>(no_grad.size()));
    AddText(f, "first", no_grad.front());
  }

  for (const auto& d : t.dead_layers) {
    if (d.units < kDeadMinUnits || d.dead == 0) continue;
    // A layer with no gradient at all is PARAM_NO_GRAD, not dead units.
    bool layer_has_grad = false;
    for (const auto& p : t.params) {
      if (p.name.rfind(d.layer + ".", 0) == 0 && p.received_grad) layer_has_grad = true;
    }
    if (!layer_has_grad && d.layer != "(root)") continue;
    const double share = static_cast<double>(d.dead) / static_cast<double>(d.units);
    if (share > c.report->gradient_flow().max_dead_unit_share()) {
      c.report->mutable_gradient_flow()->set_max_dead_unit_share(share);
      c.report->mutable_gradient_flow()->set_max_dead_layer(d.layer);
    }
    if (share < kDeadFraction) continue;
    auto* f = AddFinding(
        c.report, v1::DEAD_UNITS, v1::Finding::WARN, "gradient_flow",
        absl::StrFormat("%d of %d units (%.0f%%) of %s had exactly zero gradient for the whole "
                        "batch at the first and the last sampled step",
                        d.dead, d.units, 100 * share, d.layer));
    AddText(f, "layer", d.layer);
    AddNumber(f, "dead_units", static_cast<double>(d.dead));
    AddNumber(f, "units", static_cast<double>(d.units));
  }

  bool exploded = false;
  // Growth of the global gradient norm during the run: the feedback loop of
  // an unstable optimizer, visible before anything overflows.
  if (t.grad_norm_total.size() >= 2 && t.grad_norm_total[0] > 0) {
    size_t peak = 0;
    for (size_t i = 0; i < t.grad_norm_total.size(); ++i) {
      if (t.grad_norm_total[i] > t.grad_norm_total[peak]) peak = i;
    }
    const double growth = t.grad_norm_total[peak] / t.grad_norm_total[0];
    c.report->mutable_gradient_flow()->set_grad_norm_growth(growth);
    if (growth > kExplodingGrowth) {
      auto* f = AddFinding(
          c.report, v1::EXPLODING_GRADIENT, v1::Finding::WARN, "gradient_flow",
          absl::StrFormat("the global gradient norm grew %.3gx, from %.3g at step 0 to %.3g at "
                          "step %d",
                          growth, t.grad_norm_total[0], t.grad_norm_total[peak], peak));
      AddNumber(f, "grad_norm_step0", t.grad_norm_total[0]);
      AddNumber(f, "grad_norm_peak", t.grad_norm_total[peak]);
      AddNumber(f, "peak_step", static_cast<double>(peak));
      exploded = true;
    }
  }

  // First and last weight matrices that received a gradient at step 0.
  const ParamTrack* first = nullptr;
  const ParamTrack* last = nullptr;
  for (const auto& p : t.params) {
    if (p.shape.size() < 2 || p.grad_norm_first <= 0) continue;
    if (first == nullptr) first = &p;
    last = &p;
  }
  if (first != nullptr && last != nullptr && first != last) {
    const double rms_first = first->grad_norm_first / std::sqrt(static_cast<double>(first->numel));
    const double rms_last = last->grad_norm_first / std::sqrt(static_cast<double>(last->numel));
    const double ratio = rms_first / rms_last;
    c.report->mutable_gradient_flow()->set_first_last_grad_rms_ratio(ratio);
    v1::FindingCode code = v1::FINDING_CODE_UNSPECIFIED;
    if (ratio < kVanishingRatio) code = v1::VANISHING_GRADIENT;
    if (ratio > kExplodingRatio) code = v1::EXPLODING_GRADIENT;
    if (code == v1::EXPLODING_GRADIENT && exploded) code = v1::FINDING_CODE_UNSPECIFIED;
    if (code != v1::FINDING_CODE_UNSPECIFIED) {
      auto* f = AddFinding(
          c.report, code, v1::Finding::WARN, "gradient_flow",
          absl::StrFormat("at step 0 the gradient RMS of the first layer (%s, %.3g) is %.2gx "
                          "that of the last (%s, %.3g)",
                          first->name, rms_first, ratio, last->name, rms_last));
      AddText(f, "first_layer", first->name);
      AddText(f, "last_layer", last->name);
      AddNumber(f, "grad_rms_first", rms_first);
      AddNumber(f, "grad_rms_last", rms_last);
      AddNumber(f, "ratio", ratio);
    }
  }
  return Next::kContinue;
}

}  // namespace preflight::engine::internal
