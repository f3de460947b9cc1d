// Exploding forwards as policy: whether the output (or the gradient) at
// initialisation is orders of magnitude off the model's own scale, and which
// submodule's output blew up first. No LibTorch: the checks measure
// (checks/activations.cc), this decides, and is unit-tested on hand-made
// numbers.
//
//   ActivationEvidence e{.input_rms = 1, .output_rms = 3e26, ...};
//   e.calls = recorded;  // Model::ForwardRecordingModules, in call order.
//   ActivationDecision d = JudgeActivations(e);
//   if (d.exploding) ... d.module names the first submodule past the bound.
#pragma once

#include <string>
#include <vector>

namespace preflight::engine {

// One call of a submodule during a forward pass: its qualified name
// ("encoder.0", "rnn") and the RMS of its (first tensor) output. A module
// called in a loop (a recurrence) appears once per call.
struct ModuleCall {
  std::string module;
  double rms = 0;
};

struct ActivationEvidence {
  double input_rms = 0;   // RMS over the floating-point inputs; 0 when none (token ids).
  double target_rms = 0;  // RMS of the targets for regression losses; 0 otherwise.
  double output_rms = 0;  // RMS of the output at initialisation (may be +inf).
  // Global gradient and parameter L2 norms at step 0; grad_norm < 0: unknown.
  double grad_norm = -1;
  double param_norm = 0;
  // Every submodule call of one forward at init, in call order; empty when
  // the format cannot see its submodules (calls_known false).
  std::vector<ModuleCall> calls;
  bool calls_known = false;
  // Per trainable parameter: its step-0 gradient norm (< 0: none) and its
  // own norm, so a gradient-led explosion can name where it is largest.
  struct ParamGradient {
    std::string name;
    double grad_norm = -1;
    double norm = 0;
  };
  std::vector<ParamGradient> param_gradients;
};

struct ActivationDecision {
  // The scale outputs are compared with: max(1, input_rms, target_rms).
  double scale = 1;
  double output_ratio = 0;          // output_rms / scale.
  double grad_to_param = 0;         // grad_norm / param_norm (0 when unknown).
  bool output_exploding = false;    // output_ratio > kExplodingOutputFactor.
  bool gradient_exploding = false;  // grad_to_param > kExplodingGradToParam.
  bool exploding = false;           // Either.
  // The first submodule (in call order) whose output RMS passed
  // kExplodingOutputFactor x scale; empty when unknown or none did.
  std::string module;
  int module_calls = 0;          // How often that module ran in the forward.
  int first_exploding_call = 0;  // Which of its calls (1-based) passed the bound.
  // Geometric mean growth of its output RMS per call, over its calls up to
  // the first exploding one (a recurrence: ~ the recurrent gain); 0 with one call.
  double growth_per_call = 0;
  // When the gradient explodes and no submodule output names the layer: the
  // parameter with the largest step-0 gradient norm, its share of the
  // global gradient norm, that norm over the parameter's own (0 for a zero
  // parameter), and as `module` the submodule owning it (its name up to the
  // last '.'; "" at top level), which the smaller-init experiment scales.
  std::string parameter;
  double parameter_grad_share = 0;
  double parameter_grad_ratio = 0;
  std::string summary;  // The numbers, in words.
};

// Decides from the evidence; pure.
ActivationDecision JudgeActivations(const ActivationEvidence& evidence);

// Output alone (before any gradient exists): kExplodingOutputFactor x the
// scale. CheckAtInit uses it to report the explosion instead of its symptom,
// a suspicious initial loss.
bool OutputExplodes(double output_rms, double input_rms, double target_rms);

}  // namespace preflight::engine
