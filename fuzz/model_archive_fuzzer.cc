// The model loader's entry (service/engine/model_archive_guard.h): a model
// artifact is whatever a submitter uploads, and this pass reads its zip
// directory and pickles before LibTorch does. It may refuse anything, but
// never crash, hang or read out of bounds.
#include <cstdint>
#include <string>

#include "service/engine/model_archive_guard.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  (void)preflight::engine::CheckModelArchive(bytes);
  return 0;
}
