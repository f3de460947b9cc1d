#include "service/engine/model.h"

namespace preflight::engine::internal {

std::vector<NamedTensor> TrainableParams(const Model& model) {
  std::vector<NamedTensor> out;
  for (auto& p : model.Parameters()) {
    if (p.tensor.requires_grad()) out.push_back(std::move(p));
  }
  return out;
}

}  // namespace preflight::engine::internal
