// The batch decoder's first pass (service/engine/pickle_guard.h): the
// data.pkl of a batch file is whatever a submitter uploads, and this pass
// runs before LibTorch's unpickler precisely so that hostile pickles get a
// clear error. It may refuse anything, but never crash, hang or read out of
// bounds, whatever the records it is told about.
#include <cstdint>
#include <optional>
#include <string>

#include "service/engine/pickle_guard.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  // The first byte picks the archive the pickle is checked against: records
  // of no bytes, of 64 bytes, or every record absent.
  const uint8_t mode = data[0] % 3;
  const std::string pickle(reinterpret_cast<const char*>(data) + 1, size - 1);
  auto record_size = [mode](const std::string& name) -> std::optional<uint64_t> {
    if (mode == 2 || name.empty()) return std::nullopt;
    return mode == 0 ? 0 : 64;
  };
  (void)preflight::engine::CheckBatchPickle(pickle, record_size);
  return 0;
}
