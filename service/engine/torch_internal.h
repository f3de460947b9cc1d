// Engine internals that speak LibTorch. Private to service/engine: nothing
// outside the engine's own .cc files and tests may include this header.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <torch/script.h>

#include "absl/status/statusor.h"
#include "preflight/v1/report.pb.h"

namespace preflight::engine::internal {

// The decoded sample batch.
struct Batch {
  std::vector<torch::jit::IValue> inputs;  // Positional arguments of forward().
  std::vector<std::string> input_names;    // "inputs" or "inputs[i]", for messages.
  torch::Tensor targets;
  int64_t batch_size = 0;
};

// Loads a TorchScript archive. INVALID_ARGUMENT with the reason otherwise.
absl::StatusOr<torch::jit::Module> LoadModel(const std::string& bytes,
                                             const torch::Device& device);

// Decodes a torch.save'd batch. INVALID_ARGUMENT naming what is wrong.
absl::StatusOr<Batch> LoadBatch(const std::string& bytes, const torch::Device& device);

// Number of NaN/Inf elements in a floating tensor (0 for integer tensors).
int64_t CountNonFinite(const torch::Tensor& t);

// A problem found while checking that the output fits the loss.
struct LossInputProblem {
  preflight::v1::FindingCode code;  // DATA_INVALID or LOSS_SHAPE_BROADCAST.
  std::string message;
};

// Static checks of (output, target) against a built-in loss: shapes, dtypes,
// class-index and probability ranges. Empty when everything fits.
std::vector<LossInputProblem> CheckLossInputs(const std::string& loss,
                                              const torch::Tensor& output,
                                              const torch::Tensor& targets);

// Computes the loss: the model's own `loss` method when `loss` is
// "model.loss", else the named built-in. Errors carry the trimmed LibTorch
// message; a non-scalar result is an error.
absl::StatusOr<torch::Tensor> ComputeLoss(torch::jit::Module& module, const std::string& loss,
                                          const torch::jit::IValue& output,
                                          const torch::Tensor& targets);

// The trainable parameters (requires_grad) with their qualified names, in
// registration order (input side first for ordinary models).
struct NamedParam {
  std::string name;
  torch::Tensor tensor;
};
std::vector<NamedParam> TrainableParams(const torch::jit::Module& module);

// Options of one training run on the fixed batch.
struct RunOptions {
  std::string loss;
  std::string optimizer = "adam";
  double lr = 1e-3;
  double weight_decay = 0;
  double momentum = 0;
  bool negate_loss = false;  // Train on -loss (sign-error experiment).
  bool train_mode = true;
  int max_steps = 500;
  double target = 0;         // Stop once |loss| <= target.
  uint64_t seed = 0;
  bool collect_stats = false;  // Per-parameter norms, dead units, update ratios.
  int snapshot_after_updates = -1;  // Copy parameters after this many updates.
  int anomaly_step = -1;       // Run this step's backward under anomaly mode.
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
  std::vector<double> losses;  // Loss at each step, before that step's update.
  std::vector<double> grad_norm_total;  // Global gradient L2 norm per update.
  int updates = 0;             // Optimizer steps taken.
  bool converged = false;
  // The first failure, if any: an error (FORWARD/LOSS/BACKWARD_ERROR) or the
  // first non-finite tensor (OUTPUT/LOSS/GRAD/PARAM_NON_FINITE).
  preflight::v1::FindingCode failure = preflight::v1::FINDING_CODE_UNSPECIFIED;
  int failure_step = -1;
  std::string failure_tensor;   // Parameter or tensor name.
  std::string failure_message;
  std::string anomaly_message;  // Set when anomaly_step ran.
  std::vector<ParamTrack> params;
  std::vector<DeadLayer> dead_layers;
  std::vector<torch::Tensor> snapshot;  // See RunOptions::snapshot_after_updates.
  int snapshot_updates = -1;
};

// A deep copy of `base` whose parameters are leaf tensors with the same
// requires_grad flags: every run starts from the same initial weights.
torch::jit::Module FreshCopy(const torch::jit::Module& base);

// Trains a fresh clone of `base` on `batch`. Reseeds the global generator
// first so that equal options give bitwise-equal runs.
RunTrace Train(const torch::jit::Module& base, const Batch& batch, const RunOptions& options);

}  // namespace preflight::engine::internal
