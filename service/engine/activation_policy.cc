#include "service/engine/activation_policy.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "service/engine/thresholds.h"

namespace preflight::engine {
namespace {

double ScaleOf(double input_rms, double target_rms) {
  double s = 1;
  if (std::isfinite(input_rms)) s = std::max(s, input_rms);
  if (std::isfinite(target_rms)) s = std::max(s, target_rms);
  return s;
}

// A non-finite output or gradient is the numerics check's finding, not an
// explosion to measure (NaN compares false anyway).
bool Above(double value, double bound) { return std::isfinite(value) && value > bound; }
// A submodule whose output overflowed to +inf is past every bound.
bool CallAbove(double rms, double bound) { return std::isinf(rms) || rms > bound; }

}  // namespace

bool OutputExplodes(double output_rms, double input_rms, double target_rms) {
  return Above(output_rms, kExplodingOutputFactor * ScaleOf(input_rms, target_rms));
}

ActivationDecision JudgeActivations(const ActivationEvidence& e) {
  ActivationDecision d;
  d.scale = ScaleOf(e.input_rms, e.target_rms);
  const double bound = kExplodingOutputFactor * d.scale;
  d.output_ratio = e.output_rms / d.scale;
  d.output_exploding = Above(e.output_rms, bound);
  if (e.grad_norm >= 0 && e.param_norm > 0) {
    d.grad_to_param = e.grad_norm / e.param_norm;
    d.gradient_exploding = Above(d.grad_to_param, kExplodingGradToParam);
  }
  d.exploding = d.output_exploding || d.gradient_exploding;

  std::vector<double> history;  // The named module's RMS per call, in order.
  for (const ModuleCall& c : e.calls) {
    if (d.module.empty()) {
      if (!CallAbove(c.rms, bound)) continue;
      d.module = c.module;
      for (const ModuleCall& earlier : e.calls) {
        if (&earlier == &c) break;
        if (earlier.module != c.module) continue;
        ++d.first_exploding_call;
        // From a zero state (h = 0) the first calls output 0: growth is
        // measured from the first non-zero output.
        if (earlier.rms > 0 || !history.empty()) history.push_back(earlier.rms);
      }
      history.push_back(c.rms);
      ++d.first_exploding_call;
    }
  }
  for (const ModuleCall& c : e.calls) d.module_calls += !d.module.empty() && c.module == d.module;
  if (history.size() >= 2 && history.front() > 0 && std::isfinite(history.back())) {
    d.growth_per_call =
        std::pow(history.back() / history.front(), 1.0 / static_cast<double>(history.size() - 1));
  }

  if (d.gradient_exploding && d.module.empty()) {
    // The largest gradient dominates the global norm that exploded (a
    // ratio to the parameter's own norm would pick any zero-initialised bias).
    double largest = 0;
    for (const auto& p : e.param_gradients) {
      if (!std::isfinite(p.grad_norm) || p.grad_norm <= largest) continue;
      largest = p.grad_norm;
      d.parameter = p.name;
      d.parameter_grad_ratio = p.norm > 0 ? p.grad_norm / p.norm : 0;
      d.parameter_grad_share = e.grad_norm > 0 ? p.grad_norm / e.grad_norm : 0;
    }
    if (!d.parameter.empty()) {
      const size_t dot = d.parameter.rfind('.');
      d.module = dot == std::string::npos ? "" : d.parameter.substr(0, dot);
    }
  }

  d.summary =
      absl::StrFormat("at initialisation the output RMS is %.3g, %.3gx the input/target scale %.3g",
                      e.output_rms, d.output_ratio, d.scale);
  if (d.grad_to_param > 0) {
    absl::StrAppendFormat(&d.summary, "; the gradient norm is %.3gx the parameter norm",
                          d.grad_to_param);
  }
  if (!d.parameter.empty()) {
    absl::StrAppendFormat(&d.summary,
                          "; the largest step-0 gradient is on %s (%.3g of the global "
                          "gradient norm",
                          d.parameter, d.parameter_grad_share);
    if (d.parameter_grad_ratio > 0) {
      absl::StrAppendFormat(&d.summary, ", %.3gx that parameter's own norm",
                            d.parameter_grad_ratio);
    }
    d.summary += ")";
  } else if (!d.module.empty()) {
    absl::StrAppendFormat(&d.summary, "; the first submodule past %.3g is %s", bound, d.module);
    if (d.module_calls > 1) {
      absl::StrAppendFormat(&d.summary, " (call %d of %d", d.first_exploding_call, d.module_calls);
      if (d.growth_per_call > 0) {
        absl::StrAppendFormat(&d.summary, ", its output growing %.3gx per call", d.growth_per_call);
      }
      d.summary += ")";
    }
  } else if (!e.calls_known) {
    d.summary += "; the format does not expose its submodules' outputs";
  } else {
    d.summary += "; no submodule output passed the bound (the growth is in forward() itself)";
  }
  return d;
}

}  // namespace preflight::engine
