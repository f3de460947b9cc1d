// The frame decoder the server runs on everything its zygote sends
// (service/worker/framing.h): arbitrary bytes on the pipe must give frames
// or DATA_LOSS / UNAVAILABLE, never a crash, a hang or an allocation driven
// by a corrupt length.
#include <unistd.h>

#include <cstdint>
#include <cstdlib>

#include <google/protobuf/stubs/logging.h>

#include "preflight/v1/worker.pb.h"
#include "service/worker/framing.h"

// Protobuf logs every invalid UTF-8 string it parses; the fuzzer makes
// millions.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // A pipe holds 64 KiB; inputs are capped well below (-max_len in tools/fuzz.sh).
  if (size > 60000) return 0;
  int p[2];
  if (pipe(p) != 0) abort();
  size_t off = 0;
  while (off < size) {
    const ssize_t n = write(p[1], data + off, size - off);
    if (n <= 0) abort();
    off += static_cast<size_t>(n);
  }
  close(p[1]);
  for (int frames = 0; frames < 1000; ++frames) {
    preflight::v1::WorkerResult result;
    if (!preflight::worker::ReadFrame(p[0], &result).ok()) break;
  }
  close(p[0]);
  return 0;
}
