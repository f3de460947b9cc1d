// Mixed-precision overflow: the rule that tells "this model overflows in
// bf16/fp16" from "this model produces NaN anyway". Torch-free, so the rule
// is unit-tested with recorded values; the engine feeds it two runs of the
// same seed: the configured reduced-precision run and an fp32 replay of the
// same steps (checks/numerics.cc).
//
//   PrecisionRuns runs{Precision::kFp16, reduced.failure, reduced.failure_step,
//                      fp32.failure, fp32.failure_step, fp32_peak_output_abs};
//   if (auto o = JudgeMixedPrecision(runs)) AddFinding(..., MIXED_PRECISION_OVERFLOW,
//   ...o->message);
#pragma once

#include <optional>
#include <string>

#include "preflight/v1/report.pb.h"
#include "service/engine/config.h"

namespace preflight::engine {

// The largest finite value of a compute precision (fp16: 65504; bf16 and
// fp32 share fp32's exponent range).
double MaxFinite(Precision p);

struct PrecisionRuns {
  Precision precision = Precision::kFp32;  // Of the reduced run.
  // The reduced run's first failure and its step (FINDING_CODE_UNSPECIFIED:
  // none).
  v1::FindingCode reduced_failure = v1::FINDING_CODE_UNSPECIFIED;
  int reduced_step = -1;
  // The fp32 replay of steps [0, reduced_step]: its first failure, if any.
  v1::FindingCode fp32_failure = v1::FINDING_CODE_UNSPECIFIED;
  int fp32_step = -1;
  int fp32_steps_run = 0;
  // Largest |output| the fp32 replay saw up to reduced_step; < 0: unknown.
  double fp32_peak_output_abs = -1;
};

struct PrecisionOverflow {
  std::string message;
  std::string hint;
};

// True for the codes that name a first non-finite tensor.
bool IsNonFiniteCode(v1::FindingCode code);

// An overflow when the reduced run hit a non-finite value at step s and the
// fp32 replay ran through step s finite; nullopt otherwise (no failure, a
// failure that is not numeric, fp32 failing too, or an fp32 replay that
// stopped before s, which proves nothing).
std::optional<PrecisionOverflow> JudgeMixedPrecision(const PrecisionRuns& runs);

}  // namespace preflight::engine
