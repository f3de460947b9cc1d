// Request validation of a Check's config (service/engine/config.h), as the
// server runs it on every request: any bytes that parse as a CheckConfig
// are defaulted and validated, and validation's verdict must be stable (a
// config it accepts, validated again after the defaults, is still accepted).
#include <cstdint>
#include <cstdlib>

#include <google/protobuf/stubs/logging.h>

#include "preflight/v1/report.pb.h"
#include "service/engine/config.h"

// Protobuf logs every invalid UTF-8 string it parses; the fuzzer makes
// millions.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  preflight::v1::CheckConfig config;
  if (!config.ParseFromArray(data, static_cast<int>(size))) return 0;
  preflight::engine::ApplyDefaults(&config);
  const absl::Status first = preflight::engine::ValidateConfig(config);
  if (first.ok()) {
    preflight::engine::ApplyDefaults(&config);
    if (!preflight::engine::ValidateConfig(config).ok()) abort();
  } else if (first.message().empty()) {
    abort();  // Every refusal names its field.
  }
  return 0;
}
