// Computing the built-in losses (losses.h has their table) and checking,
// before training, that the model output and the targets fit the loss.
// Private to service/engine.
#pragma once

#include <string>
#include <vector>

#include <torch/script.h>

#include "absl/status/statusor.h"
#include "preflight/v1/report.pb.h"
#include "service/engine/model.h"

namespace preflight::engine::internal {

// A problem found while checking that the output fits the loss.
struct LossInputProblem {
  v1::FindingCode code;  // DATA_INVALID or LOSS_SHAPE_BROADCAST.
  std::string message;
};

// Static checks of (output, target) against a built-in loss: shapes, dtypes,
// class-index and probability ranges. Empty when everything fits.
std::vector<LossInputProblem> CheckLossInputs(const std::string& loss, const torch::Tensor& output,
                                              const torch::Tensor& targets);

// Computes the loss: the model's own loss when `loss` is kModelLoss, else
// the named built-in. Errors carry the trimmed LibTorch message; a
// non-scalar result is an error.
absl::StatusOr<torch::Tensor> ComputeLoss(Model& model, const std::string& loss,
                                          const torch::jit::IValue& output,
                                          const torch::Tensor& targets);

}  // namespace preflight::engine::internal
