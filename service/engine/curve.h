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

// Thresholds, with where each comes from. They are relative to the curve's
// own scale so that they hold for any loss magnitude, and were checked on the
// model zoo (tools/zoo) across MLP, CNN, ResNet, LSTM, Transformer,
// regression and multi-label models (see README "Thresholds").
struct CurveThresholds {
  // |loss| growing past this multiple of the initial |loss| is divergence:
  // a healthy overfit never leaves the neighbourhood of its starting loss
  // upwards by an order of magnitude.
  double diverge_factor = 10.0;
  // A curve whose every point lies within this relative distance of the
  // first point did not move at all (float32 rounding of a constant loss is
  // ~1e-7 relative; anything that trains moves by percent within steps).
  double flat_rel_tol = 1e-5;
  // Ending this fraction above the start is "rising": Adam/SGD on one fixed
  // batch decreases a consistent objective monotonically in expectation, so
  // 5% net growth is not noise.
  double rise_rel_tol = 0.05;
  // Fraction of the late curve's movement that goes upward. A smooth descent
  // has ~0; an oscillation close to 0.5. 0.3 separates them on the zoo.
  double rough_upward_share = 0.3;
  // Mean absolute step change in the late curve relative to the initial
  // loss: above this, swings are "oscillation" (lr too high); below,
  // "noise" (dropout-like). 5% of the starting loss per step is far above
  // dropout noise on the zoo.
  double oscillation_rel_amplitude = 0.05;
  // Below this relative amplitude upward moves are float noise, not "noisy".
  double noise_rel_amplitude = 0.002;
  // A rise counts as steady (not a blow-up) when this share of all movement
  // is upward and the second half grows the loss less than this factor (quadratic growth
  // gives 4x; compounding instability far more).
  double steady_rise_share = 0.9;
  double compounding_growth = 10.0;
  // A plateau that is still falling: the last 20% of steps cut the loss by
  // at least this share, after cutting it by this share overall. The model
  // can fit the batch; only the step budget (or the learning rate) is short.
  double still_falling_tail_drop = 0.2;
  double still_falling_total_drop = 0.9;
};

struct CurveAnalysis {
  CurveClass curve_class = CurveClass::kPlateau;
  double initial = 0;       // First loss.
  double final_value = 0;   // Mean of the last window (last finite value if diverged).
  double best = 0;          // Smallest |loss| seen.
  int steps = 0;            // Points in the curve.
  int first_non_finite_step = -1;
  double upward_share = 0;  // See CurveThresholds::rough_upward_share.
  double rel_amplitude = 0; // See CurveThresholds::oscillation_rel_amplitude.
  double tail_drop = 0;     // Plateau only: relative drop over the last 20%.
  double total_drop = 0;    // Plateau only: relative drop over the whole run.
  bool still_falling = false;  // Plateau only: see CurveThresholds.
  std::string summary;      // One line with the numbers, for finding messages.
};

// True when |loss| <= target. Convergence is judged on magnitude so that an
// objective that falls below zero without bound (a sign error) never counts.
bool ReachedTarget(double loss, double target);

// Classifies a loss curve. `target` is the absolute loss the run had to
// reach; `stopped_non_finite` is set when training stopped on a NaN/Inf.
CurveAnalysis ClassifyCurve(const std::vector<double>& losses, double target,
                            bool stopped_non_finite,
                            const CurveThresholds& thresholds = {});

// The finding code that reports a curve class.
v1::FindingCode CurveCode(CurveClass c);
const char* CurveClassName(CurveClass c);

}  // namespace preflight::engine
