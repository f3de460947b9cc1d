#include "service/engine/engine.h"

#include <sys/resource.h>

#include <cmath>
#include <cstdlib>
#include <cstring>

#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "service/engine/config.h"
#include "service/engine/curve.h"
#include "service/engine/report_util.h"
#include "service/engine/torch_internal.h"

#ifndef PREFLIGHT_ENGINE_VERSION
#define PREFLIGHT_ENGINE_VERSION "dev"
#endif

namespace preflight::engine {
namespace {

using internal::Batch;
using internal::RunOptions;
using internal::RunTrace;

// --- Thresholds. Each is relative to the model's own scale and was checked
// on every model of the zoo (tools/zoo); README "Thresholds" lists the
// observed healthy ranges next to these bounds.

// Cross-entropy-like losses start near ln C when logits are small. Allowed
// distance: the larger of 1 nat and half of ln C. Healthy zoo models start
// at 0.95..1.17 x ln C; a 50x-scaled output layer at 6.8 x ln C.
constexpr double kInitLossAbsTol = 1.0;
constexpr double kInitLossRelTol = 0.5;
// Regression: outputs at init this many times larger (RMS) than the targets
// (or than 1, for tiny targets) mean a mis-scaled output layer.
constexpr double kRegressionInitScale = 10.0;
// Outputs within this of each other count as identical (float32 noise).
constexpr double kSameOutputRelTol = 1e-6;
// A row-sum this close to 1 with all values in [0, 1] is a probability row.
constexpr double kProbabilitySumTol = 1e-3;
// DEAD_UNITS: at least this share of a layer's units, in a layer of at least
// kDeadMinUnits units. Healthy zoo layers show 0-6% dead units; the
// dead-bias fault 80%.
constexpr double kDeadFraction = 0.5;
constexpr int64_t kDeadMinUnits = 8;
// Gradient RMS of the first weight over the last weight at step 0. Healthy
// zoo models (MLP, CNN, ResNet-style, 2-layer LSTM, Transformer) measure
// 0.016..0.48; a 12-layer sigmoid stack measures 6e-11. The bounds sit two
// decades outside the healthy range on either side.
constexpr double kVanishingRatio = 1e-4;
constexpr double kExplodingRatio = 1e4;
// The global gradient norm growing this many times over its step-0 value
// within one run is an explosion. Healthy zoo runs peak at <= 2.4x (an
// oscillating or sign-flipped run at 8x and 36x); SGD past its stability
// limit reached 2.7e9x within five steps.
constexpr double kExplodingGrowth = 1e3;
// An experiment "improves" when its final |loss| is below this share of the
// better of the original run's final |loss| and its initial |loss|.
constexpr double kImprovedShare = 0.5;

// Collects LibTorch warnings into the report instead of the worker's
// stderr, where nobody reads them and anomaly mode dumps native stacks.
class CollectingWarningHandler : public c10::WarningHandler {
 public:
  void process(const c10::Warning& warning) override {
    if (warning.msg().find("should be enabled only for debugging") != std::string::npos) return;
    std::string m = TrimTorchMessage(warning.msg(), 300);
    if (m.empty() || messages_.size() >= kMaxWarnings) return;
    if (std::find(messages_.begin(), messages_.end(), m) == messages_.end()) {
      messages_.push_back(std::move(m));
    }
  }
  const std::vector<std::string>& messages() const { return messages_; }

