// Loading a model artifact of any supported format. Private to
// service/engine.
//
// A new format is a folder beside torchscript/ implementing Model, plus one
// case in DetectFormat and LoadModel (model_loader.cc).
#pragma once

#include <memory>
#include <string>

#include "service/engine/model.h"

namespace preflight::engine::internal {

// Detects the format from the content (never from a file name) and loads
// the model on `device`. `declared` is the format the caller says it sent
// (ARTIFACT_FORMAT_UNSPECIFIED: detect). INVALID_ARGUMENT with the reason
// for anything that is not a loadable model, or not of the declared format
// (ARTIFACT_INVALID); UNIMPLEMENTED for a well-formed model using what the
// engine refuses to run (ARTIFACT_UNSUPPORTED: a custom or denied operator,
// an unsupported construct).
absl::StatusOr<std::unique_ptr<Model>> LoadModel(
    const std::string& bytes, const torch::Device& device,
    v1::ArtifactFormat declared = v1::ARTIFACT_FORMAT_UNSPECIFIED);

}  // namespace preflight::engine::internal
