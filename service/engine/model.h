// The model as the checks see it, whatever file format it came in.
//
// Every check, the training loop, the diagnosis experiments and the
// determinism replay talk to this interface only; a format is one folder
// behind it (torchscript/, exported/). Private to service/engine: it speaks
// LibTorch types.
//
//   absl::StatusOr<std::unique_ptr<Model>> m = LoadModel(bytes, device);  // model_loader.h
//   std::unique_ptr<Model> run = (*m)->Clone();   // initial weights, leaf params
//   run->SetTraining(true);
//   absl::StatusOr<torch::jit::IValue> out = run->Forward(batch.inputs);
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <torch/script.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "preflight/v1/report.pb.h"
#include "service/engine/activation_policy.h"

namespace preflight::engine::internal {

struct NamedTensor {
  std::string name;  // Qualified, e.g. "encoder.0.weight".
  torch::Tensor tensor;
};

// What a format can do beyond the common contract.
struct ModelCapabilities {
  // The model defines its own loss(output, targets) (overrides --loss).
  bool own_loss = false;
};

class Model {
 public:
  virtual ~Model() = default;

  virtual v1::ArtifactFormat format() const = 0;
  virtual ModelCapabilities capabilities() const = 0;

  // A deep copy at this model's current weights whose parameters are leaf
  // tensors with the same requires_grad flags. The loaded model is never
  // trained: every run clones it, so every run starts from the initial
  // weights.
  virtual std::unique_ptr<Model> Clone() const = 0;

  // Every parameter, trainable or frozen, in registration order (input side
  // first for ordinary models).
  virtual std::vector<NamedTensor> Parameters() const = 0;

  // Every buffer (BatchNorm running statistics, constants registered with
  // register_buffer), in registration order.
  virtual std::vector<NamedTensor> Buffers() const = 0;

  // Checks the decoded batch against what the model declares and keeps what
  // its runs need from it; called once, before any Clone (clones inherit
  // it). INVALID_ARGUMENT (DATA_INVALID) naming the input with the expected
  // and the actual shape. A torch.export program declares its input shapes
  // (static, or dynamic within range_constraints) and an own-loss program
  // takes the targets as its last input; TorchScript declares nothing.
  virtual absl::Status AcceptBatch(const std::vector<torch::jit::IValue>& inputs,
                                   const std::vector<std::string>& input_names,
                                   const torch::Tensor& targets) {
    return absl::OkStatus();
  }

  // Train mode (dropout on, batch statistics) or eval mode.
  virtual void SetTraining(bool training) = 0;

  // Runs forward on the positional inputs. INVALID_ARGUMENT with the
  // trimmed LibTorch message when the model raises.
  virtual absl::StatusOr<torch::jit::IValue> Forward(
      const std::vector<torch::jit::IValue>& inputs) = 0;

  // The model's own loss; only when capabilities().own_loss. Errors as for
  // Forward.
  virtual absl::StatusOr<torch::Tensor> OwnLoss(const torch::jit::IValue& output,
                                                const torch::Tensor& targets) = 0;

  // Runs forward once (no gradient) and returns, in call order, the output
  // RMS of every submodule call (at most kMaxRecordedModuleCalls), so a
  // check can name the first layer whose output blows up. A format that
  // cannot see its submodules keeps this default: UNIMPLEMENTED, and the
  // checks report the layer as unknown. Does not change the model's
  // weights or later Forward calls.
  virtual absl::StatusOr<std::vector<ModuleCall>> ForwardRecordingModules(
      const std::vector<torch::jit::IValue>& inputs) {
    (void)inputs;
    return absl::UnimplementedError("this model format does not expose its submodules' outputs");
  }
};

// The trainable parameters (requires_grad), in registration order.
std::vector<NamedTensor> TrainableParams(const Model& model);

}  // namespace preflight::engine::internal
