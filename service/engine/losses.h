// The built-in losses: one table of names and the facts every layer needs
// about them (what targets they take, what a model outputs for them, what an
// untrained model's loss should be). No LibTorch: config validation and the
// CLI's help read the same table the engine computes with (loss_fn.h).
//
//   const LossInfo* info = FindLoss("bce_with_logits");
//   if (info == nullptr) ... unknown
//   if (info->family == LossFamily::kBinary) ...
#pragma once

#include <string>
#include <vector>

namespace preflight::engine {

enum class LossFamily {
  kClassification,  // Output [N, C, ...] logits/log-probs; class indices (or probabilities).
  kBinary,          // Element-wise against targets in [0, 1].
  kRegression,      // Element-wise against real-valued targets.
};

struct LossInfo {
  const char* name;
  LossFamily family;
  // What the loss expects the model to output, in words, for messages:
  // "raw logits", "log-probabilities", "probabilities", "values".
  const char* expects_output;
  // The loss applies softmax/sigmoid itself: outputs already in [0, 1]
  // mean the model applies it too.
  bool takes_logits;
};

inline constexpr char kDefaultLoss[] = "cross_entropy";

// nullptr for an unknown name (kModelLoss included: it is not built in).
const LossInfo* FindLoss(const std::string& name);

// Every built-in loss, in the order the help text lists them.
const std::vector<LossInfo>& BuiltinLosses();

// "cross_entropy, nll, mse, ...", for help texts and error messages.
std::string BuiltinLossNames();

}  // namespace preflight::engine
