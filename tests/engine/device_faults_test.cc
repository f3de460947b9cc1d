#include "service/engine/device_faults.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "service/engine/report_util.h"

namespace preflight::engine {
namespace {

using ::testing::HasSubstr;

// What LibTorch raised after an embedding lookup with an index past the
// table on CUDA: the kernel asserted, and the error surfaced at the next
// synchronising call as a forward error and then an unexpected error.
constexpr char kAssert[] =
    "CUDA error: device-side assert triggered\nCUDA kernel errors might be asynchronously "
    "reported at some other API call, so the stacktrace below might be incorrect.";

TEST(ReportDeviceAssert, OneFindingWithTheCpuReplayAndWhatSurfaced) {
  v1::Report r;
  AddFinding(&r, v1::FORWARD_ERROR, v1::Finding::FAIL, "overfit", "at step 0: CUDA error");
  AddFinding(&r, v1::INTERNAL_ERROR, v1::Finding::ERROR, "engine", "unexpected error");
  ReportDeviceAssert(&r, kAssert, "index out of range in self (aten::embedding)");
  ASSERT_EQ(r.findings_size(), 1);
  const v1::Finding& f = r.findings(0);
  EXPECT_EQ(f.code(), v1::DEVICE_ASSERT);
  EXPECT_EQ(f.severity(), v1::Finding::FAIL);
  EXPECT_THAT(f.message(), HasSubstr("device-side assert"));
  EXPECT_THAT(f.message(), HasSubstr("index out of range in self"));
  bool surfaced = false;
  for (const auto& e : f.evidence()) {
    if (e.name() == "surfaced_as") {
      surfaced = true;
      EXPECT_EQ(e.text(), "FORWARD_ERROR, INTERNAL_ERROR");
    }
  }
  EXPECT_TRUE(surfaced);
  EXPECT_EQ(r.completion(), v1::COMPLETION_FINAL);
  EXPECT_EQ(ComputeVerdict(r), v1::FAIL);
}

TEST(ReportDeviceAssert, WithoutReplay) {
  v1::Report r;
  ReportDeviceAssert(&r, kAssert, "");
  ASSERT_EQ(r.findings_size(), 1);
  EXPECT_THAT(r.findings(0).message(), ::testing::Not(HasSubstr("on CPU")));
}

TEST(DeviceMemoryRequested, FromRecordedCudaOomMessages) {
  EXPECT_EQ(DeviceMemoryRequested(
                "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
                "139.81 GiB of which 1.06 GiB is free."),
            "2.00 GiB");
  EXPECT_EQ(DeviceMemoryRequested("CUDA out of memory. Tried to allocate 512.00 MiB (GPU 0; 79 "
                                  "GiB total capacity)"),
            "512.00 MiB");
  EXPECT_EQ(DeviceMemoryRequested("std::bad_alloc"), "");
}

}  // namespace
}  // namespace preflight::engine
