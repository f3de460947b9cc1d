// Reports for faults that end a check on a CUDA device: a device-side
// assert, and out-of-memory on the device. Torch-free (the engine calls
// these after the run; tests feed them recorded LibTorch messages).
//
//   if (auto a = internal::DeviceAssertMessage())
//     ReportDeviceAssert(&report, *a, cpu_replay_error);
#pragma once

#include <string>

#include "absl/strings/string_view.h"
#include "preflight/v1/report.pb.h"

namespace preflight::engine {

// Replaces the report's findings with one DEVICE_ASSERT (FAIL): after a
// device-side assert the CUDA context is unusable, so what surfaced after it
// (forward errors, INTERNAL_ERROR) are consequences; their codes are kept as
// evidence `surfaced_as`. `cpu_replay` is what the same forward and loss
// raised on the CPU, where ops check their arguments eagerly and name the
// op and the bad value (empty: no replay ran). The check is final: the model
// or its data asserts, which no retry changes.
void ReportDeviceAssert(v1::Report* report, absl::string_view assert_message,
                        absl::string_view cpu_replay);

// "2.00 GiB" from LibTorch's CUDA OOM message ("Tried to allocate 2.00 GiB.
// GPU 0 has a total capacity of ..."); empty when the message has none.
std::string DeviceMemoryRequested(absl::string_view oom_message);

}  // namespace preflight::engine
