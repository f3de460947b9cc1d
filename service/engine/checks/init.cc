// Checks at initialisation: one forward and loss in the configured mode,
// before any update.
#include <cmath>

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "service/engine/checks/check.h"
#include "service/engine/config.h"
#include "service/engine/loss_fn.h"
#include "service/engine/losses.h"
#include "service/engine/report_util.h"
#include "service/engine/tensor_util.h"
#include "service/engine/thresholds.h"

namespace preflight::engine::internal {
namespace {

double Rms(const torch::Tensor& t) {
  return t.detach().to(torch::kFloat64).pow(2).mean().sqrt().item<double>();
}

// RMS over every floating-point input tensor together; 0 when there is none
// (token ids carry no scale).
double InputRms(const Batch& batch) {
  double sum_sq = 0;
  int64_t n = 0;
  for (const auto& in : batch.inputs) {
    const torch::Tensor t = in.toTensor();
    if (!t.is_floating_point() || t.numel() == 0) continue;
    sum_sq += t.detach().to(torch::kFloat64).pow(2).sum().item<double>();
    n += t.numel();
  }
  return n > 0 ? std::sqrt(sum_sq / static_cast<double>(n)) : 0;
}

// Sets the chance-level loss and, unless `report` is false (an exploding
// forward explains the start), reports an initial loss far from it.
void CheckInitLoss(CheckContext& c, const LossInfo& info, const torch::Tensor& out, bool report) {
  const torch::Tensor& targets = c.batch.targets;
  double expected = -1;
  std::string basis;
  // Uniform logits give ln C for class indices and for any probability row
  // summing to 1 (validated in CheckLossInputs): -sum p_i ln(1/C) = ln C.
  if (info.family == LossFamily::kClassification && out.dim() >= 2) {
    expected = std::log(static_cast<double>(out.size(1)));
    basis = absl::StrFormat("ln C = ln %d", out.size(1));
  } else if (info.family == LossFamily::kBinary) {
    expected = std::log(2.0);
    basis = "ln 2 per element";
  }
  if (expected > 0) {
    c.chance_loss = expected;
    if (!report) return;
    const double tol = std::max(kInitLossAbsTol, kInitLossRelTol * expected);
    if (std::fabs(c.init_loss - expected) > tol) {
      auto* f = AddFinding(
          c.report, v1::INIT_LOSS_SUSPICIOUS, v1::Finding::WARN, "init",
          absl::StrFormat("loss at init is %.4g; an untrained model should give about %.4g (%s)",
                          c.init_loss, expected, basis));
      AddNumber(f, "init_loss", c.init_loss);
      AddNumber(f, "expected_loss", expected);
      AddNumber(f, "tolerance", tol);
    }
    return;
  }
  if (report && info.family == LossFamily::kRegression && out.sizes() == targets.sizes()) {
    const double out_rms = Rms(out);
    const double tgt_rms = Rms(targets);
    if (out_rms > kRegressionInitScale * std::max(tgt_rms, 1.0)) {
      auto* f = AddFinding(
          c.report, v1::INIT_LOSS_SUSPICIOUS, v1::Finding::WARN, "init",
          absl::StrFormat("outputs at init have RMS %.4g, %.0fx the targets' RMS %.4g: the "
                          "%s loss starts at %.4g instead of near the targets' scale",
                          out_rms, out_rms / std::max(tgt_rms, 1e-12), tgt_rms, c.loss,
                          c.init_loss));
      AddNumber(f, "init_loss", c.init_loss);
      AddNumber(f, "output_rms", out_rms);
      AddNumber(f, "target_rms", tgt_rms);
    }
  }
}

void CheckProbabilities(const CheckContext& c, const LossInfo& info, const torch::Tensor& out) {
  if (!out.is_floating_point() || out.numel() < 2) return;
  const double lo = out.min().item<double>();
  const double hi = out.max().item<double>();
  if (lo < 0 || hi > 1) return;
  if (info.family == LossFamily::kClassification && out.dim() >= 2 && out.size(1) > 1) {
    const double dev = (out.detach().to(torch::kFloat64).sum(1) - 1).abs().max().item<double>();
    if (dev < kProbabilitySumTol) {
      auto* f = AddFinding(
          c.report, v1::OUTPUTS_LOOK_LIKE_PROBABILITIES, v1::Finding::WARN, "init",
          absl::StrFormat("model outputs are in [0, 1] and sum to 1 over dim 1 (max deviation "
                          "%.2g): softmax is applied before %s, which expects %s",
                          dev, c.loss, info.expects_output));
      AddNumber(f, "max_row_sum_deviation", dev);
    }
  } else if (info.family == LossFamily::kBinary && info.takes_logits &&
             out.numel() >= kMinOutputsForSigmoidTest) {
    auto* f = AddFinding(
        c.report, v1::OUTPUTS_LOOK_LIKE_PROBABILITIES, v1::Finding::WARN, "init",
        absl::StrFormat("all %d model outputs lie in [%.3g, %.3g]: sigmoid is applied before "
                        "%s, which applies it again",
                        out.numel(), lo, hi, c.loss));
    AddNumber(f, "min_output", lo);
    AddNumber(f, "max_output", hi);
  }
}

void CheckOutputUsesInput(const CheckContext& c) {
  torch::NoGradGuard no_grad;
  std::unique_ptr<Model> m = c.model->Clone();
  // Eval mode: dropout would make two forwards differ for the wrong reason.
  m->SetTraining(false);
  torch::manual_seed(c.config.seed());
  auto o = m->Forward(c.batch.inputs);
  // Eval-mode-only failures are not this check's business.
  if (!o.ok() || !o->isTensor()) return;
  const torch::Tensor out = o->toTensor();
  std::vector<torch::jit::IValue> zeros;
  for (const auto& in : c.batch.inputs) zeros.emplace_back(torch::zeros_like(in.toTensor()));
  auto oz = m->Forward(zeros);
  if (!oz.ok() || !oz->isTensor()) return;
  const torch::Tensor out_zero = oz->toTensor();
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

}  // namespace

Next CheckAtInit(CheckContext& c) {
  v1::Report& report = *c.report;
  const LossInfo* info = FindLoss(c.loss);  // nullptr for the model's own loss.
  torch::Tensor out;
  {
    torch::NoGradGuard no_grad;
    torch::manual_seed(c.config.seed());
    std::unique_ptr<Model> m = c.model->Clone();
    m->SetTraining(c.config.train_mode());
    auto output = m->Forward(c.batch.inputs);
    if (!output.ok()) {
      AddFinding(
          &report, v1::FORWARD_ERROR, v1::Finding::FAIL, "init",
          absl::StrCat("forward() failed on the batch (", absl::StrJoin(c.batch.input_names, ", "),
                       "): ", output.status().message()));
      return Next::kStop;
    }
    if (output->isTensor()) {
      out = output->toTensor();
      for (int64_t s : out.sizes()) report.mutable_model()->add_output_shape(s);
      if (info != nullptr) {
        bool invalid = false;
        for (const auto& p : CheckLossInputs(c.loss, out, c.batch.targets)) {
          const bool is_invalid = p.code == v1::DATA_INVALID;
          invalid |= is_invalid;
          AddFinding(&report, p.code, is_invalid ? v1::Finding::ERROR : v1::Finding::FAIL,
                     is_invalid ? "input" : "init", p.message);
        }
        if (invalid) return Next::kStop;
      }
    }
    auto loss = ComputeLoss(*m, c.loss, *output, c.batch.targets);
    if (!loss.ok()) {
      AddFinding(&report, v1::LOSS_ERROR, v1::Finding::FAIL, "init",
                 absl::StrCat(c.loss, ": ", loss.status().message()));
      return Next::kStop;
    }
    c.init_loss = loss->item<double>();
  }
  bool exploding = false;
  if (out.defined() && out.is_floating_point() && out.numel() > 0 && CountNonFinite(out) == 0) {
    ActivationEvidence& a = c.activations;
    a.output_rms = Rms(out);
    a.input_rms = InputRms(c.batch);
    // Only a regression target says what scale the output should have;
    // logits and probabilities live near 1 whatever the targets are.
    const bool regression = info == nullptr || info->family == LossFamily::kRegression;
    a.target_rms = regression && c.batch.targets.is_floating_point() ? Rms(c.batch.targets) : 0;
    exploding = OutputExplodes(a.output_rms, a.input_rms, a.target_rms);
  }
  if (out.defined() && std::isfinite(c.init_loss) && CountNonFinite(out) == 0 && info != nullptr) {
    // An exploding output is reported (by CheckActivations) instead of its
    // symptoms: an inflated initial loss and saturated probabilities.
    CheckInitLoss(c, *info, out, /*report=*/!exploding);
    if (!exploding) CheckProbabilities(c, *info, out);
  }
  CheckOutputUsesInput(c);
  return Next::kContinue;
}

}  // namespace preflight::engine::internal
