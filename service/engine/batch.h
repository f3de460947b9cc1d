// The sample batch: decoding a torch.save'd file into forward()'s positional
// inputs and the targets. Private to service/engine.
#pragma once

#include <string>
#include <vector>

#include <torch/script.h>

#include "absl/status/statusor.h"

namespace preflight::engine::internal {

struct Batch {
  std::vector<torch::jit::IValue> inputs;  // Positional arguments of forward().
  std::vector<std::string> input_names;    // "inputs" or "inputs[i]", for messages.
  torch::Tensor targets;
  int64_t batch_size = 0;
};

// Decodes a torch.save'd dict {"inputs": ..., "targets": ...} or 2-tuple
// (inputs, targets); inputs is a tensor or a tuple/list of tensors, every
// tensor dense, with the same first (batch) dimension and at most
// kMaxTensorElements elements. INVALID_ARGUMENT naming what is wrong.
absl::StatusOr<Batch> LoadBatch(const std::string& bytes, const torch::Device& device);

}  // namespace preflight::engine::internal
