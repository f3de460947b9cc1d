// The check families and the context they share. Private to service/engine.
//
// A check reads the context, appends findings to ctx.report and says whether
// the later checks can still run. RunCheck (engine.cc) calls them in order:
//
//   CheckInputs        input.cc         data NaN/Inf, trainable parameters
//   CheckAtInit        init.cc          forward + loss at init, loss inputs,
//                                       init-loss scale, probabilities, input use
//   RunOverfit         (overfit.h)      the main run; fills ctx.main_run
//   CheckNumerics      numerics.cc      first non-finite tensor + anomaly replay
//   CheckGradientFlow  gradient_flow.cc no-grad, dead units, vanishing/exploding
//   CheckActivations   activations.cc   exploding forward at init, its first layer
//   CheckCurve         diagnosis.cc     curve class + differential diagnosis
//   CheckStructure     structure.cc     structural probes at init; names a
//                                       measured cause in a failed curve's hint
//   CheckDeterminism   determinism.cc   bitwise replay
//
// A new check is a function with this signature in a new file here, and one
// line in engine.cc's sequence.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/types.h>

#include "preflight/v1/report.pb.h"
#include "service/engine/activation_policy.h"
#include "service/engine/batch.h"
#include "service/engine/diagnosis_policy.h"
#include "service/engine/model.h"
#include "service/engine/overfit.h"

namespace preflight::engine::internal {

struct CheckContext {
  v1::CheckConfig config;  // Validated, defaults applied.
  torch::Device device = torch::kCPU;
  std::unique_ptr<Model> model;  // As loaded; never trained (runs clone it).
  Batch batch;
  std::vector<torch::Tensor> pristine_inputs;  // Copies taken at load time.
  std::string loss;                            // Resolved: a built-in name or kModelLoss.
  double init_loss = 0;                        // Loss at initialisation (set by CheckAtInit).
  // Loss of an uninformed prediction (ln C, ln 2) where the loss defines
  // one; 0 otherwise (set by CheckAtInit). Bounds the overfit target.
  double chance_loss = 0;
  double target = 0;  // Absolute |loss| target of the overfit run.
  // Output, input and target scale at init (set by CheckAtInit; the
  // gradient and the submodule calls are added by CheckActivations).
  ActivationEvidence activations;
  // Set by CheckActivations when the forward explodes: the submodule whose
  // weights the smaller-init experiment scales down ("" = every weight).
  std::optional<std::string> exploding_module;
  std::optional<RunTrace> main_run;  // Set after the overfit run.
  v1::Report* report = nullptr;
};

enum class Next { kContinue, kStop };

// Options of a run with the configured settings (the main run's options;
// experiments change one field).
RunOptions RunOptionsFor(const CheckContext& ctx);

// The evidence for an irreducible minimum from the main run (floor.cc):
// gradient and parameter norms, the share of samples the last output fits,
// and whether an earlier finding could explain a floor.
FloorEvidence FloorEvidenceOf(const CheckContext& ctx);

Next CheckInputs(CheckContext& ctx);
Next CheckAtInit(CheckContext& ctx);
Next CheckNumerics(CheckContext& ctx);
Next CheckGradientFlow(CheckContext& ctx);
Next CheckActivations(CheckContext& ctx);
Next CheckCurve(CheckContext& ctx);
Next CheckStructure(CheckContext& ctx);
Next CheckDeterminism(CheckContext& ctx);

}  // namespace preflight::engine::internal
