#include "service/worker/zygote.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "preflight/v1/worker.pb.h"
#include "service/engine/budgets.h"
#include "service/engine/engine.h"
#include "service/engine/report_util.h"
#include "service/engine/utf8.h"
#include "service/worker/child_process.h"
#include "service/worker/classify.h"
#include "service/worker/framing.h"
#include "service/worker/job_incidents.h"
#include "service/worker/job_policy.h"
#include "service/worker/sandbox.h"

namespace preflight::worker {
namespace {

struct Running {
  v1::WorkerJob job;
  pid_t pid = -1;
  int fd = -1;  // Read end of the child's result pipe; -1 after EOF.
  std::string data;
  absl::Time start;
  absl::Time deadline;
  bool timed_out = false;
  bool cancelled = false;  // Killed because every caller gave up.
  double fork_seconds = 0;
};

// The whole of a file the server opened for this job (from offset 0: the
// open file description is shared with the server).
bool ReadFd(int fd, std::string* out) {
  out->clear();
  struct stat st;
  if (fstat(fd, &st) == 0 && st.st_size > 0) out->reserve(static_cast<size_t>(st.st_size));
  char buf[1 << 16];
  for (off_t offset = 0;;) {
    const ssize_t n = pread(fd, buf, sizeof(buf), offset);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return false;
    if (n == 0) return true;
    out->append(buf, static_cast<size_t>(n));
    offset += n;
  }
}

[[noreturn]] void JobChild(const v1::WorkerJob& job, int model_fd, int batch_fd, int write_fd,
                           pid_t zygote, const std::vector<std::string>& lib_dirs,
                           const std::vector<std::string>& nvidia_devices) {
  setpgid(0, 0);
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != zygote) _exit(70);
  RunChildBody(write_fd, [&]() -> std::string {
    v1::JobRecord record;
    // The inputs arrive as descriptors and are read before the sandbox closes
    // every descriptor but the result pipe: the job never learns a store
    // path, and the sandbox grants no access to the store at all. Reading
    // bytes runs nothing of the model; parsing them happens inside.
    engine::CheckInput input;
    if (!ReadFd(model_fd, &input.model_bytes) || !ReadFd(batch_fd, &input.batch_bytes)) {
      v1::Report* report = record.mutable_report();
      engine::AddFinding(report, v1::INTERNAL_ERROR, v1::Finding::ERROR, "worker",
                         "the job's input descriptors could not be read");
      report->set_verdict(v1::ERROR);
      report->set_completion(v1::COMPLETION_TRANSIENT);
      return record.SerializeAsString();
    }
    const SandboxPolicy policy = JobPolicy(job, lib_dirs, nvidia_devices, UsableCpus(), write_fd);
    // CUDA's kernel cache would be written under $HOME: nothing is writable.
    if (!policy.device_files.empty()) setenv("CUDA_CACHE_DISABLE", "1", 1);
    int landlock_abi = 0;
    if (absl::Status s = EnterSandbox(policy, &landlock_abi); !s.ok()) {
      throw std::runtime_error(std::string(s.message()));
    }
    ArmIncidentRecording();
    try {
      v1::Report report = engine::RunCheck(job.config(), input);
      NoteCudaFallback(policy, job.config(), &report);
      report.mutable_environment()->set_sandbox(DescribePolicy(policy, landlock_abi));
      *record.mutable_report() = std::move(report);
    } catch (const std::bad_alloc& e) {
      RecordAllocationFailure(0, "std::bad_alloc", /*raised=*/true);
      record.set_failure(e.what());
    } catch (const std::exception& e) {
      record.set_failure(e.what());
    } catch (...) {
      record.set_failure("unknown exception");
    }
    TakeIncidents(&record);
    // A model's message or a file name may hold any bytes; a report that is
    // not UTF-8 would not decode on the server's side.
    engine::MakeValidUtf8(&record);
    return record.SerializeAsString();
  });
}

// Runs a child that enters the job sandbox (as a job would, minus the
// inputs), so a host or container runtime that cannot apply it fails the
// server's start instead of every check. Runs before any LibTorch op, like
// every fork of the zygote. Returns why it failed, or "" and the ABI.
std::string ProbeSandbox(const std::vector<std::string>& lib_dirs, int* landlock_abi) {
  const ChildOutcome o = RunInChild(
      [&](int result_fd) {
        SandboxPolicy policy;
        policy.readable_dirs = lib_dirs;
        policy.keep_fd = result_fd;
        int abi = 0;
        if (absl::Status s = EnterSandbox(policy, &abi); !s.ok()) {
          throw std::runtime_error(std::string(s.message()));
        }
        return std::to_string(abi);
      },
      absl::Seconds(30));
  switch (o.status) {
    case ChildStatus::kOk: *landlock_abi = std::atoi(o.payload.c_str()); return "";
    case ChildStatus::kTimeout: return "the sandbox probe did not finish in 30 s";
    case ChildStatus::kSignaled:
      return absl::StrCat("the sandbox probe died from signal ", o.signal);
    default:
      return o.error.empty() ? absl::StrCat("the sandbox probe exited ", o.exit_code) : o.error;
  }
}

}  // namespace

