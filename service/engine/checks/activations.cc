// Exploding forwards: an output at init orders of magnitude above the
// input/target scale, or a step-0 gradient orders of magnitude above the
// parameter norm (activation_policy.h decides), with the first submodule
// whose output blew up where the format exposes its submodules. The
// smaller-init experiment that verifies it runs in the curve's diagnosis
// (diagnosis.cc), on the submodule named here.
#include <torch/torch.h>

#include "absl/strings/str_format.h"
#include "service/engine/activation_policy.h"
#include "service/engine/checks/check.h"
#include "service/engine/report_util.h"

namespace preflight::engine::internal {

Next CheckActivations(CheckContext& c) {
  const RunTrace& run = *c.main_run;
  ActivationEvidence e = c.activations;
  if (!run.grad_norm_total.empty()) {
    e.grad_norm = run.grad_norm_total.front();
    e.param_norm = run.param_norm_initial;
  }
  if (!JudgeActivations(e).exploding) return Next::kContinue;
  {
    // The run's per-parameter tracks follow TrainableParams' order.
    torch::NoGradGuard no_grad;
    const std::vector<NamedTensor> params = TrainableParams(*c.model);
    for (size_t i = 0; i < params.size() && i < run.params.size(); ++i) {
      e.param_gradients.push_back(
          {run.params[i].name, run.params[i].grad_norm_first,
           params[i].tensor.detach().to(torch::kFloat64).norm().item<double>()});
    }
  }

  // Only now pay for the instrumented forward: it names the layer.
  {
    std::unique_ptr<Model> m = c.model->Clone();
    m->SetTraining(c.config.train_mode());
    torch::manual_seed(c.config.seed());
    absl::StatusOr<std::vector<ModuleCall>> calls = m->ForwardRecordingModules(c.batch.inputs);
    if (calls.ok()) {
      e.calls = *std::move(calls);
      e.calls_known = true;
    }
  }
  const ActivationDecision d = JudgeActivations(e);
  c.activations = e;
  c.exploding_module = d.module;

  // A run that fitted the batch anyway is a warning; otherwise the
  // explosion is why it could not.
  auto* f = AddFinding(c.report, v1::EXPLODING_ACTIVATIONS,
                       run.converged ? v1::Finding::WARN : v1::Finding::FAIL, "init", d.summary);
  AddNumber(f, "output_rms", e.output_rms);
  AddNumber(f, "input_rms", e.input_rms);
  if (e.target_rms > 0) AddNumber(f, "target_rms", e.target_rms);
  AddNumber(f, "output_to_scale", d.output_ratio);
  if (d.grad_to_param > 0) AddNumber(f, "grad_to_param_norm", d.grad_to_param);
  AddText(f, "module",
          d.module.empty() ? (d.parameter.empty() ? "unknown" : "(top level)") : d.module);
  if (!d.parameter.empty()) {
    AddText(f, "parameter", d.parameter);
    AddNumber(f, "parameter_grad_share", d.parameter_grad_share);
    if (d.parameter_grad_ratio > 0) AddNumber(f, "parameter_grad_to_norm", d.parameter_grad_ratio);
  } else if (!d.module.empty()) {
    AddNumber(f, "module_calls", d.module_calls);
    AddNumber(f, "first_exploding_call", d.first_exploding_call);
    if (d.growth_per_call > 0) AddNumber(f, "growth_per_call", d.growth_per_call);
  }
  return Next::kContinue;
}

}  // namespace preflight::engine::internal
