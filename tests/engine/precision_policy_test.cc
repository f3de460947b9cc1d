#include "service/engine/precision_policy.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace preflight::engine {
namespace {

using ::testing::HasSubstr;

// Values recorded from a CPU run of a Linear layer whose outputs reach
// ~1.2e5 at init: under fp16 autocast the output is Inf at step 0, the fp32
// replay of that step is finite.
PrecisionRuns RecordedFp16Overflow() {
  PrecisionRuns r;
  r.precision = Precision::kFp16;
  r.reduced_failure = v1::OUTPUT_NON_FINITE;
  r.reduced_step = 0;
  r.fp32_steps_run = 1;
  r.fp32_peak_output_abs = 1.2e5;
  return r;
}

TEST(JudgeMixedPrecision, Fp16OverflowWithFiniteFp32ReplayIsNamed) {
  auto o = JudgeMixedPrecision(RecordedFp16Overflow());
  ASSERT_TRUE(o.has_value());
  EXPECT_THAT(o->message, HasSubstr("OUTPUT_NON_FINITE at step 0 under fp16"));
  EXPECT_THAT(o->message, HasSubstr("65504"));
  EXPECT_THAT(o->hint, HasSubstr("exceed fp16's range"));
  EXPECT_THAT(o->hint, HasSubstr("GradScaler"));
}

TEST(JudgeMixedPrecision, GradientOverflowInsideTheRangeOfOutputs) {
  PrecisionRuns r = RecordedFp16Overflow();
  r.reduced_failure = v1::GRAD_NON_FINITE;
  r.reduced_step = 12;
  r.fp32_steps_run = 13;
  r.fp32_peak_output_abs = 300;  // Outputs in range: the gradient overflowed.
  auto o = JudgeMixedPrecision(r);
  ASSERT_TRUE(o.has_value());
  EXPECT_THAT(o->hint, HasSubstr("intermediate value or gradient"));
}

TEST(JudgeMixedPrecision, Bf16HintNamesPrecisionLossNotRange) {
  PrecisionRuns r = RecordedFp16Overflow();
  r.precision = Precision::kBf16;
  r.reduced_failure = v1::LOSS_NON_FINITE;
  auto o = JudgeMixedPrecision(r);
  ASSERT_TRUE(o.has_value());
  EXPECT_THAT(o->hint, HasSubstr("8 bits of mantissa"));
}

TEST(JudgeMixedPrecision, NoFindingWhenFp32FailsToo) {
  PrecisionRuns r = RecordedFp16Overflow();
  r.reduced_step = 5;
  r.fp32_steps_run = 4;
  r.fp32_failure = v1::LOSS_NON_FINITE;
  r.fp32_step = 3;  // The model breaks in fp32 as well: not a precision fault.
  EXPECT_FALSE(JudgeMixedPrecision(r).has_value());
  r.fp32_step = 5;  // Same step: still not a precision fault.
  r.fp32_steps_run = 6;
  EXPECT_FALSE(JudgeMixedPrecision(r).has_value());
}

TEST(JudgeMixedPrecision, NoFindingWithoutANumericFailureOrAShortReplay) {
  PrecisionRuns r = RecordedFp16Overflow();
  r.reduced_failure = v1::FORWARD_ERROR;
  EXPECT_FALSE(JudgeMixedPrecision(r).has_value());
  r = RecordedFp16Overflow();
  r.reduced_failure = v1::FINDING_CODE_UNSPECIFIED;
  EXPECT_FALSE(JudgeMixedPrecision(r).has_value());
  r = RecordedFp16Overflow();
  r.reduced_step = 9;
  r.fp32_steps_run = 3;  // The replay never reached step 9.
  EXPECT_FALSE(JudgeMixedPrecision(r).has_value());
  r = RecordedFp16Overflow();
  r.precision = Precision::kFp32;  // Nothing to compare against.
  EXPECT_FALSE(JudgeMixedPrecision(r).has_value());
}

TEST(MaxFinite, HalfAndBfloat) {
  EXPECT_EQ(MaxFinite(Precision::kFp16), 65504.0);
  EXPECT_GT(MaxFinite(Precision::kBf16), 3e38);
}

}  // namespace
}  // namespace preflight::engine
