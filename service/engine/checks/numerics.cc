// Numerics: the first non-finite tensor of the main run, a replay of that
// one step under anomaly mode to name the backward op, and, for a
// reduced-precision run, an fp32 replay that tells a precision overflow from
// a model that breaks anyway.
#include <algorithm>
#include <cmath>

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "service/engine/checks/check.h"
#include "service/engine/precision_policy.h"
#include "service/engine/report_util.h"
#include "service/engine/thresholds.h"

namespace preflight::engine::internal {

namespace {

// The same seed and steps in fp32: if they stay finite where the bf16/fp16
// run broke, the fault is the precision, and that is the finding.
void CheckMixedPrecision(CheckContext& c, const RunTrace& t) {
  PrecisionRuns runs;
  runs.precision = ParsePrecision(c.config.dtype()).value_or(Precision::kFp32);
  if (runs.precision == Precision::kFp32) return;
  runs.reduced_failure = t.failure;
  runs.reduced_step = t.failure_step;
  RunOptions fp32 = RunOptionsFor(c);
  fp32.precision = Precision::kFp32;
  fp32.max_steps = t.failure_step + 1;
  fp32.track_output_range = true;
  fp32.target = -1;  // Never reached: every replayed step runs.
  const RunTrace r = Train(*c.model, c.batch, fp32);
  runs.fp32_failure = r.failure;
  runs.fp32_step = r.failure_step;
  runs.fp32_steps_run = static_cast<int>(r.losses.size());
  if (!r.output_abs_max.empty()) {
    runs.fp32_peak_output_abs = *std::max_element(r.output_abs_max.begin(), r.output_abs_max.end());
  }
  auto overflow = JudgeMixedPrecision(runs);
  if (!overflow) return;
  auto* f = AddFinding(c.report, v1::MIXED_PRECISION_OVERFLOW, v1::Finding::FAIL, "numerics",
                       overflow->message);
  f->set_hint(overflow->hint);
  AddText(f, "dtype", PrecisionName(runs.precision));
  AddNumber(f, "step", t.failure_step);
  if (runs.fp32_peak_output_abs >= 0) {
    AddNumber(f, "fp32_peak_output_abs", runs.fp32_peak_output_abs);
  }
  AddNumber(f, "max_finite", MaxFinite(runs.precision));
}

}  // namespace

Next CheckNumerics(CheckContext& c) {
  const RunTrace& t = *c.main_run;
  if (t.failure == v1::FINDING_CODE_UNSPECIFIED) return Next::kContinue;
  const bool numeric = t.failure == v1::OUTPUT_NON_FINITE || t.failure == v1::LOSS_NON_FINITE ||
                       t.failure == v1::GRAD_NON_FINITE || t.failure == v1::PARAM_NON_FINITE;
  std::string message = numeric ? absl::StrCat("first non-finite value at step ", t.failure_step,
                                               ": ", t.failure_message)
                                : absl::StrCat("at step ", t.failure_step, ": ", t.failure_message);
  auto* f =
      AddFinding(c.report, t.failure, v1::Finding::FAIL, numeric ? "numerics" : "overfit", message);
  AddNumber(f, "step", t.failure_step);
  if (!t.failure_tensor.empty()) AddText(f, "tensor", t.failure_tensor);
  if (!numeric) return Next::kContinue;

  // Replay to the first bad step and run just that step under anomaly mode
  // to name the backward op where the NaN/Inf appeared.
  RunOptions replay = RunOptionsFor(c);
  replay.max_steps = t.failure_step + 1;
  replay.anomaly_step = t.failure_step;
  RunTrace r = Train(*c.model, c.batch, replay);
  if (!r.anomaly_message.empty()) {
    AddText(f, "anomaly_mode", r.anomaly_message);
    f->set_hint(absl::StrCat(f->hint(), " Anomaly mode: ", r.anomaly_message));
  } else {
    AddText(f, "anomaly_mode",
            "no backward op produced NaN/Inf: the value arose in the forward pass or the "
            "optimizer update");
  }
  CheckMixedPrecision(c, t);
  return Next::kContinue;
}

}  // namespace preflight::engine::internal
