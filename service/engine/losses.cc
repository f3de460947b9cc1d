#include "service/engine/losses.h"

#include "absl/strings/str_join.h"

namespace preflight::engine {

const std::vector<LossInfo>& BuiltinLosses() {
  static const auto* const kLosses = new std::vector<LossInfo>{
      {"cross_entropy", LossFamily::kClassification, "raw logits", true},
      {"nll", LossFamily::kClassification, "log-probabilities", false},
      {"mse", LossFamily::kRegression, "values", false},
      {"l1", LossFamily::kRegression, "values", false},
      {"smooth_l1", LossFamily::kRegression, "values", false},
      {"bce_with_logits", LossFamily::kBinary, "raw logits", true},
      {"bce", LossFamily::kBinary, "probabilities", false},
  };
  return *kLosses;
}

const LossInfo* FindLoss(const std::string& name) {
  for (const LossInfo& l : BuiltinLosses()) {
    if (name == l.name) return &l;
  }
  return nullptr;
}

std::string BuiltinLossNames() {
  return absl::StrJoin(BuiltinLosses(), ", ",
                       [](std::string* out, const LossInfo& l) { out->append(l.name); });
}

}  // namespace preflight::engine
