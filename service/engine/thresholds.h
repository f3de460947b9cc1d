// Every named threshold of the engine, with where it comes from. The ranges
// quoted were measured on the model zoo (tools/zoo, tools/zoo/calibrate.py)
// and are kept in the README's "Thresholds" table: change one here, re-run
// the calibration and update that table in the same commit. Each bound is
// relative to the model's own scale unless it says otherwise, and none is
// fitted to one fixture: each sits well outside the healthy zoo range.
#pragma once

#include <cstdint>

namespace preflight::engine {

// --- Input ---------------------------------------------------------------

// A sample batch larger than this per tensor is not a sample: refusing it
// keeps a crafted file (a stride-0 view declaring 10^12 elements in a few
// bytes) from turning into a multi-terabyte allocation later.
inline constexpr int64_t kMaxTensorElements = int64_t{1} << 28;

// --- At initialisation ---------------------------------------------------

// Cross-entropy-like losses start near ln C when logits are small. Allowed
// distance: the larger of 1 nat and half of ln C. Healthy zoo models start
// at 0.95..1.17 x ln C; a 50x-scaled output layer at 6.8 x ln C.
inline constexpr double kInitLossAbsTol = 1.0;
inline constexpr double kInitLossRelTol = 0.5;
// Regression: outputs at init this many times larger (RMS) than the targets
// (or than 1, for tiny targets) mean a mis-scaled output layer.
inline constexpr double kRegressionInitScale = 10.0;
// Outputs within this of each other count as identical (float32 noise).
inline constexpr double kSameOutputRelTol = 1e-6;
// A row-sum this close to 1 with all values in [0, 1] is a probability row.
inline constexpr double kProbabilitySumTol = 1e-3;
// bce_with_logits outputs all inside [0, 1] look like sigmoid outputs only
// with enough of them to rule out chance.
inline constexpr int64_t kMinOutputsForSigmoidTest = 8;

// --- Structural probes (checks/structure.cc, structure_policy.h) ---------

// The output-bound probe amplifies the floating inputs by this: a bounded
// output (clamp, relu, sigmoid, tanh) then sits at its bound, an unbounded
// one grows with the input.
inline constexpr double kProbeGain = 100.0;
// An output within this of 0 or +-1 (all outputs inside [-1, 1]) is at a
// sigmoid/tanh bound; float32 tanh(x) is exactly 1 beyond |x| ~ 9.
inline constexpr double kBoundEps = 1e-6;
// OUTPUT_SATURATED: at least this share of the amplified outputs at a bound
// and at least kTargetsBeyondShare of the targets outside the range the
// amplified output reaches. Healthy zoo: 0 at a bound (every case), 0..0.375
// of the targets outside (unbounded outputs); faults: 0.34 (ReLU output) ..
// 0.83 (clamp) at a bound with 0.42..1.0 of the targets outside
// (tools/zoo/probe_calibrate.py; README, Thresholds).
inline constexpr double kAtBoundShare = 0.25;
inline constexpr double kTargetsBeyondShare = 0.1;
// Singular values of the centred output matrix above this share of the
// largest count towards its rank (float32 noise is ~1e-6 of it).
inline constexpr double kRankRelTol = 1e-3;
// MODEL_LINEAR: the interpolation error relative to the output's spread at
// or below this (float32 rounding gives ~1e-7; any ReLU/tanh network
// measured on the zoo is far above it: 0.165..1.34; linear models
// 4.7e-8..1.9e-7).
inline constexpr double kLinearTol = 1e-4;
// Samples are coupled when changing sample 0 moves another sample's output
// by more than this share of sample 0's own change (eval mode: BatchNorm
// uses running statistics and couples nothing). Healthy zoo: 0; samples
// mixed by a reshape, softmax or pooling over the batch: 0.063..4.8.
inline constexpr double kCrossSampleTol = 1e-4;

// --- Gradient flow -------------------------------------------------------

// DEAD_UNITS: at least this share of a layer's units, in a layer of at least
// kDeadMinUnits units. Healthy zoo layers show 0-6% dead units; the
// dead-bias fault 80%.
inline constexpr double kDeadFraction = 0.5;
inline constexpr int64_t kDeadMinUnits = 8;
// Gradient RMS of the first weight over the last weight at step 0. Healthy
// zoo models (MLP, CNN, ResNet-style, 2-layer LSTM, Transformer) measure
// 0.016..0.48; a 12-layer sigmoid stack measures 6e-11. The bounds sit two
// decades outside the healthy range on either side.
inline constexpr double kVanishingRatio = 1e-4;
inline constexpr double kExplodingRatio = 1e4;
// The global gradient norm growing this many times over its step-0 value
// within one run is an explosion. Healthy zoo runs peak at <= 2.4x (an
// oscillating or sign-flipped run at 8x and 36x); SGD past its stability
// limit reached 2.7e9x within five steps.
inline constexpr double kExplodingGrowth = 1e3;
// Update/weight ratios and dead units are sampled every this many steps
// (from step 0): they need a copy of every parameter or a pass over every
// gradient row, and both change slowly. A cost bound, not a judgement.
inline constexpr int kSampleEvery = 10;

// --- Exploding forwards (EXPLODING_ACTIVATIONS) ---------------------------

// Output RMS at init above this many times max(1, input RMS, target RMS) is
// an exploding forward: logits that large saturate softmax/sigmoid in
// float32 completely (exp(-1000) is 0), so the loss gradient carries no
// information, and a regression output that far off the targets cannot be
// fitted at any sane lr. Healthy zoo models measure 0.089..0.66
// (calibrate.py column out/scale); the 50x-scaled output layer 11
// (stays INIT_LOSS_SUSPICIOUS), a NaN-producing loss 46; the 3*I ReLU
// recurrence 2.5e25, a 1e37-scaled output 5.9e36.
inline constexpr double kExplodingOutputFactor = 1e3;
// Global gradient norm at step 0 above this many times the parameter norm:
// one SGD step of lr 1e-3 would move the weights by their whole norm.
// Healthy zoo models measure 0.0053..1.3 (column g0/p); the 50x output
// layer 15, SGD past its stability limit 2.0 (at step 0); the 3*I
// recurrence 7.9e25.
inline constexpr double kExplodingGradToParam = 1e3;
// The verifying experiment multiplies the weights (parameters of rank >= 2)
// of the named submodule by this: one decade, which takes a recurrent gain
// of 3 below 1 and a layer whose output is >= 1e3x its scale back to an
// ordinary range, while a healthy init would merely start small.
inline constexpr double kSmallerInitScale = 0.1;
// Submodule calls recorded in one forward (a long recurrence calls one
// module per step); the first explosion happens within far fewer. A memory
// bound, not a judgement.
inline constexpr int kMaxRecordedModuleCalls = 4096;

// --- Differential diagnosis ----------------------------------------------

// An experiment "improves" when its final |loss| is below this share of the
// better of the original run's final |loss| and its initial |loss|.
inline constexpr double kImprovedShare = 0.5;
// An experiment still at or above max(|initial|, |final|) of the original
// run after this share of its budget has made no progress at all: it stops
// there (a cost bound; every zoo experiment that won was far below that
// level by then).
inline constexpr double kEarlyStopShare = 0.25;
// An IMPROVED experiment that lowers the final loss at least this many times
// names its cause (as partly verified): a tenfold lower loss from changing
// one setting is evidence, while run-to-run differences of one setting on
// the zoo stay within 2x (kImprovedShare).
inline constexpr double kNamedImprovementFactor = 10.0;
// The "more steps" experiment: this many times the step budget, planned only
// for a plateau whose last 20% of steps still cut the loss by at least
// kMoreStepsTailDrop (a curve that has stopped cannot profit).
inline constexpr int kMoreStepsFactor = 4;
inline constexpr double kMoreStepsTailDrop = 0.05;

// --- Irreducible minimum (CONVERGED_TO_FLOOR) -----------------------------

// A plateau (or a noisy curve) is a stationary point when the norm of the
// gradient averaged over the budget's last 10% of updates fell to this share
// of its step-0 value AND to this share of the parameter norm, and the
// level (window means) moved less than kFloorTailMove over the last 20% of
// steps, plus twice what the step-to-step jitter explains. Averaged, because
// a stochastic objective's per-step gradients stay large at its minimum.
// Measured (tools/zoo/calibrate.py): healthy floors 1.2e-7..0.012 of their
// start (the VAE the highest) and up to 9.3e-4 of the parameter norm, tail
// movement up to 0.32%; non-stationary plateaus (lr 1e-5, weight decay 1.0,
// dropout 0.6, slow healthy runs) keep 0.093..1.0 of their start;
// softmax-before-CE saturates to 0.044 of its start.
inline constexpr double kFloorGradCollapse = 0.02;
inline constexpr double kFloorGradToParam = 2e-3;
inline constexpr double kFloorTailMove = 0.01;
// Regression (and reconstruction) memorises a sample when its RMS error is
// below this share of the targets' standard deviation: its prediction
// explains over 90% of the targets' variance (1 - 0.3^2 = 0.91), where
// predicting the mean explains none (error 1.0x). Not tighter: a VAE's
// reconstructions come from a sampled latent, and at its floor (the KL term
// keeps the posterior from sharpening further) they stay 0.04 - 0.24x the
// spread (zoo `vae`); the plateaued regression faults end at 1.9x and 2.0x
// (tools/zoo/calibrate.py, column werr).
inline constexpr double kFloorRegressionError = 0.3;

// --- Unstable convergence (UNSTABLE_CONVERGENCE) ---------------------------

// After reaching the target following a blow-up (|loss| above
// CurveThresholds::diverge_factor x its start), training continues for this
// share of the step budget (at least kSettleMinSteps) to see whether the
// loss stays at the target.
inline constexpr double kSettleShare = 0.1;
inline constexpr int kSettleMinSteps = 10;

// --- Loss-curve classification (curve.h) -----------------------------------

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

}  // namespace preflight::engine
