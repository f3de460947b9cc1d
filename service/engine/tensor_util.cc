#include "service/engine/tensor_util.h"

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace preflight::engine::internal {

std::string ShapeString(const torch::Tensor& t) {
  return absl::StrCat("[", absl::StrJoin(t.sizes(), ", "), "]");
}

std::string Describe(const torch::Tensor& t) {
  return absl::StrCat(ShapeString(t), " ", std::string(c10::toString(t.scalar_type())));
}

int64_t CountNonFinite(const torch::Tensor& t) {
  if (!t.defined() || !(t.is_floating_point() || t.is_complex())) return 0;
  return (~torch::isfinite(t)).sum().item<int64_t>();
}

}  // namespace preflight::engine::internal
