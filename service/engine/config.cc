#include "service/engine/config.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace preflight::engine {
namespace {

constexpr std::array<const char*, 7> kBuiltinLosses = {
    "cross_entropy", "nll", "mse", "l1", "smooth_l1", "bce_with_logits", "bce"};
constexpr std::array<const char*, 3> kOptimizers = {"adam", "adamw", "sgd"};

bool ValidDevice(const std::string& d) {
  if (d == "auto" || d == "cpu" || d == "cuda") return true;
  if (absl::StartsWith(d, "cuda:")) {
    int index = 0;
    return absl::SimpleAtoi(d.substr(5), &index) && index >= 0 && index < 1024;
  }
  return false;
}

}  // namespace

bool IsBuiltinLoss(const std::string& name) {
  for (const char* l : kBuiltinLosses) {
    if (name == l) return true;
  }
  return false;
}

void ApplyDefaults(v1::CheckConfig* c) {
  if (c->optimizer().empty()) c->set_optimizer(kDefaultOptimizer);
  if (c->lr() == 0) c->set_lr(kDefaultLr);
  if (c->max_steps() == 0) c->set_max_steps(kDefaultMaxSteps);
  if (c->device().empty()) c->set_device("auto");
  if (c->intra_op_threads() == 0) c->set_intra_op_threads(1);
  if (c->target_ratio() == 0) c->set_target_ratio(kDefaultTargetRatio);
  if (c->timeout_seconds() == 0) c->set_timeout_seconds(kDefaultTimeoutSeconds);
  if (!c->has_train_mode()) c->set_train_mode(true);
  if (!c->has_diagnose()) c->set_diagnose(true);
  if (!c->has_determinism_steps()) {
    c->set_determinism_steps(std::min(kDefaultDeterminismSteps, c->max_steps()));
  }
}

absl::Status ValidateConfig(const v1::CheckConfig& c) {
  if (!c.loss().empty() && c.loss() != kModelLoss && !IsBuiltinLoss(c.loss())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "loss: unknown loss '", c.loss(),
        "'; expected one of cross_entropy, nll, mse, l1, smooth_l1, bce_with_logits, bce"));
  }
  bool known_opt = false;
  for (const char* o : kOptimizers) known_opt |= c.optimizer() == o;
  if (!known_opt) {
    return absl::InvalidArgumentError(absl::StrCat(
        "optimizer: unknown optimizer '", c.optimizer(), "'; expected adam, adamw or sgd"));
  }
  if (!std::isfinite(c.lr()) || c.lr() <= 0 || c.lr() > 1e3) {
    return absl::InvalidArgumentError(
        absl::StrCat("lr: must be a finite number in (0, 1000], got ", c.lr()));
  }
  if (!std::isfinite(c.weight_decay()) || c.weight_decay() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight_decay: must be >= 0, got ", c.weight_decay()));
  }
  if (!std::isfinite(c.momentum()) || c.momentum() < 0 || c.momentum() >= 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("momentum: must be in [0, 1), got ", c.momentum()));
  }
  if (c.momentum() != 0 && c.optimizer() != "sgd") {
    return absl::InvalidArgumentError("momentum: only applies to optimizer sgd");
  }
  if (c.max_steps() < 1 || c.max_steps() > kMaxSteps) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_steps: must be in [1, ", kMaxSteps, "], got ", c.max_steps()));
  }
  if (!ValidDevice(c.device())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "device: expected auto, cpu, cuda or cuda:N, got '", c.device(), "'"));
  }
  if (c.intra_op_threads() < 1 || c.intra_op_threads() > 1024) {
    return absl::InvalidArgumentError(absl::StrCat(
        "intra_op_threads: must be in [1, 1024], got ", c.intra_op_threads()));
  }
  if (!std::isfinite(c.target_ratio()) || c.target_ratio() <= 0 || c.target_ratio() >= 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("target_ratio: must be in (0, 1), got ", c.target_ratio()));
  }
  if (!std::isfinite(c.target_loss()) || c.target_loss() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("target_loss: must be >= 0, got ", c.target_loss()));
  }
  if (c.determinism_steps() < 0 || c.determinism_steps() > c.max_steps()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "determinism_steps: must be in [0, max_steps=", c.max_steps(), "], got ",
        c.determinism_steps()));
  }
  if (!std::isfinite(c.timeout_seconds()) || c.timeout_seconds() <= 0 ||
      c.timeout_seconds() > 86400) {
    return absl::InvalidArgumentError(absl::StrCat(
        "timeout_seconds: must be in (0, 86400], got ", c.timeout_seconds()));
  }
  return absl::OkStatus();
}

}  // namespace preflight::engine
