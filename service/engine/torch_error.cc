#include "service/engine/torch_error.h"

#include <cstdint>
#include <mutex>
#include <new>
#include <string_view>

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
std::optional<std::string>& FirstDeviceAssert() {
  static auto* const first = new std::optional<std::string>;
  return *first;
}

// cudaError_t cudaErrorAssert, stable across CUDA releases.
constexpr int32_t kCudaErrorAssert = 710;

}  // namespace

bool IsDeviceAssert(const std::exception& e) {
  if (const auto* a = dynamic_cast<const c10::AcceleratorError*>(&e)) {
    if (a->get_error_code() == kCudaErrorAssert) return true;
  }
  return std::string_view(e.what()).find("device-side assert triggered") != std::string_view::npos;
}

absl::Status TorchErrorStatus(const std::exception& e) {
  std::string message = TrimTorchMessage(e.what());
  if (IsDeviceAssert(e)) {
    std::lock_guard<std::mutex> lock(Mu());
    if (!FirstDeviceAssert()) FirstDeviceAssert() = message;
    return absl::InvalidArgumentError(message);
  }
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
  FirstDeviceAssert().reset();
}

std::optional<std::string> DeviceAssertMessage() {
  std::lock_guard<std::mutex> lock(Mu());
  return FirstDeviceAssert();
}

}  // namespace preflight::engine::internal
