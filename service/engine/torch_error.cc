#include "service/engine/torch_error.h"

#include <mutex>
#include <new>

#include <c10/util/Exception.h>

#include "service/engine/report_util.h"

namespace preflight::engine::internal {
namespace {

std::mutex& Mu() {
  static auto* const mu = new std::mutex;
  return *mu;
}
std::optional<std::string>& FirstOom() {
  static auto* const first = new std::optional<std::string>;
  return *first;
}

}  // namespace

absl::Status TorchErrorStatus(const std::exception& e) {
  std::string message = TrimTorchMessage(e.what());
  const bool oom = dynamic_cast<const c10::OutOfMemoryError*>(&e) != nullptr ||
                   dynamic_cast<const std::bad_alloc*>(&e) != nullptr;
  if (!oom) return absl::InvalidArgumentError(message);
  {
    std::lock_guard<std::mutex> lock(Mu());
    if (!FirstOom()) FirstOom() = message;
  }
  return absl::ResourceExhaustedError(message);
}

std::optional<std::string> OutOfMemoryMessage() {
  std::lock_guard<std::mutex> lock(Mu());
  return FirstOom();
}

void ResetOutOfMemory() {
  std::lock_guard<std::mutex> lock(Mu());
  FirstOom().reset();
}

}  // namespace preflight::engine::internal
