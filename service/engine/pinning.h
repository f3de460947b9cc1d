// Determinism pinning and device resolution, the first thing a check does.
// Private to service/engine.
#pragma once

#include <torch/types.h>

#include "absl/status/statusor.h"
#include "preflight/v1/report.pb.h"

namespace preflight::engine::internal {

// Fixes every source of run-to-run variation the engine controls (seeds,
// thread counts, deterministic algorithms, cuDNN, op-by-op TorchScript,
// CUBLAS_WORKSPACE_CONFIG before CUDA starts), records it in `env`, and
// resolves config.device to a torch device. FAILED_PRECONDITION when the
// requested CUDA device does not exist here (reported as
// DEVICE_UNAVAILABLE). Process-global: see engine.h's process model.
absl::StatusOr<torch::Device> PinDeterminism(const v1::CheckConfig& config, v1::Environment* env);

}  // namespace preflight::engine::internal
