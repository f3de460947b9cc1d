// Loss-curve classification for the overfit-one-batch check.
//
// Pure arithmetic on the recorded losses: no LibTorch, so it is unit-tested
// on hand-made curves and shared by the main run and every diagnosis
// experiment. The classes follow the practitioners' recipe (see README):
//   converged   loss reached the target            -> OVERFIT_CONVERGED
//   diverged    non-finite, or |loss| blew up        -> LOSS_DIVERGED
//   flat        no movement from step 1              -> LOSS_FLAT
//   rising      ends clearly above where it started  -> LOSS_RISING
//   oscillating large up-and-down swings, no target  -> LOSS_OSCILLATING
//   noisy       small swings on a falling curve       -> LOSS_NOISY
//   plateau     smooth but stalled above the target  -> LOSS_PLATEAU
//
//   CurveAnalysis a = ClassifyCurve(losses, /*target=*/0.01 * losses[0]);
//   if (a.curve_class != CurveClass::kConverged) ...
#pragma once

#include <string>
#include <vector>

#include "preflight/v1/report.pb.h"
#include "service/engine/thresholds.h"

namespace preflight::engine {

enum class CurveClass {
  kConverged,
  kDiverged,
  kFlat,
  kRising,
  kOscillating,
  kNoisy,
  kPlateau,
};

struct CurveAnalysis {
  CurveClass curve_class = CurveClass::kPlateau;
  double initial = 0;      // First loss.
  double final_value = 0;  // Mean of the last window (last finite value if diverged).
  double best = 0;         // Smallest |loss| seen.
  int steps = 0;           // Points in the curve.
  int first_non_finite_step = -1;
  double upward_share = 0;     // See CurveThresholds::rough_upward_share.
  double rel_amplitude = 0;    // See CurveThresholds::oscillation_rel_amplitude.
  double tail_drop = 0;        // Plateau only: relative drop over the last 20%.
  double total_drop = 0;       // Plateau only: relative drop over the whole run.
  bool still_falling = false;  // Plateau only: see CurveThresholds.
  std::string summary;         // One line with the numbers, for finding messages.
};

// True when |loss| <= target. Convergence is judged on magnitude so that an
// objective that falls below zero without bound (a sign error) never counts.
bool ReachedTarget(double loss, double target);

// Classifies a loss curve. `target` is the absolute loss the run had to
// reach; `stopped_non_finite` is set when training stopped on a NaN/Inf.
CurveAnalysis ClassifyCurve(const std::vector<double>& losses, double target,
                            bool stopped_non_finite, const CurveThresholds& thresholds = {});

// How a run that reached its target got there. Unstable: before the first
// step at the target, |loss| rose above diverge_factor x its initial |loss|
// (the target was touched only because the model blew up, e.g. huge
// logits). Settled: the last recorded loss is at the target.
struct Stability {
  int first_target_step = -1;  // -1: never reached.
  double peak_ratio = 0;       // max |loss| before first_target_step / |initial|.
  bool unstable = false;
  bool settled = false;
};
Stability AnalyzeStability(const std::vector<double>& losses, double target,
                           const CurveThresholds& thresholds = {});

// The finding code that reports a curve class.
v1::FindingCode CurveCode(CurveClass c);
const char* CurveClassName(CurveClass c);

}  // namespace preflight::engine
