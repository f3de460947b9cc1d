// The torch side of the irreducible-minimum judgement (JudgeFloor in
// diagnosis_policy.h): how much of the batch the trained model fits.
#include <algorithm>
#include <cmath>

#include <torch/torch.h>

#include "service/engine/checks/check.h"
#include "service/engine/losses.h"
#include "service/engine/thresholds.h"

namespace preflight::engine::internal {
namespace {

// Share of samples whose argmax over dim 1 equals their class-index target
// (ignore_index -100 skipped); -1 when the shapes do not fit that reading.
double ClassIndexShare(const torch::Tensor& out, const torch::Tensor& tg) {
  if (out.dim() < 2 || tg.is_floating_point()) return -1;
  std::vector<int64_t> expect = out.sizes().vec();
  expect.erase(expect.begin() + 1);
  if (tg.sizes().vec() != expect) return -1;
  const torch::Tensor valid = tg != -100;
  if (valid.sum().item<int64_t>() == 0) return -1;
  if (tg.masked_select(valid).max().item<int64_t>() >= out.size(1)) return -1;
  const torch::Tensor hit = (out.argmax(1) == tg) | ~valid;
  // A sample is memorised when every one of its positions is.
  return hit.reshape({hit.size(0), -1}).all(1).to(torch::kFloat64).mean().item<double>();
}

// Share of samples whose every element is on the right side of `threshold`
// (binary targets).
double BinaryShare(const torch::Tensor& out, const torch::Tensor& tg, double threshold) {
  const torch::Tensor hit = (out > threshold) == (tg > 0.5);
  return hit.reshape({hit.size(0), -1}).all(1).to(torch::kFloat64).mean().item<double>();
}

// Share of samples whose RMS error is below kFloorRegressionError x the
// targets' standard deviation; `worst` gets the largest sample's ratio.
double RegressionShare(const torch::Tensor& out, const torch::Tensor& tg, double* worst) {
  const torch::Tensor o = out.to(torch::kFloat64);
  const torch::Tensor t = tg.to(torch::kFloat64);
  const double spread = t.numel() > 1 ? t.std().item<double>() : 0;
  if (!(spread > 0)) return -1;
  const torch::Tensor rms = (o - t).pow(2).reshape({o.size(0), -1}).mean(1).sqrt();
  *worst = rms.max().item<double>() / spread;
  return (rms <= kFloorRegressionError * spread).to(torch::kFloat64).mean().item<double>();
}

double MemorisedShare(const std::string& loss, const torch::Tensor& out, const torch::Tensor& tg,
                      double* worst_regression_error) {
  if (!out.defined() || out.dim() < 1 || out.size(0) != tg.size(0)) return -1;
  torch::NoGradGuard no_grad;
  if (!tg.is_floating_point()) return ClassIndexShare(out, tg);
  if (tg.sizes() != out.sizes()) return -1;
  const LossInfo* info = FindLoss(loss);
  if (info != nullptr && info->family == LossFamily::kClassification) {
    // Probability targets: the most probable class is predicted.
    if (out.dim() < 2) return -1;
    return ClassIndexShare(out, tg.argmax(1));
  }
  if (info != nullptr && info->family == LossFamily::kBinary) {
    return BinaryShare(out, tg, info->takes_logits ? 0.0 : 0.5);
  }
  return RegressionShare(out, tg, worst_regression_error);
}

}  // namespace

FloorEvidence FloorEvidenceOf(const CheckContext& c) {
  const RunTrace& run = *c.main_run;
  FloorEvidence e;
  if (!run.grad_norm_total.empty()) {
    const std::vector<double>& g = run.grad_norm_total;
    e.grad_norm_initial = g.front();
    if (run.grad_window_mean_norm >= 0) {
      e.grad_norm_final = run.grad_window_mean_norm;
    } else {
      // The run ended before the budget's window: the mean of its last norms.
      const size_t w = std::max<size_t>(5, g.size() / 10);
      const size_t begin = g.size() > w ? g.size() - w : 0;
      double sum = 0;
      for (size_t i = begin; i < g.size(); ++i) sum += g[i];
      e.grad_norm_final = sum / static_cast<double>(g.size() - begin);
    }
  }
  MeasureTail(run.losses, &e);
  e.param_norm_final = run.param_norm_final;
  e.memorised_share =
      MemorisedShare(c.loss, run.last_output, c.batch.targets, &e.worst_regression_error);
  for (const auto& f : c.report->findings()) {
    if (f.severity() == v1::Finding::WARN || f.severity() == v1::Finding::FAIL ||
        f.severity() == v1::Finding::ERROR) {
      e.clean = false;
    }
  }
  return e;
}

}  // namespace preflight::engine::internal
