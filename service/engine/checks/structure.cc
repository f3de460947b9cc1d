// The structural probes: a few forwards of the initial model on the batch
// (eval mode, no gradient, no training) that measure what no training
// experiment can explain: a bounded output and the targets beyond it, class
// ids used as regression values, the rank of the output matrix, linearity,
// coupling between samples, inputs the output ignores; and, from the main
// run, where a gradient blocked inside forward stops. structure_policy.h
// decides; this measures, reports and, for a curve that failed without a
// verified cause, names the measured cause in the curve finding's hint.
//
// Runs after CheckCurve (so that it can amend the curve's hint) but reads
// only ctx.model, which is never trained: the probes see the initial
// weights.
#include <algorithm>
#include <cmath>
#include <optional>
#include <set>

#include <torch/torch.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "service/engine/checks/check.h"
#include "service/engine/curve.h"
#include "service/engine/losses.h"
#include "service/engine/report_util.h"
#include "service/engine/structure_policy.h"
#include "service/engine/tensor_util.h"
#include "service/engine/thresholds.h"

namespace preflight::engine::internal {
namespace {

using Inputs = std::vector<torch::jit::IValue>;

// The output as float64, or nullopt when forward fails or gives no finite
// floating tensor.
std::optional<torch::Tensor> Output(Model& m, const Inputs& inputs) {
  auto o = m.Forward(inputs);
  if (!o.ok() || !o->isTensor()) return std::nullopt;
  const torch::Tensor t = o->toTensor();
  if (!t.is_floating_point() || t.numel() == 0 || CountNonFinite(t) > 0) return std::nullopt;
  return t.detach().to(torch::kFloat64);
}

double MaxAbs(const torch::Tensor& t) { return t.numel() ? t.abs().max().item<double>() : 0; }

// Fresh copies of the inputs as loaded (a model that writes into its
// inputs must not change what the next probe sees), with `f` applied to
// every tensor with the batch dimension (`floating_only`: only floating
// ones).
template <typename F>
Inputs MapInputs(const CheckContext& c, bool floating_only, F f) {
  Inputs out;
  for (const torch::Tensor& t : c.pristine_inputs) {
    const bool batched = t.dim() >= 1 && t.size(0) == c.batch.batch_size;
    out.emplace_back(batched && (!floating_only || t.is_floating_point()) ? f(t).clone()
                                                                          : t.clone());
  }
  return out;
}

Inputs Pristine(const CheckContext& c) {
  return MapInputs(c, false, [](const torch::Tensor& t) { return t; });
}

bool AllFloating(const CheckContext& c) {
  for (const torch::Tensor& t : c.pristine_inputs) {
    if (!t.is_floating_point()) return false;
  }
  return !c.pristine_inputs.empty();
}

bool AnyFloating(const CheckContext& c) {
  for (const torch::Tensor& t : c.pristine_inputs) {
    if (t.is_floating_point()) return true;
  }
  return false;
}

// Rank of a [N, D] matrix centred over its rows; 0 when the rows are the
// same to float32 noise (kSameOutputRelTol of the values' magnitude), where
// the singular values would measure noise.
int CentredRank(const torch::Tensor& m) {
  if (m.dim() != 2 || m.size(0) < 2) return -1;
  const torch::Tensor centred = m - m.mean(0, /*keepdim=*/true);
  if (MaxAbs(centred) <= kSameOutputRelTol * (1 + MaxAbs(m))) return 0;
  const torch::Tensor s = torch::linalg_svdvals(centred);
  const double top = s.numel() ? s.max().item<double>() : 0;
  if (!(top > 0)) return 0;
  return static_cast<int>((s > kRankRelTol * top).sum().item<int64_t>());
}

void MeasureBound(const CheckContext& c, Model& m, const LossInfo* info, StructureEvidence& e) {
  const torch::Tensor& tg = c.batch.targets;
  if (info == nullptr || info->family != LossFamily::kRegression || !tg.is_floating_point() ||
      !AnyFloating(c)) {
    return;
  }
  auto amp = Output(m, MapInputs(c, true, [](const torch::Tensor& t) { return t * kProbeGain; }));
  if (!amp) return;
  const torch::Tensor a = amp->flatten();
  const double lo = a.min().item<double>(), hi = a.max().item<double>();
  const int64_t n = a.numel();
  // Ties at the extremes (clamp, relu); near 0/+-1 inside [-1, 1] (sigmoid, tanh).
  int64_t at = 0;
  const int64_t lo_ties = (a == lo).sum().item<int64_t>();
  const int64_t hi_ties = (a == hi).sum().item<int64_t>();
  if (lo_ties >= 2) at += lo_ties;
  if (hi_ties >= 2 && hi != lo) at += hi_ties;
  if (lo >= -1 - kBoundEps && hi <= 1 + kBoundEps) {
    const torch::Tensor near = ((a.abs() - 1).abs() <= kBoundEps) | (a.abs() <= kBoundEps);
    at = std::max(at, near.sum().item<int64_t>());
  }
  const torch::Tensor t = tg.detach().to(torch::kFloat64).flatten();
  const double tol = 1e-6 * (1 + std::max(std::fabs(lo), std::fabs(hi)));
  e.bound_measured = true;
  e.amplified_min = lo;
  e.amplified_max = hi;
  e.at_bound_share = static_cast<double>(at) / static_cast<double>(n);
  e.targets_beyond =
      ((t < lo - tol) | (t > hi + tol)).sum().item<double>() / static_cast<double>(t.numel());
  e.target_min = t.min().item<double>();
  e.target_max = t.max().item<double>();
  e.regression_loss = true;
  const bool integral = torch::equal(t, t.round());
  std::set<double> distinct;
  if (integral && t.numel() <= 100000) {
    const torch::Tensor tc = t.contiguous().cpu();
    const double* p = tc.data_ptr<double>();
    for (int64_t i = 0; i < tc.numel() && distinct.size() < 1000; ++i) distinct.insert(p[i]);
  }
  e.distinct_targets = static_cast<int>(distinct.size());
  e.targets_look_like_class_ids =
      integral && e.target_min >= 0 && e.target_max >= 2 && e.distinct_targets >= 3;
}

void MeasureRank(const CheckContext& c, const torch::Tensor& out, StructureEvidence& e) {
  const torch::Tensor& tg = c.batch.targets;
  const int64_t n = c.batch.batch_size;
  if (out.dim() != 2 || out.size(0) != n || n < 2) return;
  int needed = -1;
  if (!tg.is_floating_point() && tg.dim() == 1 && tg.size(0) == n) {
    const torch::Tensor valid = tg.masked_select(tg != -100);
    if (valid.numel() == 0) return;
    const int distinct = static_cast<int>(std::get<0>(at::_unique(valid.cpu())).numel());
    needed = std::min<int>(distinct - 1, static_cast<int>(out.size(1)) - 1);
  } else if (tg.is_floating_point() && tg.sizes() == out.sizes()) {
    needed = CentredRank(tg.detach().to(torch::kFloat64));
  } else {
    return;
  }
  e.samples = static_cast<int>(n);
  e.output_dims = static_cast<int>(out.size(1));
  e.output_rank = CentredRank(out);
  e.needed_rank = needed;
}

void MeasureLinearity(const CheckContext& c, Model& m, const torch::Tensor& out,
                      StructureEvidence& e) {
  if (!AllFloating(c) || c.batch.batch_size < 2) return;
  constexpr double kA = 0.3;
  const Inputs x2 = MapInputs(c, true, [](const torch::Tensor& t) { return torch::roll(t, 1, 0); });
  const Inputs mix = MapInputs(
      c, true, [](const torch::Tensor& t) { return kA * t + (1 - kA) * torch::roll(t, 1, 0); });
  auto f2 = Output(m, x2);
  auto fm = Output(m, mix);
  if (!f2 || !fm || f2->sizes() != out.sizes() || fm->sizes() != out.sizes()) return;
  const double spread = MaxAbs(out - *f2);
  if (!(spread > 0)) return;
  e.nonlinearity = MaxAbs(*fm - (kA * out + (1 - kA) * *f2)) / spread;
}

void MeasureCoupling(const CheckContext& c, Model& m, const torch::Tensor& out,
                     StructureEvidence& e) {
  const int64_t n = c.batch.batch_size;
  if (n < 2 || out.dim() < 1 || out.size(0) != n) return;
  const Inputs changed = MapInputs(c, false, [](const torch::Tensor& t) {
    torch::Tensor u = t.clone();
    u[0].copy_(t[1]);
    return u;
  });
  auto o = Output(m, changed);
  if (!o || o->sizes() != out.sizes()) return;
  const double own = MaxAbs((*o)[0] - out[0]);
  if (!(own > 0)) return;
  e.cross_sample_change = MaxAbs(o->narrow(0, 1, n - 1) - out.narrow(0, 1, n - 1)) / own;
}

void MeasureInputs(const CheckContext& c, Model& m, const torch::Tensor& out,
                   StructureEvidence& e) {
  e.inputs = static_cast<int>(c.pristine_inputs.size());
  if (e.inputs < 2 || c.batch.batch_size < 2) return;
  const double scale = 1 + MaxAbs(out);
  for (size_t i = 0; i < c.pristine_inputs.size(); ++i) {
    Inputs rolled = Pristine(c);
    const torch::Tensor t = rolled[i].toTensor();
    if (t.dim() < 1 || t.size(0) != c.batch.batch_size || torch::equal(t, torch::roll(t, 1, 0))) {
      continue;
    }
    rolled[i] = torch::roll(t, 1, 0);
    auto o = Output(m, rolled);
    if (!o || o->sizes() != out.sizes()) continue;
    if (MaxAbs(*o - out) <= kSameOutputRelTol * scale) {
      e.ignored_inputs.push_back(c.batch.input_names[i]);
    }
  }
}

StructureEvidence Measure(const CheckContext& c) {
  StructureEvidence e;
  const LossInfo* info = FindLoss(c.loss);
  if (c.main_run) {
    for (const auto& p : c.main_run->params) {
      e.param_names.push_back(p.name);
      e.param_received_grad.push_back(p.received_grad);
    }
  }
  torch::NoGradGuard no_grad;
  std::unique_ptr<Model> m = c.model->Clone();
  // Eval mode: dropout would change outputs for the wrong reason, and batch
  // statistics would couple the samples.
  m->SetTraining(false);
  torch::manual_seed(c.config.seed());
  auto base = Output(*m, Pristine(c));
  if (!base) return e;
  const torch::Tensor out = *base;
  MeasureBound(c, *m, info, e);
  if (out.dim() >= 1 && out.size(0) == c.batch.batch_size) {
    MeasureRank(c, out.reshape({c.batch.batch_size, -1}), e);
  }
  MeasureLinearity(c, *m, out, e);
  MeasureCoupling(c, *m, out, e);
  MeasureInputs(c, *m, out, e);
  return e;
}

bool IsCurveCode(v1::FindingCode code) {
  for (CurveClass k : {CurveClass::kRising, CurveClass::kDiverged, CurveClass::kOscillating,
                       CurveClass::kNoisy, CurveClass::kPlateau, CurveClass::kFlat}) {
    if (CurveCode(k) == code) return true;
  }
  return false;
}

bool HasCode(const v1::Report& r, v1::FindingCode code) {
  for (const auto& f : r.findings()) {
    if (f.code() == code) return true;
  }
  return false;
}

}  // namespace

Next CheckStructure(CheckContext& c) {
  v1::Report& report = *c.report;
  v1::Finding* curve = nullptr;
  for (v1::Finding& f : *report.mutable_findings()) {
    if (IsCurveCode(f.code()) && f.severity() >= v1::Finding::WARN) curve = &f;
  }
  const StructureEvidence e = Measure(c);
  StructureDecision d = JudgeStructure(e);
  // An output that ignores the input has rank 0 for that reason, already named.
  if (HasCode(report, v1::OUTPUT_IGNORES_INPUT)) d.low_rank = false;
  // A linear or rank-limited model is a fault only where the batch needed
  // more: the curve failed and no experiment verified another cause (a
  // linear classifier that converges with lr x10 is just slow).
  // Only a curve that stalled: a diverging, rising or oscillating one has
  // its own (lr, sign) experiments.
  const bool stalled =
      curve != nullptr && (curve->code() == v1::LOSS_PLATEAU || curve->code() == v1::LOSS_FLAT ||
                           curve->code() == v1::LOSS_NOISY);
  const bool unexplained = stalled && !absl::StartsWith(curve->hint(), "Verified");

  if (d.class_ids_as_values) {
    auto* f = AddFinding(&report, v1::TARGET_LOSS_MISMATCH, v1::Finding::WARN, "structure",
                         d.mismatch_summary);
    AddNumber(f, "distinct_targets", e.distinct_targets);
    AddNumber(f, "targets_beyond_output_range", e.targets_beyond);
  }
  if (d.saturated) {
    auto* f = AddFinding(&report, v1::OUTPUT_SATURATED, v1::Finding::WARN, "structure",
                         d.saturated_summary);
    AddNumber(f, "at_bound_share", e.at_bound_share);
    AddNumber(f, "targets_beyond_output_range", e.targets_beyond);
    AddNumber(f, "output_min", e.amplified_min);
    AddNumber(f, "output_max", e.amplified_max);
  }
  if (d.low_rank && unexplained) {
    auto* f = AddFinding(&report, v1::OUTPUT_LOW_RANK, v1::Finding::WARN, "structure",
                         d.low_rank_summary);
    AddNumber(f, "output_rank", e.output_rank);
    AddNumber(f, "needed_rank", e.needed_rank);
  }
  if (d.linear && unexplained) {
    auto* f =
        AddFinding(&report, v1::MODEL_LINEAR, v1::Finding::WARN, "structure", d.linear_summary);
    AddNumber(f, "nonlinearity", e.nonlinearity);
  }
  if (d.input_ignored && !HasCode(report, v1::OUTPUT_IGNORES_INPUT)) {
    auto* f = AddFinding(&report, v1::OUTPUT_IGNORES_INPUT, v1::Finding::WARN, "structure",
                         d.ignored_summary);
    f->set_hint(
        "Check that forward uses every input it takes (one input passed where another "
        "was meant).");
    AddNumber(f, "inputs", e.inputs);
  }
  if (d.gradient_blocked) {
    for (v1::Finding& f : *report.mutable_findings()) {
      if (f.code() != v1::PARAM_NO_GRAD) continue;
      f.set_hint(absl::StrCat("Measured: ", d.blocked_summary, "."));
      if (!d.blocked_next.empty()) {
        AddText(&f, "last_without_grad", d.blocked_last);
        AddText(&f, "first_after_with_grad", d.blocked_next);
      }
    }
  }
  if (unexplained) {
    curve->set_hint(StructuralHint(StructuralCauses(d, true), curve->hint()));
    if (e.nonlinearity >= 0) AddNumber(curve, "probe_nonlinearity", e.nonlinearity);
    if (e.cross_sample_change >= 0)
      AddNumber(curve, "probe_cross_sample_change", e.cross_sample_change);
    if (e.output_rank >= 0) AddNumber(curve, "probe_output_rank", e.output_rank);
  }
  if (std::getenv("PREFLIGHT_DEBUG_PROBES") != nullptr) {
    // Calibration only (tools/zoo/calibrate.py reads these lines).
    fprintf(stderr,
            "probes: bound=%d at_bound=%.4g beyond=%.4g class_ids=%d rank=%d needed=%d "
            "nonlin=%.4g cross=%.4g ignored=%zu blocked=%d\n",
            e.bound_measured, e.at_bound_share, e.targets_beyond, e.targets_look_like_class_ids,
            e.output_rank, e.needed_rank, e.nonlinearity, e.cross_sample_change,
            e.ignored_inputs.size(), d.gradient_blocked);
  }
  return Next::kContinue;
}

}  // namespace preflight::engine::internal
