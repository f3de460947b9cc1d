// preflight-worker: the zygote process started by preflight-server. Not for
// direct use: `preflight-worker --control-fd=N` speaks the worker protocol
// (proto/preflight/v1/worker.proto) on fd N.
#include <cstdio>
#include <cstring>
#include <string>

#include "absl/strings/numbers.h"
#include "service/worker/zygote.h"

int main(int argc, char** argv) {
  int fd = -1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--control-fd=", 0) == 0 && absl::SimpleAtoi(a.substr(13), &fd)) continue;
    std::fprintf(stderr, "usage: %s --control-fd=N (started by preflight-server)\n", argv[0]);
    return 2;
  }
  if (fd < 0) {
    std::fprintf(stderr, "usage: %s --control-fd=N (started by preflight-server)\n", argv[0]);
    return 2;
  }
  return preflight::worker::RunZygote(fd);
}
