#include "service/engine/precision_policy.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace preflight::engine {

double MaxFinite(Precision p) {
  // IEEE half: (2 - 2^-10) * 2^15. bf16 keeps fp32's 8 exponent bits.
  if (p == Precision::kFp16) return 65504.0;
  if (p == Precision::kBf16) return 3.3895313892515355e38;
  return 3.4028234663852886e38;
}

bool IsNonFiniteCode(v1::FindingCode code) {
  return code == v1::OUTPUT_NON_FINITE || code == v1::LOSS_NON_FINITE ||
         code == v1::GRAD_NON_FINITE || code == v1::PARAM_NON_FINITE;
}

std::optional<PrecisionOverflow> JudgeMixedPrecision(const PrecisionRuns& r) {
  if (r.precision == Precision::kFp32) return std::nullopt;
  if (!IsNonFiniteCode(r.reduced_failure) || r.reduced_step < 0) return std::nullopt;
  const bool fp32_failed_by_then = r.fp32_failure != v1::FINDING_CODE_UNSPECIFIED &&
                                   r.fp32_step >= 0 && r.fp32_step <= r.reduced_step;
  if (fp32_failed_by_then) return std::nullopt;
  // The replay must have reached the step where the reduced run broke.
  if (r.fp32_steps_run < r.reduced_step + 1) return std::nullopt;

  const char* name = PrecisionName(r.precision);
  PrecisionOverflow o;
  o.message = absl::StrCat(v1::FindingCode_Name(r.reduced_failure), " at step ", r.reduced_step,
                           " under ", name, " autocast, while an fp32 replay of the same ",
                           r.reduced_step + 1, " steps stays finite");
  if (r.fp32_peak_output_abs >= 0) {
    absl::StrAppend(&o.message,
                    absl::StrFormat(" (fp32 peak |output| %.4g; %s's largest finite "
                                    "value is %.6g)",
                                    r.fp32_peak_output_abs, name, MaxFinite(r.precision)));
  }
  if (r.precision == Precision::kFp16) {
    const bool output_past_range =
        r.fp32_peak_output_abs >= 0 && r.fp32_peak_output_abs > MaxFinite(r.precision);
    o.hint = absl::StrCat(
        output_past_range ? "The model's outputs exceed fp16's range: keep activations in range "
                            "(normalisation, smaller init or output scale) or train in bf16. "
                          : "An intermediate value or gradient exceeds fp16's range: ",
        "Use a gradient scaler (torch.amp.GradScaler) for fp16, keep the overflowing op in fp32 "
        "(autocast(enabled=False) around it), or train in bf16, which has fp32's range.");
  } else {
    o.hint =
        "bf16 has fp32's range but 8 bits of mantissa: the non-finite value comes from precision "
        "loss (e.g. a log/exp/division of a value rounded to 0 or a large reduction). Keep that "
        "op in fp32 (autocast(enabled=False) around it) or add an epsilon where it divides or "
        "takes a log.";
  }
  return o;
}

}  // namespace preflight::engine
