// Determinism: the first steps replayed from the same seed and compared
// bitwise (losses, then parameters).
#include <cmath>
#include <cstring>

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "service/engine/checks/check.h"
#include "service/engine/report_util.h"
#include "service/engine/thresholds.h"

namespace preflight::engine::internal {

Next CheckDeterminism(CheckContext& c) {
  if (c.config.determinism_steps() <= 0 || !c.main_run) return Next::kContinue;
  const RunTrace& main_run = *c.main_run;
  if (main_run.snapshot_updates <= 0) return Next::kContinue;
  RunOptions o = RunOptionsFor(c);
  o.max_steps = main_run.snapshot_updates;
  o.snapshot_after_updates = main_run.snapshot_updates;
  RunTrace r = Train(*c.model, c.batch, o);

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
    const auto names = TrainableParams(*c.model);
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
  if (bad_step < 0 && bad_param.empty()) return Next::kContinue;
  // The usual cause on CPU: forward() changes its input in place, so every
  // run starts from a different batch.
  std::vector<std::string> mutated;
  for (size_t i = 0; i < c.batch.inputs.size() && i < c.pristine_inputs.size(); ++i) {
    const auto& now = c.batch.inputs[i].toTensor();
    if (!torch::equal(now, c.pristine_inputs[i])) mutated.push_back(c.batch.input_names[i]);
  }
  std::string msg = bad_step >= 0
                        ? absl::StrFormat(
                              "replaying %d steps with seed %d gave a different loss at step %d "
                              "(%.17g vs %.17g)",
                              o.max_steps, c.config.seed(), bad_step, main_run.losses[bad_step],
                              r.losses[bad_step])
                        : absl::StrFormat(
                              "replaying %d steps with seed %d gave identical losses but "
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
  return Next::kContinue;
}

}  // namespace preflight::engine::internal
