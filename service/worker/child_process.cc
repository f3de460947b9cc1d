#include "service/worker/child_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "service/engine/report_util.h"

namespace preflight::worker {
namespace {

constexpr int kChildExceptionExit = 70;
constexpr uint64_t kErrorBit = uint64_t{1} << 63;

bool WriteAll(int fd, const char* data, size_t size) {
  while (size > 0) {
    ssize_t n = write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

}  // namespace

[[noreturn]] void RunChildBody(int write_fd, const std::function<std::string()>& fn) {
  std::string payload;
  bool failed = false;
  try {
    payload = fn();
  } catch (const std::exception& e) {
    payload = e.what();
    failed = true;
  } catch (...) {
    payload = "unknown exception";
    failed = true;
  }
  // The top bit of the length marks an error message instead of a result.
  uint64_t size = payload.size() | (failed ? kErrorBit : 0);
  char header[8];
  std::memcpy(header, &size, sizeof(size));
  if (!WriteAll(write_fd, header, sizeof(header)) ||
      !WriteAll(write_fd, payload.data(), payload.size())) {
    _exit(kChildExceptionExit);
  }
  close(write_fd);
  if (failed) _exit(kChildExceptionExit);
  // _exit: no atexit handlers or static destructors of a forked image.
  _exit(0);
}

namespace {

[[noreturn]] void ChildMain(int write_fd, pid_t parent, const std::function<std::string()>& fn) {
  setpgid(0, 0);
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  // The parent may have died between fork and prctl.
  if (getppid() != parent) _exit(kChildExceptionExit);
  RunChildBody(write_fd, fn);
}

}  // namespace

ChildOutcome RunInChild(const std::function<std::string()>& fn, absl::Duration deadline) {
  return RunInChild([&fn](int) { return fn(); }, deadline);
}

ChildOutcome RunInChild(const std::function<std::string(int result_fd)>& fn,
                        absl::Duration deadline) {
  ChildOutcome out;
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    out.error = absl::StrCat("pipe: ", std::strerror(errno));
    return out;
  }
  const absl::Time start = absl::Now();
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    out.error = absl::StrCat("fork: ", std::strerror(errno));
    close(fds[0]);
    close(fds[1]);
    return out;
  }
  if (pid == 0) {
    close(fds[0]);
    ChildMain(fds[1], parent, [&] { return fn(fds[1]); });
  }
  // Also set it from the parent side: no race with the child's own setpgid.
  setpgid(pid, pid);
  close(fds[1]);

