// Numerics: the first non-finite tensor of the main run, and a replay of
// that one step under anomaly mode to name the backward op.
#include <cmath>

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "service/engine/checks/check.h"
#include "service/engine/report_util.h"
#include "service/engine/thresholds.h"

namespace preflight::engine::internal {

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
  return Next::kContinue;
}

}  // namespace preflight::engine::internal
