// torch.export programs (torch.export.save archives, ".pt2") behind the
// Model interface: a fail-closed interpreter over LibTorch's dispatcher.
//
// At load, every graph node's operator is resolved once through
// c10::Dispatcher and its arguments bound (value slots or constants); a
// forward pushes each node's arguments onto a stack and calls the operator
// handle, so autograd records the graph as eager PyTorch would. Parameters
// are leaf tensors with the archive's requires_grad flags; buffers are
// updated in place by the ops that mutate them (BatchNorm in training IR)
// and from the signature's buffer mutations (functional IR) after each
// forward.
//
// Refused at load, as UNIMPLEMENTED (ARTIFACT_UNSUPPORTED) naming the op or
// field: operators outside the `aten` namespace (custom ops), the ops on the
// deny-list (files, stdout, process-global state: kDeniedOps in the .cc),
// higher-order ops other than wrap_with_set_grad_enabled, argument kinds and
// signature entries the interpreter does not run (custom objects, tokens,
// parameter or user-input mutations, joint graphs), schema versions outside
// [kMinSchema, kMaxSchema]. A malformed archive is INVALID_ARGUMENT.
//
// Train/eval: training IR bakes module.training into op arguments. Eval mode
// (SetTraining(false)) sets exactly these to false: `train` of
// aten::dropout/feature_dropout/alpha_dropout/feature_alpha_dropout/
// native_dropout, `training` of aten::batch_norm/native_batch_norm/
// _native_batch_norm_legit(_functional)/cudnn_batch_norm/miopen_batch_norm/
// rrelu(_with_noise); and skips the num_batches_tracked increments
// BatchNorm emits as separate nodes. Train mode runs the flags as exported
// (a program exported in eval mode stays in eval mode).
//
// Custom loss: a program whose forward takes (inputs..., targets) and
// returns (output, loss), loss a 0-d tensor, is an own-loss model: Forward
// runs it with the targets given to AcceptBatch and returns `output`, and
// OwnLoss returns that run's loss. A two-output program that takes exactly
// one input more than the batch holds is read the same way whatever the
// loss's shape, so a loss that is not 0-d is a LOSS_ERROR (as TorchScript's
// loss() method's), not a batch that does not fit.
#pragma once

#include <memory>
#include <string>

#include "service/engine/model.h"

namespace preflight::engine::internal {

// Loads a torch.export.save archive onto `device`. INVALID_ARGUMENT
// (malformed) or UNIMPLEMENTED (refused) naming what.
absl::StatusOr<std::unique_ptr<Model>> LoadExportedProgram(const std::string& bytes,
                                                           const torch::Device& device);

}  // namespace preflight::engine::internal
