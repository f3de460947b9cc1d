#include "service/engine/report_util.h"

#include <algorithm>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "service/engine/utf8.h"

namespace preflight::engine {

v1::Finding* AddFinding(v1::Report* report, v1::FindingCode code, v1::Finding::Severity severity,
                        absl::string_view check, absl::string_view message) {
  v1::Finding* f = report->add_findings();
  f->set_code(code);
  f->set_severity(severity);
  f->set_check(ValidUtf8(check));
  f->set_message(ValidUtf8(message));
  f->set_hint(CanonicalHint(code));
  return f;
}

void AddNumber(v1::Finding* finding, absl::string_view name, double value) {
  v1::Evidence* e = finding->add_evidence();
  e->set_name(std::string(name));
  e->set_number(value);
}

void AddText(v1::Finding* finding, absl::string_view name, absl::string_view value) {
  v1::Evidence* e = finding->add_evidence();
  e->set_name(ValidUtf8(name));
  e->set_text(ValidUtf8(value));
}

v1::Verdict ComputeVerdict(const v1::Report& report) {
  int worst = v1::Finding::INFO;
  for (const auto& f : report.findings()) worst = std::max<int>(worst, f.severity());
  switch (worst) {
    case v1::Finding::ERROR: return v1::ERROR;
    case v1::Finding::FAIL: return v1::FAIL;
    case v1::Finding::WARN: return v1::WARN;
    default: return v1::PASS;
  }
}

bool HasFinding(const v1::Report& report, v1::FindingCode code) {
  for (const auto& f : report.findings()) {
    if (f.code() == code) return true;
  }
  return false;
}

std::string CanonicalHint(v1::FindingCode code) {
  switch (code) {
    case v1::ARTIFACT_INVALID:
      return "Save the model with torch.export.save(torch.export.export(model, (x,)), path) "
             "(or torch.jit.script/trace + torch.jit.save), and send that file.";
    case v1::ARTIFACT_UNSUPPORTED:
      return "The program uses an operator or construct the engine refuses to run (named in the "
             "message): custom-op namespaces, file or process-state operators, and higher-order "
             "ops other than set_grad_enabled regions. Export the model without it.";
    case v1::NO_TRAINABLE_PARAMS:
      return "Every parameter has requires_grad=False; unfreeze the layers you mean to train.";
    case v1::PARAM_FROZEN:
      return "Some parameters are frozen. Fine for fine-tuning; otherwise set requires_grad=True.";
    case v1::DATA_NON_FINITE:
      return "The batch itself holds NaN/Inf: fix the data pipeline (missing values, division by "
             "zero in normalisation) before training.";
    case v1::DATA_INVALID:
      return "The batch does not fit the model or the loss; see the message for the tensor and "
             "the expected form.";
    case v1::FORWARD_ERROR:
      return "forward() raised on the sample batch: check input shapes and dtypes against the "
             "model.";
    case v1::LOSS_ERROR:
      return "The loss could not be computed from the model output and targets: check the loss "
             "choice and target dtype/shape.";
    case v1::BACKWARD_ERROR:
      return "backward() raised: look for in-place ops on tensors needed for gradients, or "
             "outputs detached from the graph.";
    case v1::INIT_LOSS_SUSPICIOUS:
      return "Check the output layer's initialisation and scale, and that the loss matches the "
             "task (the expected value is in the evidence).";
    case v1::OUTPUTS_LOOK_LIKE_PROBABILITIES:
      return "Remove the final softmax/sigmoid: this loss applies it itself (or use nll/bce "
             "with log-probabilities/probabilities).";
    case v1::LOSS_SHAPE_BROADCAST:
      return "Output and target shapes differ and are broadcast, so every output is compared "
             "with every target. Reshape/squeeze so the shapes match exactly.";
    case v1::OUTPUT_IGNORES_INPUT:
      return "The output does not change with the input: look for a detached/overwritten input, "
             "a layer that is skipped, or a constant returned from forward().";
    case v1::DEVICE_ASSERT:
      return "A CUDA kernel rejected its input (typically an index out of range: a class label "
             ">= the number of classes, a token id >= the embedding size). The CPU replay in the "
             "evidence names the op; fix the data or the layer size.";
    case v1::OUTPUT_NON_FINITE:
      return "The forward pass produced NaN/Inf: look for log/sqrt/div of values that can be "
             "zero or negative, and exp of large values.";
    case v1::LOSS_NON_FINITE:
      return "The loss became NaN/Inf: use fused, numerically stable losses (cross_entropy, "
             "bce_with_logits) instead of log(softmax(x)) or log(sigmoid(x)).";
    case v1::GRAD_NON_FINITE:
      return "A gradient became NaN/Inf: the backward op named in the evidence is where it "
             "started. Clip gradients or fix that op's input domain.";
    case v1::PARAM_NON_FINITE:
      return "A parameter became NaN/Inf after an update: lower the learning rate or clip "
             "gradients.";
    case v1::OUTPUT_SATURATED:
      return "A bounded output (clamp, ReLU, sigmoid or tanh after the last layer) cannot "
             "reach targets outside its range: remove it, or scale the targets into it.";
    case v1::OUTPUT_LOW_RANK:
      return "A layer narrower than the targets need (a bottleneck without a non-linearity "
             "after it) limits the rank of the output: widen it to at least the number of "
             "classes (or target dimensions).";
    case v1::TARGET_LOSS_MISMATCH:
      return "Class ids are labels, not values: use cross_entropy on one logit per class (or, "
             "if they are values, drop the bounded activation after the last layer or scale "
             "the targets into its range).";
    case v1::MODEL_LINEAR:
      return "Add a non-linearity (ReLU, GELU, tanh) between the linear layers: stacked "
             "linear layers are one linear map, and this batch needs more than that.";
    case v1::MIXED_PRECISION_OVERFLOW:
      return "Values overflow in reduced precision but not in fp32: use a gradient scaler for "
             "fp16, keep the overflowing op in fp32, or train in bf16.";
    case v1::PARAM_NO_GRAD:
      return "These parameters never receive a gradient: they are not connected to the loss "
             "(unused layer, detach(), or a branch that is never taken).";
    case v1::DEAD_UNITS:
      return "Many units are inactive for the whole batch (ReLU stuck at zero): check bias "
             "initialisation and input scale, lower the learning rate, or use LeakyReLU/GELU.";
    case v1::VANISHING_GRADIENT:
      return "Early layers get gradients orders of magnitude smaller than late ones: add "
             "residual connections or normalisation, or use non-saturating activations.";
    case v1::EXPLODING_GRADIENT:
      return "Gradients grow orders of magnitude towards the input: fix the initialisation "
             "scale, add normalisation, or clip gradients.";
    case v1::EXPLODING_ACTIVATIONS:
      return "Activations grow by orders of magnitude through the layers or a recurrence: "
             "initialise the named layer smaller (a recurrent gain below 1), add normalisation, "
             "or clip.";
    case v1::OVERFIT_CONVERGED:
      return "The model, loss and optimizer can fit one batch: the training loop is sound.";
    case v1::LOSS_RISING: return "A rising loss usually means the objective has the wrong sign.";
    case v1::LOSS_DIVERGED:
      return "Diverging loss means numerical instability or too high a learning rate.";
    case v1::LOSS_OSCILLATING: return "Oscillation usually means the learning rate is too high.";
    case v1::LOSS_PLATEAU:
      return "A plateau usually means over-regularisation or too low a learning rate.";
    case v1::LOSS_FLAT: return "A loss flat from step 1 means no gradient reaches the parameters.";
    case v1::LOSS_NOISY:
      return "Noise on one fixed batch comes from randomness in the model (dropout) or a "
             "learning rate near the stability limit.";
    case v1::CONVERGED_TO_FLOOR:
      return "The loss has a minimum above zero (label smoothing, a KL or entropy term) and "
             "the model reached it with the batch memorised: the training loop is sound.";
    case v1::UNSTABLE_CONVERGENCE:
      return "The loss blew up before reaching the target: lower the learning rate (or add "
             "warm-up / gradient clipping) so that it converges without the spike.";
    case v1::NONDETERMINISTIC:
      return "The same seed did not reproduce the run bit for bit: look for randomness that "
             "does not come from torch's seeded generator, or non-deterministic kernels.";
    case v1::WORKER_TIMEOUT:
      return "The check did not finish in time: the model may loop forever, or the batch/steps "
             "are too large for the timeout.";
    case v1::WORKER_CRASHED:
      return "The worker process died (see the signal): the model triggers a crash in native "
             "code.";
    case v1::WORKER_OOM:
      return "The check ran out of its memory limit: use a smaller sample batch or model.";
    case v1::SANDBOX_VIOLATION:
      return "The model tried something the sandbox forbids (network, exec, files outside its "
             "input).";
    case v1::DEVICE_UNAVAILABLE:
      return "Run on a node with the requested GPU, or pass --device cpu/auto.";
    case v1::CONFIG_INVALID:
      return "Fix the named configuration field (preflight check --help lists the ranges).";
    case v1::INTERNAL_ERROR: return "Preflight itself failed; please report this with the message.";
    default: return "";
  }
}

namespace {

bool LooksLikeErrorLine(absl::string_view line) {
  // "RuntimeError: ...", "c10::Error: ...", "std::bad_alloc", ...
  const size_t colon = line.find(':');
  const absl::string_view head = line.substr(0, colon);
  return !head.empty() && head.find(' ') == absl::string_view::npos &&
         (absl::StrContains(head, "Error") || absl::StrContains(head, "Exception") ||
          absl::StrContains(head, "bad_alloc"));
}

}  // namespace

// The result is valid UTF-8, cut between characters: a message cut inside one
// made its whole report undecodable.
std::string TrimTorchMessage(absl::string_view what, size_t max_chars) {
  const std::string valid = ValidUtf8(what);
  std::vector<std::string> kept;
  for (absl::string_view line : absl::StrSplit(valid, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (line.empty()) continue;
    // LibTorch appends a native backtrace ("Exception raised from ...",
    // "frame #N: ...") that says nothing about the model.
    if (absl::StartsWith(line, "Exception raised from") || absl::StartsWith(line, "frame #")) {
      break;
    }
    kept.emplace_back(line);
  }
  std::string out;
  // TorchScript interpreter errors put two code tracebacks before the one
  // line that matters: lead with that line, then where in the model.
  const bool traceback = std::any_of(kept.begin(), kept.end(), [](const std::string& l) {
    return absl::StartsWith(l, "Traceback of TorchScript");
  });
  if (traceback) {
    std::string error, location, code;
    bool in_original = false;
    for (size_t i = 0; i < kept.size(); ++i) {
      const std::string& l = kept[i];
      if (absl::StartsWith(l, "Traceback of TorchScript, original code")) in_original = true;
      if (absl::StartsWith(l, "File \"") && (in_original || location.empty())) {
        location = l;
        code = i + 1 < kept.size() ? kept[i + 1] : "";
      }
      if (LooksLikeErrorLine(l)) error = l;
    }
    if (error.empty()) error = kept.back();
    out = error;
    if (!location.empty()) absl::StrAppend(&out, " [", location, ": ", code, "]");
  } else {
    out = absl::StrJoin(kept, " | ");
  }
  return TruncateUtf8(out, max_chars);
}

std::string JoinFirst(const std::vector<std::string>& names, size_t max_shown) {
  const size_t n = std::min(max_shown, names.size());
  return absl::StrCat(absl::StrJoin(names.begin(), names.begin() + n, ", "),
                      names.size() > n ? ", ..." : "");
}

}  // namespace preflight::engine
