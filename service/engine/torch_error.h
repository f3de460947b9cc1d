// LibTorch exceptions caught at the narrowest call, turned into a Status.
// Private to service/engine.
//
//   try { out = module.forward(inputs); }
//   catch (const std::exception& e) { return TorchErrorStatus(e); }
#pragma once

#include <exception>
#include <optional>
#include <string>

#include "absl/status/status.h"

namespace preflight::engine::internal {

// RESOURCE_EXHAUSTED for an allocation failure (c10::OutOfMemoryError,
// std::bad_alloc: the job's memory limit, host or device memory), else
// INVALID_ARGUMENT; the message is LibTorch's, trimmed of its backtrace.
// An allocation failure is also recorded for the running check (see
// OutOfMemoryMessage): wherever it surfaced, as a forward error or a loss
// error, it says nothing about the model's code and the report says so.
absl::Status TorchErrorStatus(const std::exception& e);

// The first allocation failure seen since the last ResetOutOfMemory(), if any.
std::optional<std::string> OutOfMemoryMessage();
void ResetOutOfMemory();

// A CUDA device-side assert (an op's kernel failed a bounds or value check,
// e.g. an index out of range) is recorded like an allocation failure: after
// one, the CUDA context is unusable, so every later error is a consequence
// and the report names this one. Cleared by ResetOutOfMemory().
std::optional<std::string> DeviceAssertMessage();

// True when an exception is a device-side assert: cudaErrorAssert (710) as
// c10::AcceleratorError, or its message (older LibTorch raises c10::Error).
bool IsDeviceAssert(const std::exception& e);

}  // namespace preflight::engine::internal
