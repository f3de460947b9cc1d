// A stand-in for preflight-worker whose sandbox probe failed: it sends a
// hello carrying the probe's error, then waits to be killed. Lets
// worker_pool_test see the pool refuse such a worker without a host on which
// the real sandbox cannot be applied.
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "preflight/v1/worker.pb.h"
#include "service/worker/framing.h"

int main(int argc, char** argv) {
  if (argc != 2 || std::strncmp(argv[1], "--control-fd=", 13) != 0) return 2;
  preflight::v1::WorkerHello hello;
  hello.set_engine_version("fake");
  hello.set_pid(getpid());
  hello.set_sandbox_error("sandbox: landlock_restrict_self: Operation not permitted");
  if (!preflight::worker::WriteFrame(std::atoi(argv[1] + 13), hello).ok()) return 1;
  for (;;) pause();
}
