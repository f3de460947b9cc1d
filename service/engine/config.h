// Check configuration: the one home of its defaults, ranges and parsers.
//
// The configuration travels as v1::CheckConfig (it is recorded verbatim in
// every report). Clients parse syntax only (a number is a number) and leave
// unset what the user did not give; then, wherever the check is accepted
// (the CLI, the server), exactly this runs:
//
//   v1::CheckConfig config = ...;
//   ApplyDefaults(&config);
//   if (absl::Status s = ValidateConfig(config); !s.ok()) ... INVALID_ARGUMENT
//
// The engine runs ValidateConfig again on what it is given (RunCheck turns a
// bad config into an ERROR report, CONFIG_INVALID), so no layer can hand it
// a config it does not understand.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "preflight/v1/report.pb.h"

namespace preflight::engine {

inline constexpr char kModelLoss[] = "model.loss";
inline constexpr char kDefaultOptimizer[] = "adam";
inline constexpr double kDefaultLr = 1e-3;
inline constexpr int kDefaultMaxSteps = 500;
// Overfit target: 1% of the initial loss. The seeds' recipe asks for "~0";
// relative to the starting loss this holds for any loss scale (CE starts at
// ln C, MSE at the target variance) and every healthy zoo model reaches it.
inline constexpr double kDefaultTargetRatio = 0.01;
inline constexpr int kDefaultDeterminismSteps = 20;
inline constexpr double kDefaultTimeoutSeconds = 300;
inline constexpr int kDefaultIntraOpThreads = 1;
inline constexpr char kDefaultDtype[] = "fp32";
// Upper bounds that keep one check bounded in time and memory.
inline constexpr int kMaxSteps = 100000;
inline constexpr double kMaxLr = 1e3;
inline constexpr int kMaxIntraOpThreads = 1024;
// Experiments training at once (CheckConfig.parallel_experiments); each is a
// copy of the model, its optimizer state and its activations in memory.
inline constexpr int kMaxParallelExperiments = 16;
inline constexpr double kMaxTimeoutSeconds = 86400;

// Fills unset fields with the documented defaults. Loss stays empty when
// unset: the engine then uses the model's own `loss` method if present, else
// the default built-in loss (losses.h).
void ApplyDefaults(v1::CheckConfig* config);

// INVALID_ARGUMENT whose message starts with the field name ("lr: ...") for
// anything unset, out of range or unknown. Expects ApplyDefaults to have run.
absl::Status ValidateConfig(const v1::CheckConfig& config);

// The optimizers a check can train with.
enum class Optimizer { kAdam, kAdamW, kSgd };
// INVALID_ARGUMENT ("optimizer: ...") for an unknown name.
absl::StatusOr<Optimizer> ParseOptimizer(const std::string& name);

// Compute precision of forward and loss (--dtype). Reduced precision runs
// under LibTorch's autocast on the check's device: parameters, gradients and
// the optimizer stay fp32, as in mixed-precision training. Meant for CUDA,
// where jobs train that way; CPU autocast runs it too (slower), which keeps
// the overflow rule testable on machines without a GPU.
enum class Precision { kFp32, kBf16, kFp16 };
// INVALID_ARGUMENT ("dtype: ...") for anything but fp32, bf16 or fp16.
absl::StatusOr<Precision> ParsePrecision(const std::string& dtype);
// "fp32", "bf16", "fp16".
const char* PrecisionName(Precision p);

// A parsed --device value: auto | cpu | cuda | cuda:N.
struct DeviceSpec {
  enum Kind { kAuto, kCpu, kCuda };
  Kind kind = kAuto;
  int index = 0;  // CUDA device index; 0 for "cuda".
  // True when the check may initialise CUDA (auto on a GPU node, or cuda).
  bool MayUseCuda() const { return kind != kCpu; }
};
// INVALID_ARGUMENT ("device: ...") for anything else.
absl::StatusOr<DeviceSpec> ParseDevice(const std::string& device);

// The absolute |loss| the overfit run must reach: target_loss when set,
// else target_ratio x |initial loss|, where an initial loss inflated above
// the chance-level loss (ln C for cross-entropy, ln 2 for BCE; 0: unknown)
// is replaced by the chance level, so that a mis-scaled start does not make
// the target easy. One rule for the main run and for every diagnosis
// experiment (each against its own initial loss).
double OverfitTarget(const v1::CheckConfig& config, double initial_loss, double chance_loss = 0);

}  // namespace preflight::engine
