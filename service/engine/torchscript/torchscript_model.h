// TorchScript (torch.jit.save archives) behind the Model interface.
#pragma once

#include <memory>
#include <string>

#include "service/engine/model.h"

namespace preflight::engine::internal {

// Loads a TorchScript archive. INVALID_ARGUMENT with the reason otherwise.
absl::StatusOr<std::unique_ptr<Model>> LoadTorchScript(const std::string& bytes,
                                                       const torch::Device& device);

}  // namespace preflight::engine::internal
