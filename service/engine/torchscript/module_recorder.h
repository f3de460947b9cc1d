// Per-submodule outputs of a TorchScript module, for naming the first layer
// whose output blows up (checks/activations.cc through
// Model::ForwardRecordingModules).
//
// LibTorch's torch::jit::Module has no forward hooks that can be added after
// loading, so a copy of the module is instrumented instead: after every call
// site of a submodule's forward() in every method graph, a side-effecting
// operator records the RMS of the call's output together with the callee
// object, which maps back to its qualified name. This sees calls inside
// loops (a recurrence) once per iteration, and names shared-type modules
// exactly (the callee object, not its type, identifies it).
//
//   absl::StatusOr<std::vector<ModuleCall>> calls = RecordModuleOutputs(module, inputs);
#pragma once

#include <vector>

#include <torch/script.h>

#include "absl/status/statusor.h"
#include "service/engine/activation_policy.h"

namespace preflight::engine::internal {

// Runs forward once, without gradient, on an instrumented deep copy of
// `module` (in its current train/eval mode); `module` itself is not changed.
// The calls come in call order, at most kMaxRecordedModuleCalls. Errors:
// INVALID_ARGUMENT with the trimmed LibTorch message when forward raises.
absl::StatusOr<std::vector<ModuleCall>> RecordModuleOutputs(
    const torch::jit::Module& module, const std::vector<torch::jit::IValue>& inputs);

}  // namespace preflight::engine::internal