 private:
  static constexpr size_t kMaxWarnings = 20;
  std::vector<std::string> messages_;
};

double Seconds(absl::Time start) { return absl::ToDoubleSeconds(absl::Now() - start); }

std::string Shape(c10::IntArrayRef s) { return absl::StrCat("[", absl::StrJoin(s, ", "), "]"); }

struct Pinned {
  torch::Device device = torch::kCPU;
  bool ok = true;
  std::string error;
};

// Fixes every source of run-to-run variation we control and records it.
// CUBLAS_WORKSPACE_CONFIG must be set before CUDA initialises, which is why
// this runs before anything touches a device.
Pinned PinDeterminism(const v1::CheckConfig& config, v1::Environment* env) {
  Pinned p;
  const char* cublas = std::getenv("CUBLAS_WORKSPACE_CONFIG");
  if (cublas == nullptr ||
      (std::strcmp(cublas, ":4096:8") != 0 && std::strcmp(cublas, ":16:8") != 0)) {
    setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8", 1);
  }
  env->set_cublas_workspace_config(std::getenv("CUBLAS_WORKSPACE_CONFIG"));
  at::set_num_threads(config.intra_op_threads());
  try {
    // Settable once per process, before any inter-op work.
    at::set_num_interop_threads(1);
  } catch (const std::exception&) {
  }
  auto& ctx = at::globalContext();
  // warn_only: an op without a deterministic kernel still runs, and the
  // bitwise replay below reports whether it actually diverged.
  ctx.setDeterministicAlgorithms(true, /*warn_only=*/true);
  ctx.setDeterministicFillUninitializedMemory(true);
  ctx.setDeterministicCuDNN(true);
  ctx.setBenchmarkCuDNN(false);
  // Run TorchScript op by op, as eager PyTorch would: the graph executor's
  // fused DifferentiableGraph nodes would hide which backward op produced a
  // NaN from anomaly mode, and its profiling runs make early steps differ
  // in cost and code path from later ones.
  torch::jit::setGraphExecutorOptimize(false);
  torch::manual_seed(config.seed());

  env->set_engine_version(EngineVersion());
  env->set_torch_version(TorchVersion());
  env->set_intra_op_threads(at::get_num_threads());
  env->set_inter_op_threads(at::get_num_interop_threads());
  env->set_deterministic_algorithms(ctx.deterministicAlgorithms());
  env->set_cudnn_deterministic(ctx.deterministicCuDNN());
  env->set_cudnn_benchmark(ctx.benchmarkCuDNN());
  env->set_seed(config.seed());

  const std::string& d = config.device();
  if (d == "cpu") {
    p.device = torch::kCPU;
  } else if (d == "auto") {
    p.device = torch::cuda::is_available() ? torch::Device(torch::kCUDA, 0) : torch::kCPU;
  } else {
    const int index = d == "cuda" ? 0 : std::atoi(d.c_str() + 5);
    const int count = static_cast<int>(torch::cuda::device_count());
    if (index >= count) {
      p.ok = false;
      p.error = absl::StrCat("device ", d, " requested but this node has ", count,
                             " CUDA device(s)");
    } else {
      p.device = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(index));
    }
  }
  if (p.ok && p.device.is_cuda()) torch::cuda::manual_seed_all(config.seed());
  env->set_device(p.device.str());
  return p;
}

struct Context {
  v1::CheckConfig config;
  torch::Device device = torch::kCPU;
  torch::jit::Module module;
  Batch batch;
  std::vector<torch::Tensor> pristine_inputs;  // Copies taken at load time.
  std::string loss;  // Resolved loss name.
  double target = 0; // Absolute |loss| target of the overfit run.
  v1::Report* report = nullptr;
};

RunOptions BaseOptions(const Context& c) {
  RunOptions o;
  o.loss = c.loss;
  o.optimizer = c.config.optimizer();
  o.lr = c.config.lr();
  o.weight_decay = c.config.weight_decay();
  o.momentum = c.config.momentum();
  o.train_mode = c.config.train_mode();
  o.max_steps = c.config.max_steps();
  o.target = c.target;
  o.seed = c.config.seed();
  return o;
}

// --- Checks at initialisation ------------------------------------------------

void CheckInitLoss(const Context& c, const torch::Tensor& out, double init_loss) {
  double expected = -1;
  std::string basis;
  if ((c.loss == "cross_entropy" || c.loss == "nll") && out.dim() >= 2 &&
      !c.batch.targets.is_floating_point()) {
    expected = std::log(static_cast<double>(out.size(1)));
    basis = absl::StrFormat("ln C = ln %d", out.size(1));
  } else if (c.loss == "bce_with_logits" || c.loss == "bce") {
    expected = std::log(2.0);
    basis = "ln 2 per element";
  }
  if (expected > 0) {
    const double tol = std::max(kInitLossAbsTol, kInitLossRelTol * expected);
    if (std::fabs(init_loss - expected) > tol) {
      auto* f = AddFinding(
          c.report, v1::INIT_LOSS_SUSPICIOUS, v1::Finding::WARN, "init",
          absl::StrFormat("loss at init is %.4g; an untrained model should give about %.4g (%s)",
                          init_loss, expected, basis));
      AddNumber(f, "init_loss", init_loss);
      AddNumber(f, "expected_loss", expected);
      AddNumber(f, "tolerance", tol);
    }
    return;
  }
  if ((c.loss == "mse" || c.loss == "l1" || c.loss == "smooth_l1") &&
      out.sizes() == c.batch.targets.sizes()) {
    const double out_rms = out.detach().to(torch::kFloat64).pow(2).mean().sqrt().item<double>();
    const double tgt_rms =
        c.batch.targets.to(torch::kFloat64).pow(2).mean().sqrt().item<double>();
    if (out_rms > kRegressionInitScale * std::max(tgt_rms, 1.0)) {
      auto* f = AddFinding(
          c.report, v1::INIT_LOSS_SUSPICIOUS, v1::Finding::WARN, "init",
          absl::StrFormat("outputs at init have RMS %.4g, %.0fx the targets' RMS %.4g: the "
                          "%s loss starts at %.4g instead of near the targets' scale",
                          out_rms, out_rms / std::max(tgt_rms, 1e-12), tgt_rms, c.loss,
                          init_loss));
      AddNumber(f, "init_loss", init_loss);
      AddNumber(f, "output_rms", out_rms);
      AddNumber(f, "target_rms", tgt_rms);
    }
  }
}

void CheckProbabilities(const Context& c, const torch::Tensor& out) {
  if (!out.is_floating_point() || out.numel() < 2) return;
  const double lo = out.min().item<double>();
  const double hi = out.max().item<double>();
  if (lo < 0 || hi > 1) return;
  if ((c.loss == "cross_entropy" || c.loss == "nll") && out.dim() >= 2 && out.size(1) > 1) {
    const double dev = (out.detach().to(torch::kFloat64).sum(1) - 1).abs().max().item<double>();
    if (dev < kProbabilitySumTol) {
      auto* f = AddFinding(
          c.report, v1::OUTPUTS_LOOK_LIKE_PROBABILITIES, v1::Finding::WARN, "init",
          absl::StrFormat("model outputs are in [0, 1] and sum to 1 over dim 1 (max deviation "
                          "%.2g): softmax is applied before %s, which expects %s",
                          dev, c.loss, c.loss == "nll" ? "log-probabilities" : "raw logits"));
      AddNumber(f, "max_row_sum_deviation", dev);
    }
  } else if (c.loss == "bce_with_logits" && out.numel() >= 8) {
    auto* f = AddFinding(
        c.report, v1::OUTPUTS_LOOK_LIKE_PROBABILITIES, v1::Finding::WARN, "init",
        absl::StrFormat("all %d model outputs lie in [%.3g, %.3g]: sigmoid is applied before "
                        "bce_with_logits, which applies it again",
                        out.numel(), lo, hi));
    AddNumber(f, "min_output", lo);
    AddNumber(f, "max_output", hi);
  }
}

void CheckOutputUsesInput(const Context& c) {
  torch::NoGradGuard no_grad;
  torch::jit::Module m = c.module.clone();
  // Eval mode: dropout would make two forwards differ for the wrong reason.
  m.eval();
  torch::manual_seed(c.config.seed());
  torch::Tensor out, out_zero;
  try {
    auto o = m.forward(c.batch.inputs);
    if (!o.isTensor()) return;
    out = o.toTensor();
    std::vector<torch::jit::IValue> zeros;
    for (const auto& in : c.batch.inputs) zeros.emplace_back(torch::zeros_like(in.toTensor()));
    auto oz = m.forward(zeros);
    if (!oz.isTensor()) return;
    out_zero = oz.toTensor();
  } catch (const std::exception&) {
    return;  // Eval-mode-only failures are not this check's business.
  }
  if (!out.is_floating_point() || out.sizes() != out_zero.sizes() || out.numel() == 0) return;
  const double scale = 1 + out.abs().max().item<double>();
  const double zero_diff = (out - out_zero).abs().max().item<double>();
  bool rows_identical = false;
  const auto& first = c.batch.inputs[0].toTensor();
  if (c.batch.batch_size > 1 && out.dim() >= 1) {
    const bool inputs_differ = !torch::equal(first, first[0].unsqueeze(0).expand_as(first));
    const double row_diff = (out - out[0].unsqueeze(0)).abs().max().item<double>();
    rows_identical = inputs_differ && row_diff <= kSameOutputRelTol * scale;
  }
  if (zero_diff <= kSameOutputRelTol * scale || rows_identical) {
    auto* f = AddFinding(
        c.report, v1::OUTPUT_IGNORES_INPUT, v1::Finding::FAIL, "init",
        rows_identical
            ? absl::StrFormat("all %d samples give the same output although their inputs "
                              "differ; the output does not depend on the input",
                              c.batch.batch_size)
            : absl::StrFormat("replacing the inputs with zeros changes the output by at most "
                              "%.3g: the output does not depend on the input",
                              zero_diff));
    AddNumber(f, "max_change_with_zero_input", zero_diff);
    AddText(f, "samples_identical", rows_identical ? "true" : "false");
  }
}

// --- Findings from the overfit run -------------------------------------------

void ReportRunFailure(Context& c, const RunTrace& t) {
  if (t.failure == v1::FINDING_CODE_UNSPECIFIED) return;
  const bool numeric = t.failure == v1::OUTPUT_NON_FINITE || t.failure == v1::LOSS_NON_FINITE ||
                       t.failure == v1::GRAD_NON_FINITE || t.failure == v1::PARAM_NON_FINITE;
  std::string message =
      numeric ? absl::StrCat("first non-finite value at step ", t.failure_step, ": ",
                             t.failure_message)
              : absl::StrCat("at step ", t.failure_step, ": ", t.failure_message);
  auto* f = AddFinding(c.report, t.failure, v1::Finding::FAIL, numeric ? "numerics" : "overfit",
                       message);
  AddNumber(f, "step", t.failure_step);
  if (!t.failure_tensor.empty()) AddText(f, "tensor", t.failure_tensor);
  if (!numeric) return;

  // Replay to the first bad step and run just that step under anomaly mode
  // to name the backward op where the NaN/Inf appeared.
  RunOptions replay = BaseOptions(c);
  replay.max_steps = t.failure_step + 1;
  replay.anomaly_step = t.failure_step;
  RunTrace r = internal::Train(c.module, c.batch, replay);
  if (!r.anomaly_message.empty()) {
    AddText(f, "anomaly_mode", r.anomaly_message);
    f->set_hint(absl::StrCat(f->hint(), " Anomaly mode: ", r.anomaly_message));
  } else {
    AddText(f, "anomaly_mode",
            "no backward op produced NaN/Inf: the value arose in the forward pass or the "
            "optimizer update");
  }
}

void ReportGradientFlow(Context& c, const RunTrace& t) {
  // Without one completed update there is no gradient history to judge.
  if (t.updates == 0) return;

  std::vector<std::string> no_grad;
  for (const auto& p : t.params) {
    if (!p.received_grad) no_grad.push_back(p.name);
  }
  if (!no_grad.empty()) {
    const bool all = no_grad.size() == t.params.size();
    auto* f = AddFinding(
        c.report, v1::PARAM_NO_GRAD, all ? v1::Finding::FAIL : v1::Finding::WARN,
        "gradient_flow",
        absl::StrFormat("%d of %d trainable parameters never received a non-zero gradient in "
                        "%d steps: %s",
                        no_grad.size(), t.params.size(), t.updates,
                        absl::StrJoin(no_grad.begin(),
                                      no_grad.begin() + std::min<size_t>(8, no_grad.size()),
                                      ", ") +
                            (no_grad.size() > 8 ? ", ..." : "")));
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
  const internal::ParamTrack* first = nullptr;
  const internal::ParamTrack* last = nullptr;
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
}

// --- Differential diagnosis ---------------------------------------------------

struct ExperimentSpec {
  const char* name;
  const char* hypothesis;
  const char* cause;   // Stated in the hint when confirmed.
  const char* action;  // What to change, when confirmed.
};

constexpr ExperimentSpec kNegated{"negated_loss", "the objective has the wrong sign",
                                  "the objective has the wrong sign: it is being maximised",
                                  "negate the loss (e.g. minimise -log p, not log p)"};
constexpr ExperimentSpec kLrDiv10{"lr_div_10", "the learning rate is too high",
                                  "the learning rate is too high", "lower the learning rate"};
constexpr ExperimentSpec kLrDiv100{"lr_div_100", "the learning rate is far too high",
                                   "the learning rate is far too high",
                                   "lower the learning rate"};
constexpr ExperimentSpec kLrMul10{"lr_mul_10", "the learning rate is too low",
                                  "the learning rate is too low", "raise the learning rate"};
constexpr ExperimentSpec kNoWd{"weight_decay_0", "weight decay over-regularises",
                               "weight decay over-regularises the model",
                               "lower or remove weight decay"};
constexpr ExperimentSpec kEval{"eval_mode", "train-mode randomness (dropout) blocks memorising",
                               "train-mode behaviour (dropout or batch statistics) keeps the "
                               "loss from reaching the target",
                               "reduce dropout, or check layers that behave differently in "
                               "training"};

void Diagnose(Context& c, const CurveAnalysis& a, const RunTrace& main_run,
              v1::Finding* curve_finding) {
  std::vector<const ExperimentSpec*> plan;
  const bool went_negative = a.final_value < 0 || a.best < 0;
  switch (a.curve_class) {
    case CurveClass::kRising:
      plan = {&kNegated, &kLrDiv10, &kLrDiv100};
      break;
    case CurveClass::kDiverged:
      if (went_negative || a.final_value < a.initial) plan.push_back(&kNegated);
      plan.push_back(&kLrDiv10);
      plan.push_back(&kLrDiv100);
      break;
    case CurveClass::kOscillating:
      plan = {&kLrDiv10, &kLrDiv100};
      if (c.config.train_mode()) plan.push_back(&kEval);
      break;
    case CurveClass::kNoisy:
      plan = {&kLrDiv10};
      if (c.config.train_mode()) plan.push_back(&kEval);
      break;
    case CurveClass::kPlateau:
      plan = {&kLrMul10};
      if (c.config.weight_decay() > 0) plan.push_back(&kNoWd);
      if (c.config.train_mode()) plan.push_back(&kEval);
      plan.push_back(&kLrDiv10);
      break;
    case CurveClass::kFlat: {
      bool any_grad = false;
      for (const auto& p : main_run.params) any_grad |= p.received_grad;
      if (any_grad) plan = {&kLrMul10};
      break;
    }
    case CurveClass::kConverged:
      return;
  }
  // A NaN/Inf before the first update does not depend on any training
  // setting: no experiment can change it.
  const bool broke_before_update = main_run.updates == 0;
  if (broke_before_update) plan.clear();

  const double orig_final =
      std::isfinite(a.final_value) && a.first_non_finite_step < 0 ? std::fabs(a.final_value)
                                                                   : INFINITY;
  const double bar = kImprovedShare * std::min(orig_final, std::fabs(a.initial));
  std::vector<std::string> confirmed, improved, tried;
  for (const ExperimentSpec* spec : plan) {
    RunOptions o = BaseOptions(c);
    std::string change;
    if (spec == &kNegated) {
      o.negate_loss = true;
      change = "train on -loss";
    } else if (spec == &kLrDiv10 || spec == &kLrDiv100 || spec == &kLrMul10) {
      o.lr = spec == &kLrDiv10 ? o.lr / 10 : spec == &kLrDiv100 ? o.lr / 100 : o.lr * 10;
      change = absl::StrFormat("lr %.3g", o.lr);
    } else if (spec == &kNoWd) {
      o.weight_decay = 0;
      change = "weight_decay 0";
    } else {
      o.train_mode = false;
      change = "eval mode";
    }
    // The experiment's target: the same relative reduction of its own loss.
    RunTrace r = internal::Train(c.module, c.batch, o);
    const double exp_target =
        c.config.target_loss() > 0
            ? c.config.target_loss()
            : c.config.target_ratio() * std::fabs(r.losses.empty() ? 0 : r.losses[0]);
    CurveAnalysis ea =
        ClassifyCurve(r.losses, exp_target, r.failure != v1::FINDING_CODE_UNSPECIFIED);
    v1::Experiment* e = c.report->add_experiments();
    e->set_name(spec->name);
    e->set_hypothesis(spec->hypothesis);
    e->set_steps_run(static_cast<int>(r.losses.size()));
    e->set_initial_loss(r.losses.empty() ? NAN : r.losses.front());
    e->set_final_loss(r.losses.empty() ? NAN : r.losses.back());
    e->set_curve(CurveCode(ea.curve_class));
    const std::string outcome_text = absl::StrFormat(
        "%s (%s): %s", spec->name, change, ea.summary);
    tried.push_back(spec->name);
    if (ea.curve_class == CurveClass::kConverged) {
      e->set_outcome(v1::Experiment::CONFIRMED);
      confirmed.push_back(absl::StrFormat("%s (%s) makes the loss converge, %.4g -> %.4g in %d "
                                          "steps: %s; %s",
                                          spec->name, change, ea.initial, r.losses.back(),
                                          static_cast<int>(r.losses.size()), spec->cause,
                                          spec->action));
    } else if (ea.curve_class != a.curve_class && ea.first_non_finite_step < 0 &&
               std::fabs(ea.final_value) < bar) {
      e->set_outcome(v1::Experiment::IMPROVED);
      improved.push_back(outcome_text);
    } else {
      e->set_outcome(v1::Experiment::NO_EFFECT);
    }
    AddText(curve_finding, absl::StrCat("experiment_", spec->name),
            absl::StrCat(v1::Experiment::Outcome_Name(e->outcome()), ": ", outcome_text));
  }

  std::string hint;
  if (!confirmed.empty()) {
    hint = absl::StrCat("Verified: ", absl::StrJoin(confirmed, ". Also verified: "), ".");
  } else if (!improved.empty()) {
    hint = absl::StrCat("Not confirmed, partly explained: ", absl::StrJoin(improved, "; "),
                        " — better, but the target was not reached. ", curve_finding->hint());
  } else if (!tried.empty()) {
    hint = absl::StrCat("Inconclusive: none of ", absl::StrJoin(tried, ", "),
                        " made the loss converge. Check that the loss gets the right inputs, "
                        "that labels match inputs, and the data pipeline.");
  } else if (broke_before_update) {
    hint = "Not a training-setting problem: the first step already produced a non-finite "
           "value, before any update. Fix the operation named in the numerics finding.";
  } else {
    hint = absl::StrCat("Inconclusive: no gradient reaches the parameters, so no training "
                        "change can help. ", curve_finding->hint());
  }
  curve_finding->set_hint(hint);
}

// --- Determinism ---------------------------------------------------------------

void CheckDeterminism(Context& c, const RunTrace& main_run) {
  if (main_run.snapshot_updates <= 0) return;
  RunOptions o = BaseOptions(c);
  o.max_steps = main_run.snapshot_updates;
  o.snapshot_after_updates = main_run.snapshot_updates;
  RunTrace r = internal::Train(c.module, c.batch, o);

  const size_t n = std::min(r.losses.size(), main_run.losses.size());
  int bad_step = -1;
  for (size_t i = 0; i < n; ++i) {
    if (std::memcmp(&r.losses[i], &main_run.losses[i], sizeof(double)) != 0) {
      bad_step = static_cast<int>(i);
      break;
    }
  }
  std::string bad_param;
  if (bad_step < 0) {
    const auto names = internal::TrainableParams(c.module);
    for (size_t i = 0; i < main_run.snapshot.size() && i < r.snapshot.size(); ++i) {
      const auto& a = main_run.snapshot[i];
      const auto& b = r.snapshot[i];
      const bool same = a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type() &&
                        std::memcmp(a.contiguous().cpu().data_ptr(),
                                    b.contiguous().cpu().data_ptr(), a.nbytes()) == 0;
      if (!same) {
        bad_param = i < names.size() ? names[i].name : absl::StrCat("#", i);
        break;
      }
    }
  }
  if (bad_step < 0 && bad_param.empty()) return;
  // The usual cause on CPU: forward() changes its input in place, so every
  // run starts from a different batch.
  std::vector<std::string> mutated;
  for (size_t i = 0; i < c.batch.inputs.size() && i < c.pristine_inputs.size(); ++i) {
    const auto& now = c.batch.inputs[i].toTensor();
    if (!torch::equal(now, c.pristine_inputs[i])) mutated.push_back(c.batch.input_names[i]);
  }
  std::string msg =
      bad_step >= 0
          ? absl::StrFormat("replaying %d steps with seed %d gave a different loss at step %d "
                            "(%.17g vs %.17g)",
                            o.max_steps, c.config.seed(), bad_step, main_run.losses[bad_step],
                            r.losses[bad_step])
          : absl::StrFormat("replaying %d steps with seed %d gave identical losses but "
                            "parameter %s differs bitwise",
                            o.max_steps, c.config.seed(), bad_param);
  if (!mutated.empty()) {
    msg += absl::StrCat("; forward() modified ", absl::StrJoin(mutated, ", "),
                        " in place, so each run saw a different batch");
  }
  auto* f = AddFinding(c.report, v1::NONDETERMINISTIC, v1::Finding::WARN, "determinism", msg);
  if (!mutated.empty()) AddText(f, "inputs_modified_in_place", absl::StrJoin(mutated, ", "));
  AddNumber(f, "replayed_steps", o.max_steps);
  if (bad_step >= 0) AddNumber(f, "first_differing_step", bad_step);
  if (!bad_param.empty()) AddText(f, "first_differing_parameter", bad_param);
}

void Finish(v1::Report* report, absl::Time start) {
  auto* handler = dynamic_cast<CollectingWarningHandler*>(c10::WarningUtils::get_warning_handler());
  if (handler != nullptr) {
    for (const auto& m : handler->messages()) report->add_warnings(m);
  }
  report->set_verdict(ComputeVerdict(*report));
  report->mutable_timing()->set_total_seconds(Seconds(start));
  rusage usage{};
  if (getrusage(RUSAGE_SELF, &usage) == 0) {
    report->mutable_timing()->set_peak_rss_bytes(static_cast<double>(usage.ru_maxrss) * 1024);
  }
}

}  // namespace

std::string TorchVersion() { return TORCH_VERSION; }
std::string EngineVersion() { return PREFLIGHT_ENGINE_VERSION; }

v1::Report RunCheck(const v1::CheckConfig& config, const CheckInput& input) {
  const absl::Time start = absl::Now();
  CollectingWarningHandler warnings;
  c10::WarningUtils::WarningHandlerGuard warnings_guard(&warnings);
  v1::Report report;
  *report.mutable_config() = config;
  Context c;
  c.config = config;
  c.report = &report;

  Pinned pinned = PinDeterminism(config, report.mutable_environment());
  if (!pinned.ok) {
    AddFinding(&report, v1::DEVICE_UNAVAILABLE, v1::Finding::ERROR, "environment",
               pinned.error);
    Finish(&report, start);
    return report;
  }
  c.device = pinned.device;

  // Load.
  absl::Time phase = absl::Now();
  auto module = internal::LoadModel(input.model_bytes, c.device);
  if (!module.ok()) {
    AddFinding(&report, v1::ARTIFACT_INVALID, v1::Finding::ERROR, "input",
               absl::StrCat("model: ", module.status().message()));
    Finish(&report, start);
    return report;
  }
  c.module = *std::move(module);
  auto batch = internal::LoadBatch(input.batch_bytes, c.device);
  if (!batch.ok()) {
    AddFinding(&report, v1::DATA_INVALID, v1::Finding::ERROR, "input",
               absl::StrCat("batch: ", batch.status().message()));
    Finish(&report, start);
    return report;
  }
  c.batch = *std::move(batch);
  for (const auto& in : c.batch.inputs) c.pristine_inputs.push_back(in.toTensor().clone());
  report.mutable_timing()->set_load_seconds(Seconds(phase));

  // Static and input checks.
  phase = absl::Now();
  const bool has_loss_method = c.module.find_method("loss").has_value();
  c.loss = has_loss_method ? kModelLoss : config.loss().empty() ? kDefaultLoss : config.loss();
  report.mutable_config()->set_loss(c.loss);
  v1::ModelSummary* summary = report.mutable_model();
  summary->set_has_loss_method(has_loss_method);
  summary->set_batch_size(c.batch.batch_size);
  for (int64_t s : c.batch.targets.sizes()) summary->add_target_shape(s);

  bool bad_data = false;
  for (size_t i = 0; i <= c.batch.inputs.size(); ++i) {
    const bool is_target = i == c.batch.inputs.size();
    const torch::Tensor& t = is_target ? c.batch.targets : c.batch.inputs[i].toTensor();
    const std::string name = is_target ? "targets" : c.batch.input_names[i];
    const int64_t bad = internal::CountNonFinite(t);
    if (bad > 0) {
      auto* f = AddFinding(&report, v1::DATA_NON_FINITE, v1::Finding::FAIL, "input",
                           absl::StrFormat("%s has %d NaN/Inf values out of %d", name, bad,
                                           t.numel()));
      AddText(f, "tensor", name);
      AddNumber(f, "non_finite", static_cast<double>(bad));
      bad_data = true;
    }
  }

  int64_t total = 0, trainable = 0, tensors = 0;
  std::vector<std::string> frozen;
  for (const auto& p : c.module.named_parameters(true)) {
    total += p.value.numel();
    ++tensors;
    if (p.value.requires_grad()) {
      trainable += p.value.numel();
    } else {
      frozen.push_back(p.name);
    }
  }
  summary->set_parameters(total);
  summary->set_trainable_parameters(trainable);
  summary->set_parameter_tensors(static_cast<int>(tensors));
  if (trainable == 0) {
    AddFinding(&report, v1::NO_TRAINABLE_PARAMS, v1::Finding::FAIL, "input",
               absl::StrFormat("none of the model's %d parameter tensors (%d values) requires "
                               "grad: there is nothing to train",
                               tensors, total));
    Finish(&report, start);
    return report;
  }
  if (!frozen.empty()) {
    auto* f = AddFinding(&report, v1::PARAM_FROZEN, v1::Finding::INFO, "input",
                         absl::StrFormat("%d of %d parameter tensors are frozen: %s%s",
                                         frozen.size(), tensors,
                                         absl::StrJoin(frozen.begin(),
                                                       frozen.begin() +
                                                           std::min<size_t>(8, frozen.size()),
                                                       ", "),
                                         frozen.size() > 8 ? ", ..." : ""));
    AddNumber(f, "frozen_tensors", static_cast<double>(frozen.size()));
  }
  if (bad_data) {
    Finish(&report, start);
    return report;
  }

  // Forward and loss at initialisation, in the configured mode.
  torch::Tensor out;
  double init_loss = 0;
  {
    torch::NoGradGuard no_grad;
    torch::manual_seed(config.seed());
    torch::jit::Module m = c.module.clone();
    m.train(config.train_mode());
    torch::jit::IValue output;
    try {
      output = m.forward(c.batch.inputs);
    } catch (const std::exception& e) {
      AddFinding(&report, v1::FORWARD_ERROR, v1::Finding::FAIL, "init",
                 absl::StrCat("forward() failed on the batch (",
                              absl::StrJoin(c.batch.input_names, ", "),
                              "): ", TrimTorchMessage(e.what())));
      Finish(&report, start);
      return report;
    }
    if (output.isTensor()) {
      out = output.toTensor();
      for (int64_t s : out.sizes()) summary->add_output_shape(s);
      if (c.loss != kModelLoss) {
        bool invalid = false;
        for (const auto& p : internal::CheckLossInputs(c.loss, out, c.batch.targets)) {
          const bool is_invalid = p.code == v1::DATA_INVALID;
          invalid |= is_invalid;
          AddFinding(&report, p.code, is_invalid ? v1::Finding::ERROR : v1::Finding::FAIL,
                     is_invalid ? "input" : "init", p.message);
        }
        if (invalid) {
          Finish(&report, start);
          return report;
        }
      }
    }
    auto loss = internal::ComputeLoss(m, c.loss, output, c.batch.targets);
    if (!loss.ok()) {
      AddFinding(&report, v1::LOSS_ERROR, v1::Finding::FAIL, "init",
                 absl::StrCat(c.loss, ": ", loss.status().message()));
      Finish(&report, start);
      return report;
    }
    init_loss = loss->item<double>();
  }
  if (out.defined() && std::isfinite(init_loss) && internal::CountNonFinite(out) == 0) {
    CheckInitLoss(c, out, init_loss);
    if (c.loss != kModelLoss) CheckProbabilities(c, out);
  }
  CheckOutputUsesInput(c);
  report.mutable_timing()->set_init_checks_seconds(Seconds(phase));

  // The overfit run.
  phase = absl::Now();
  c.target = config.target_loss() > 0 ? config.target_loss()
                                      : config.target_ratio() * std::fabs(init_loss);
  RunOptions main_options = BaseOptions(c);
  main_options.collect_stats = true;
  main_options.snapshot_after_updates = config.determinism_steps() > 0
                                            ? config.determinism_steps()
                                            : -1;
  RunTrace run = internal::Train(c.module, c.batch, main_options);
  report.mutable_timing()->set_overfit_seconds(Seconds(phase));
  for (double l : run.losses) report.add_loss_curve(l);
  report.set_steps_run(static_cast<int>(run.losses.size()));
  report.set_converged(run.converged);
  for (const auto& p : run.params) {
    v1::ParameterStats* s = report.add_parameters();
    s->set_name(p.name);
    for (int64_t d : p.shape) s->add_shape(d);
    s->set_trainable(true);
    s->set_grad_norm_first(p.grad_norm_first);
    s->set_grad_norm_last(p.grad_norm_last);
    s->set_max_update_ratio(p.max_update_ratio);
    s->set_received_grad(p.received_grad);
  }

  ReportRunFailure(c, run);
  ReportGradientFlow(c, run);

  const bool errored = run.failure == v1::FORWARD_ERROR || run.failure == v1::LOSS_ERROR ||
                       run.failure == v1::BACKWARD_ERROR;
  if (!errored && !run.losses.empty()) {
    CurveAnalysis a = ClassifyCurve(run.losses, c.target,
                                    run.failure != v1::FINDING_CODE_UNSPECIFIED);
    if (a.curve_class == CurveClass::kConverged) {
      auto* f = AddFinding(&report, v1::OVERFIT_CONVERGED, v1::Finding::INFO, "overfit",
                           a.summary);
      AddNumber(f, "initial_loss", a.initial);
      AddNumber(f, "final_loss", run.losses.back());
      AddNumber(f, "steps", static_cast<double>(run.losses.size()));
    } else {
      // A curve still falling steeply when the budget ran out shows the model
      // can fit the batch; it warns (with the verified cause) instead of
      // blocking the job.
      const auto severity = a.curve_class == CurveClass::kPlateau && a.still_falling
                                ? v1::Finding::WARN
                                : v1::Finding::FAIL;
      auto* f = AddFinding(&report, CurveCode(a.curve_class), severity, "overfit",
                           absl::StrCat("did not fit one batch in ", run.losses.size(),
                                        " steps: ", a.summary));
      AddNumber(f, "initial_loss", a.initial);
      AddNumber(f, "final_loss", a.final_value);
      AddNumber(f, "target_loss", c.target);
      AddNumber(f, "steps", static_cast<double>(run.losses.size()));
      if (config.diagnose()) {
        phase = absl::Now();
        Diagnose(c, a, run, f);
        report.mutable_timing()->set_diagnosis_seconds(Seconds(phase));
      }
    }
  }

  if (config.determinism_steps() > 0) {
    phase = absl::Now();
    CheckDeterminism(c, run);
    report.mutable_timing()->set_determinism_seconds(Seconds(phase));
  }
  Finish(&report, start);
  return report;
}

}  // namespace preflight::engine
