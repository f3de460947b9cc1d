// The overfit-one-batch training loop with numerics and gradient-flow
// tracking: the one loop behind the main run, every diagnosis experiment,
// the NaN replay under anomaly mode and the determinism replay. Private to
// service/engine.
//
//   RunTrace t = Train(model, batch, RunOptionsFor(ctx));  // model is not modified
#pragma once

#include <string>
#include <vector>

#include <torch/types.h>

#include "preflight/v1/report.pb.h"
#include "service/engine/batch.h"
#include "service/engine/config.h"
#include "service/engine/model.h"

namespace preflight::engine::internal {

// Options of one training run on the fixed batch.
struct RunOptions {
  // Built from the validated config by RunOptionsFor (checks/check.h); no
  // defaults here, so no second copy of the config's defaults exists.
  std::string loss;  // Resolved: a built-in name or kModelLoss.
  Optimizer optimizer = Optimizer::kAdam;
  double lr = 0;
  double weight_decay = 0;
  double momentum = 0;
  bool negate_loss = false;  // Train on -loss (sign-error experiment).
  // Forward and loss under autocast at this precision (config dtype).
  Precision precision = Precision::kFp32;
  // Record max |first output tensor| per step (RunTrace::output_abs_max).
  bool track_output_range = false;
  bool train_mode = true;
  int max_steps = 0;
  double target = 0;  // Stop once the loss reaches it (ReachedTarget).
  uint64_t seed = 0;
  bool collect_stats = false;       // Per-parameter norms, dead units, update ratios.
  int snapshot_after_updates = -1;  // Copy parameters after this many updates.
  int anomaly_step = -1;            // Run this step's backward under anomaly mode.
  // Reaching the target after |loss| passed kDivergeFactor x its start does
  // not end the run: it continues up to this many steps to show whether the
  // loss stays there (0: stop at the target as usual).
  int settle_steps = 0;
  // Early stop: at step early_stop_step, a run whose mean |loss| over the
  // last 5 steps is >= early_stop_level stops (-1: never).
  int early_stop_step = -1;
  double early_stop_level = 0;
  // Before training, multiply the weights (parameters of rank >= 2) of the
  // submodule init_scale_module ("" = the whole model) by init_scale (the
  // smaller-init experiment).
  double init_scale = 1;
  std::string init_scale_module;
};

struct ParamTrack {
  std::string name;
  std::vector<int64_t> shape;
  int64_t numel = 0;
  double grad_norm_first = -1;  // -1: no gradient at step 0.
  double grad_norm_last = -1;
  double max_update_ratio = 0;
  bool received_grad = false;
};

// A layer whose units (rows of weight + bias) had exactly zero gradient at
// the first and the last sampled step (every 10th step from step 0).
struct DeadLayer {
  std::string layer;
  int64_t dead = 0;
  int64_t units = 0;
};

struct RunTrace {
  std::vector<double> losses;           // Loss at each step, before that step's update.
  std::vector<double> grad_norm_total;  // Global gradient L2 norm per update.
  std::vector<double> output_abs_max;   // Per step; only with track_output_range.
  double param_norm_initial = 0;        // Global L2 norm of the trainable parameters.
  double param_norm_final = 0;          // The same after the last update.
  // Norm of the gradient AVERAGED over the budget's last max(5, max_steps /
  // 10) updates, only with collect_stats; -1 when the run ended before that
  // window. A stochastic objective (a VAE's sampled latent, dropout) has
  // per-step gradients whose norms stay large at its minimum while their
  // mean vanishes: this is the stationarity measure, not grad_norm_total.
  double grad_window_mean_norm = -1;
  int grad_window_updates = 0;  // Updates averaged into it.
  // The first output tensor (the output, or a tuple's first tensor) of the
  // last recorded step, detached; only with collect_stats.
  torch::Tensor last_output;
  bool stopped_early = false;  // See RunOptions::early_stop_step.
  int updates = 0;             // Optimizer steps taken.
  bool converged = false;
  // The first failure, if any: an error (FORWARD/LOSS/BACKWARD_ERROR) or the
  // first non-finite tensor (OUTPUT/LOSS/GRAD/PARAM_NON_FINITE).
  v1::FindingCode failure = v1::FINDING_CODE_UNSPECIFIED;
  int failure_step = -1;
  std::string failure_tensor;  // Parameter or tensor name.
  std::string failure_message;
  std::string anomaly_message;  // Set when anomaly_step ran.
  std::vector<ParamTrack> params;
  std::vector<DeadLayer> dead_layers;
  std::vector<torch::Tensor> snapshot;  // See RunOptions::snapshot_after_updates.
  int snapshot_updates = -1;
  // The run drew from the default CPU generator (dropout, randn in forward):
  // two such runs at once would interleave their draws, so its experiments
  // run one after another.
  bool drew_random = false;
};

// Trains a fresh clone of `base` on `batch`. Reseeds the global generator
// first so that equal options give bitwise-equal runs. A LibTorch error in
// forward, loss, backward or the optimizer step ends the run with the
// matching failure code; anything else (a device fault in the bookkeeping)
// propagates to RunCheck's guard, which reports it as INTERNAL_ERROR.
RunTrace Train(const Model& base, const Batch& batch, const RunOptions& options);
// The same on a clone the caller made: runs on other threads take clones
// made on one thread, because cloning a TorchScript module registers a type
// in the compilation unit it shares with the original.
RunTrace Train(std::unique_ptr<Model> model, const Batch& batch, const RunOptions& options);

}  // namespace preflight::engine::internal
