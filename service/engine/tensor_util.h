// Small tensor helpers shared by the engine's torch files. Private to
// service/engine.
#pragma once

#include <cstdint>
#include <string>

#include <torch/types.h>

namespace preflight::engine::internal {

// "[4, 3]".
std::string ShapeString(const torch::Tensor& t);
// "[4, 3] Float".
std::string Describe(const torch::Tensor& t);
// Number of NaN/Inf elements in a floating tensor (0 for integer tensors).
int64_t CountNonFinite(const torch::Tensor& t);

}  // namespace preflight::engine::internal
