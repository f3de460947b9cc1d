#include "service/engine/config.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "service/engine/losses.h"

namespace preflight::engine {
namespace {

constexpr int kMaxCudaIndex = 1024;

absl::Status Invalid(const char* field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

bool InRange(double v, double lo_exclusive, double hi_inclusive) {
  return std::isfinite(v) && v > lo_exclusive && v <= hi_inclusive;
}

}  // namespace

absl::StatusOr<Optimizer> ParseOptimizer(const std::string& name) {
  if (name == "adam") return Optimizer::kAdam;
  if (name == "adamw") return Optimizer::kAdamW;
  if (name == "sgd") return Optimizer::kSgd;
  return Invalid("optimizer",
                 absl::StrCat("unknown optimizer '", name, "'; expected adam, adamw or sgd"));
}

absl::StatusOr<Precision> ParsePrecision(const std::string& dtype) {
  if (dtype == "fp32") return Precision::kFp32;
  if (dtype == "bf16") return Precision::kBf16;
  if (dtype == "fp16") return Precision::kFp16;
  return Invalid("dtype", absl::StrCat("unknown dtype '", dtype, "'; expected fp32, bf16 or fp16"));
}

const char* PrecisionName(Precision p) {
  switch (p) {
    case Precision::kBf16: return "bf16";
    case Precision::kFp16: return "fp16";
    case Precision::kFp32: break;
  }
  return "fp32";
}

absl::StatusOr<DeviceSpec> ParseDevice(const std::string& d) {
  DeviceSpec spec;
  if (d == "auto") return spec;
  if (d == "cpu") {
    spec.kind = DeviceSpec::kCpu;
    return spec;
  }
  spec.kind = DeviceSpec::kCuda;
  if (d == "cuda") return spec;
  if (absl::StartsWith(d, "cuda:") && absl::SimpleAtoi(d.substr(5), &spec.index) &&
      spec.index >= 0 && spec.index < kMaxCudaIndex) {
    return spec;
  }
  return Invalid("device", absl::StrCat("expected auto, cpu, cuda or cuda:N, got '", d, "'"));
}

double OverfitTarget(const v1::CheckConfig& c, double initial_loss, double chance_loss) {
  if (c.target_loss() > 0) return c.target_loss();
  double scale = std::fabs(initial_loss);
  if (chance_loss > 0 && scale > chance_loss) scale = chance_loss;
  return c.target_ratio() * scale;
}

void ApplyDefaults(v1::CheckConfig* c) {
  if (c->optimizer().empty()) c->set_optimizer(kDefaultOptimizer);
  if (!c->has_lr()) c->set_lr(kDefaultLr);
  if (!c->has_max_steps()) c->set_max_steps(kDefaultMaxSteps);
  if (c->device().empty()) c->set_device("auto");
  if (!c->has_intra_op_threads()) c->set_intra_op_threads(kDefaultIntraOpThreads);
  if (!c->has_target_ratio()) c->set_target_ratio(kDefaultTargetRatio);
  if (!c->has_timeout_seconds()) c->set_timeout_seconds(kDefaultTimeoutSeconds);
  if (!c->has_train_mode()) c->set_train_mode(true);
  if (c->dtype().empty()) c->set_dtype(kDefaultDtype);
  if (!c->has_diagnose()) c->set_diagnose(true);
  if (!c->has_determinism_steps()) {
    c->set_determinism_steps(std::clamp(c->max_steps(), 0, kDefaultDeterminismSteps));
  }
}

absl::Status ValidateConfig(const v1::CheckConfig& c) {
  if (!c.loss().empty() && c.loss() != kModelLoss && FindLoss(c.loss()) == nullptr) {
    return Invalid("loss", absl::StrCat("unknown loss '", c.loss(), "'; expected one of ",
                                        BuiltinLossNames()));
  }
  auto optimizer = ParseOptimizer(c.optimizer());
  if (!optimizer.ok()) return optimizer.status();
  if (!InRange(c.lr(), 0, kMaxLr)) {
    return Invalid("lr",
                   absl::StrCat("must be a finite number in (0, ", kMaxLr, "], got ", c.lr()));
  }
  if (!std::isfinite(c.weight_decay()) || c.weight_decay() < 0) {
    return Invalid("weight_decay", absl::StrCat("must be >= 0, got ", c.weight_decay()));
  }
  if (!std::isfinite(c.momentum()) || c.momentum() < 0 || c.momentum() >= 1) {
    return Invalid("momentum", absl::StrCat("must be in [0, 1), got ", c.momentum()));
  }
  if (c.momentum() != 0 && *optimizer != Optimizer::kSgd) {
    return Invalid("momentum", "only applies to optimizer sgd");
  }
  if (c.max_steps() < 1 || c.max_steps() > kMaxSteps) {
    return Invalid("max_steps",
                   absl::StrCat("must be in [1, ", kMaxSteps, "], got ", c.max_steps()));
  }
  if (auto device = ParseDevice(c.device()); !device.ok()) return device.status();
  if (auto precision = ParsePrecision(c.dtype()); !precision.ok()) return precision.status();
  if (c.intra_op_threads() < 1 || c.intra_op_threads() > kMaxIntraOpThreads) {
    return Invalid("intra_op_threads", absl::StrCat("must be in [1, ", kMaxIntraOpThreads,
                                                    "], got ", c.intra_op_threads()));
  }
  if (c.parallel_experiments() < 0 || c.parallel_experiments() > kMaxParallelExperiments) {
    return Invalid(
        "parallel_experiments",
        absl::StrCat("must be in [0, ", kMaxParallelExperiments,
                     "] (0: as many as the job's CPUs allow), got ", c.parallel_experiments()));
  }
  if (!InRange(c.target_ratio(), 0, 1) || c.target_ratio() == 1) {
    return Invalid("target_ratio", absl::StrCat("must be in (0, 1), got ", c.target_ratio()));
  }
  if (!std::isfinite(c.target_loss()) || c.target_loss() < 0) {
    return Invalid("target_loss", absl::StrCat("must be >= 0, got ", c.target_loss()));
  }
  if (c.determinism_steps() < 0 || c.determinism_steps() > c.max_steps()) {
    return Invalid("determinism_steps", absl::StrCat("must be in [0, max_steps=", c.max_steps(),
                                                     "], got ", c.determinism_steps()));
  }
  if (!InRange(c.timeout_seconds(), 0, kMaxTimeoutSeconds)) {
    return Invalid("timeout_seconds", absl::StrCat("must be in (0, ", kMaxTimeoutSeconds, "], got ",
                                                   c.timeout_seconds()));
  }
  if (c.model_format() != v1::ARTIFACT_FORMAT_UNSPECIFIED &&
      !v1::ArtifactFormat_IsValid(c.model_format())) {
    return Invalid("model_format", absl::StrCat("unknown format ", c.model_format()));
  }
  return absl::OkStatus();
}

}  // namespace preflight::engine
