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

}  // namespace preflight::engine::internal