  std::string data;
  bool timed_out = false;
  const absl::Time end = start + deadline;
  char buf[1 << 16];
  for (;;) {
    const absl::Duration left = end - absl::Now();
    if (left <= absl::ZeroDuration()) {
      timed_out = true;
      break;
    }
    pollfd p{fds[0], POLLIN, 0};
    const int wait_ms =
        static_cast<int>(std::min<int64_t>(absl::ToInt64Milliseconds(left) + 1, 1 << 30));
    const int r = poll(&p, 1, wait_ms);
    if (r < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (r == 0) continue;
    const ssize_t n = read(fds[0], buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (n == 0) break;  // EOF: the child closed its end (exited or crashed).
    data.append(buf, static_cast<size_t>(n));
  }
  close(fds[0]);
  if (timed_out) kill(-pid, SIGKILL);

  int wstatus = 0;
  while (waitpid(pid, &wstatus, 0) < 0 && errno == EINTR) {
  }
  // Anything the model spawned dies with its group.
  kill(-pid, SIGKILL);
  return OutcomeFromChild(data, wstatus, timed_out, absl::ToDoubleSeconds(absl::Now() - start));
}

ChildOutcome OutcomeFromChild(const std::string& data, int wstatus, bool timed_out,
                              double seconds) {
  ChildOutcome out;
  out.seconds = seconds;
  if (timed_out) {
    out.status = ChildStatus::kTimeout;
    return out;
  }
  if (WIFSIGNALED(wstatus)) {
    out.status = ChildStatus::kSignaled;
    out.signal = WTERMSIG(wstatus);
    return out;
  }
  out.exit_code = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : -1;
  uint64_t size = 0;
  if (data.size() >= sizeof(size)) {
    std::memcpy(&size, data.data(), sizeof(size));
    const bool is_error = (size & kErrorBit) != 0;
    size &= ~kErrorBit;
    if (data.size() - sizeof(size) == size) {
      if (is_error) {
        out.error = data.substr(sizeof(size));
      } else if (out.exit_code == 0) {
        out.status = ChildStatus::kOk;
        out.payload = data.substr(sizeof(size));
        return out;
      }
    }
  }
  out.status = ChildStatus::kExited;
  return out;
}

v1::Report ReportFromOutcome(const ChildOutcome& o, const v1::CheckConfig& config) {
  v1::Report report;
  if (o.status == ChildStatus::kOk) {
    if (report.ParseFromString(o.payload)) {
      report.mutable_timing()->set_worker_seconds(o.seconds);
      return report;
    }
    report.Clear();
    engine::AddFinding(&report, v1::INTERNAL_ERROR, v1::Finding::ERROR, "worker",
                       "the worker's report could not be decoded");
  } else if (o.status == ChildStatus::kTimeout) {
    auto* f =
        engine::AddFinding(&report, v1::WORKER_TIMEOUT, v1::Finding::ERROR, "worker",
                           absl::StrFormat("the check did not finish within %.0f s and was killed",
                                           config.timeout_seconds()));
    engine::AddNumber(f, "timeout_seconds", config.timeout_seconds());
  } else if (o.status == ChildStatus::kSignaled && o.signal == SIGSYS) {
    auto* f = engine::AddFinding(
        &report, v1::SANDBOX_VIOLATION, v1::Finding::ERROR, "worker",
        "the model made a system call the sandbox forbids (network, exec, new process, "
        "ptrace, ...) and was killed (SIGSYS)");
    engine::AddNumber(f, "signal", o.signal);
  } else if (o.status == ChildStatus::kSignaled && o.signal == SIGXCPU) {
    auto* f = engine::AddFinding(&report, v1::WORKER_TIMEOUT, v1::Finding::ERROR, "worker",
                                 "the check used up its CPU-time limit and was killed (SIGXCPU)");
    engine::AddNumber(f, "signal", o.signal);
  } else if (o.status == ChildStatus::kSignaled) {
    const char* name = sigabbrev_np(o.signal);
    auto* f = engine::AddFinding(&report, v1::WORKER_CRASHED, v1::Finding::ERROR, "worker",
                                 absl::StrFormat("the worker process died from signal %d (SIG%s)",
                                                 o.signal, name != nullptr ? name : "?"));
    engine::AddNumber(f, "signal", o.signal);
  } else if (o.status == ChildStatus::kExited) {
    auto* f = engine::AddFinding(
        &report, v1::WORKER_CRASHED, v1::Finding::ERROR, "worker",
        o.error.empty()
            ? absl::StrFormat("the worker exited with code %d without a report", o.exit_code)
            : absl::StrCat("the worker failed: ", engine::TrimTorchMessage(o.error)));
    engine::AddNumber(f, "exit_code", o.exit_code);
  } else {
    engine::AddFinding(&report, v1::INTERNAL_ERROR, v1::Finding::ERROR, "worker",
                       absl::StrCat("could not start the worker: ", o.error));
  }
  *report.mutable_config() = config;
  report.mutable_timing()->set_worker_seconds(o.seconds);
  report.mutable_timing()->set_total_seconds(o.seconds);
  report.set_verdict(engine::ComputeVerdict(report));
  // A forbidden system call is a property of the model (it makes it again on
  // every run); a timeout, crash or internal failure may not recur.
  const bool sigsys = o.status == ChildStatus::kSignaled && o.signal == SIGSYS;
  report.set_completion(sigsys ? v1::COMPLETION_FINAL : v1::COMPLETION_TRANSIENT);
  return report;
}

}  // namespace preflight::worker
