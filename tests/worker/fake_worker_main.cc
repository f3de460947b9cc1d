// A stand-in for preflight-worker, speaking the real control protocol, for
// worker_pool_test. PREFLIGHT_FAKE_WORKER_MODE picks what it does:
//   (unset)  its sandbox probe "failed": the hello carries the error, then it
//            waits to be killed (the pool must refuse it);
//   "echo"   answers each job at once with a report whose one finding's
//            message is the model and batch bytes read from the descriptors
//            that came with the job, joined by '|';
//   "hold"   never finishes a job; answers a cancel with exit_reason
//            "cancelled", as the zygote does after killing the job.
// Every mode but the first answers the pool's heartbeat pings.
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "preflight/v1/worker.pb.h"
#include "service/worker/framing.h"

namespace {

std::string ReadAll(int fd) {
  std::string out;
  char buf[4096];
  for (off_t off = 0;;) {
    const ssize_t n = pread(fd, buf, sizeof(buf), off);
    if (n <= 0) return out;
    out.append(buf, static_cast<size_t>(n));
    off += n;
  }
}

}  // namespace

int main(int argc, char** argv) {
  using preflight::worker::ReadFrame;
  using preflight::worker::WriteFrame;
  if (argc != 2 || std::strncmp(argv[1], "--control-fd=", 13) != 0) return 2;
  const int control = std::atoi(argv[1] + 13);
  const char* env = std::getenv("PREFLIGHT_FAKE_WORKER_MODE");
  const std::string mode = env != nullptr ? env : "";
  preflight::v1::WorkerHello hello;
  hello.set_engine_version("fake");
  hello.set_pid(getpid());
  if (mode.empty()) {
    hello.set_sandbox_error("sandbox: landlock_restrict_self: Operation not permitted");
  }
  if (!WriteFrame(control, hello).ok()) return 1;
  if (mode.empty()) {
    for (;;) pause();
  }
  for (;;) {
    preflight::v1::WorkerCommand command;
    std::vector<preflight::util::UniqueFd> fds;
    if (!ReadFrame(control, &command, &fds).ok()) return 0;
    preflight::v1::WorkerResult result;
    if (command.has_ping()) {
      result.set_pong(command.ping());  // Alive, as the zygote answers.
    } else if (command.has_run() && mode == "echo") {
      result.set_id(command.run().id());
      std::string seen = std::to_string(fds.size()) + " fds";
      if (fds.size() == 2) seen = ReadAll(fds[0].get()) + "|" + ReadAll(fds[1].get());
      result.mutable_report()->add_findings()->set_message(seen);
    } else if (command.has_cancel_id() && mode == "hold") {
      result.set_id(command.cancel_id());
      result.set_exit_reason("cancelled");
    } else {
      continue;
    }
    if (!WriteFrame(control, result).ok()) return 1;
  }
}