namespace {

void SendSpawnFailure(int control_fd, const v1::WorkerJob& job, const std::string& why) {
  v1::WorkerResult res;
  res.set_id(job.id());
  ChildOutcome o;
  o.error = why;
  *res.mutable_report() = ReportFromOutcome(o, job.config());
  (void)WriteFrame(control_fd, res);
}

}  // namespace

int RunZygote(int control_fd) {
  signal(SIGPIPE, SIG_IGN);
  const std::vector<std::string> lib_dirs = LoadedLibraryDirs();
  // Looked up once, by name only: the zygote never initialises CUDA.
  const std::vector<std::string> nvidia_devices = FindNvidiaDevices();
  v1::WorkerHello hello;
  hello.set_torch_version(engine::TorchVersion());
  hello.set_engine_version(engine::EngineVersion());
  hello.set_pid(getpid());
  int landlock_abi = 0;
  hello.set_sandbox_error(ProbeSandbox(lib_dirs, &landlock_abi));
  hello.set_landlock_abi(landlock_abi);
  if (!WriteFrame(control_fd, hello).ok()) return 1;

  std::vector<Running> running;
  for (;;) {
    std::vector<pollfd> fds;
    fds.push_back({control_fd, POLLIN, 0});
    absl::Time next = absl::InfiniteFuture();
    bool reap_pending = false;
    for (const auto& r : running) {
      if (r.fd >= 0) fds.push_back({r.fd, POLLIN, 0});
      if (r.fd < 0 || r.cancelled) reap_pending = true;
      if (!r.timed_out) next = std::min(next, r.deadline);
    }
    int timeout_ms = -1;
    if (next != absl::InfiniteFuture()) {
      timeout_ms =
          static_cast<int>(std::max<int64_t>(0, absl::ToInt64Milliseconds(next - absl::Now()) + 1));
    }
    if (reap_pending) timeout_ms = timeout_ms < 0 ? 20 : std::min(timeout_ms, 20);
    if (poll(fds.data(), fds.size(), timeout_ms) < 0 && errno != EINTR) return 1;

    if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
      v1::WorkerCommand command;
      std::vector<util::UniqueFd> inputs;
      absl::Status s = ReadFrame(control_fd, &command, &inputs);
      if (!s.ok()) {
        for (auto& r : running) kill(-r.pid, SIGKILL);
        for (auto& r : running) waitpid(r.pid, nullptr, 0);
        return s.code() == absl::StatusCode::kUnavailable ? 0 : 1;
      }
      if (command.has_run()) {
        const v1::WorkerJob& job = command.run();
        if (inputs.size() != 2) {
          SendSpawnFailure(control_fd, job,
                           absl::StrCat("the job arrived with ", inputs.size(),
                                        " input descriptors instead of 2 (model, batch)"));
          continue;
        }
        int pipefd[2];
        if (pipe2(pipefd, O_CLOEXEC) != 0) {
          SendSpawnFailure(control_fd, job, absl::StrCat("pipe: ", std::strerror(errno)));
          continue;
        }
        Running r;
        r.job = job;
        r.start = absl::Now();
        r.deadline =
            r.start +
            absl::Seconds(
                engine::DeriveBudgets(job.config().timeout_seconds()).job_deadline_seconds);
        const absl::Time before_fork = absl::Now();
        const pid_t zygote = getpid();
        const pid_t pid = fork();
        if (pid == 0) {
          close(pipefd[0]);
          JobChild(job, inputs[0].get(), inputs[1].get(), pipefd[1], zygote, lib_dirs,
                   nvidia_devices);
        }
        r.fork_seconds = absl::ToDoubleSeconds(absl::Now() - before_fork);
        close(pipefd[1]);
        inputs.clear();  // The child has its copies; a later child must not.
        if (pid < 0) {
          close(pipefd[0]);
          SendSpawnFailure(control_fd, job, absl::StrCat("fork: ", std::strerror(errno)));
          continue;
        }
        setpgid(pid, pid);
        r.pid = pid;
        r.fd = pipefd[0];
        running.push_back(std::move(r));
      } else if (command.has_ping()) {
        // Answered from this loop, so an answer proves the loop itself runs
        // (not merely that the process exists): the server's heartbeat.
        v1::WorkerResult pong;
        pong.set_pong(command.ping());
        if (!WriteFrame(control_fd, pong).ok()) return 1;
      } else if (command.has_cancel_id()) {
        for (auto& r : running) {
          if (r.job.id() != command.cancel_id() || r.cancelled) continue;
          r.cancelled = true;
          kill(-r.pid, SIGKILL);
        }
      }
    }

    // Drain readable result pipes (a job started above has no poll entry yet).
    for (auto& r : running) {
      if (r.fd < 0) continue;
      short revents = 0;
      for (size_t k = 1; k < fds.size(); ++k) {
        if (fds[k].fd == r.fd) revents = fds[k].revents;
      }
      if (!(revents & (POLLIN | POLLHUP | POLLERR))) continue;
      char buf[1 << 16];
      const ssize_t n = read(r.fd, buf, sizeof(buf));
      if (n > 0) {
        r.data.append(buf, static_cast<size_t>(n));
      } else if (n == 0 || errno != EINTR) {
        close(r.fd);
        r.fd = -1;
      }
    }

    // Deadlines, then reaping.
    const absl::Time now = absl::Now();
    for (auto& r : running) {
      if (!r.timed_out && now >= r.deadline) {
        r.timed_out = true;
        kill(-r.pid, SIGKILL);
      }
    }
    for (auto it = running.begin(); it != running.end();) {
      int wstatus = 0;
      const bool killed = it->timed_out || it->cancelled;
      const pid_t done = (it->fd < 0 || killed) ? waitpid(it->pid, &wstatus, WNOHANG) : 0;
      if (done != it->pid) {
        ++it;
        continue;
      }
      kill(-it->pid, SIGKILL);  // Anything the job left behind in its group.
      if (it->fd >= 0) close(it->fd);
      const double seconds = absl::ToDoubleSeconds(absl::Now() - it->start);
      v1::WorkerResult res;
      res.set_id(it->job.id());
      if (it->cancelled) {
        *res.mutable_report() = CancelledReport(it->job.config(), seconds);
        res.set_exit_reason("cancelled");
      } else {
        const ChildOutcome o = OutcomeFromChild(it->data, wstatus, it->timed_out, seconds);
        *res.mutable_report() = ReportFromJob(o, it->job.config(), it->job.memory_limit_bytes());
        res.set_exit_reason(ExitReason(res.report()));
      }
      res.set_fork_seconds(it->fork_seconds);
      res.mutable_report()->mutable_timing()->set_fork_seconds(it->fork_seconds);
      if (!WriteFrame(control_fd, res).ok()) return 1;
      it = running.erase(it);
    }
  }
}

}  // namespace preflight::worker
