#include "service/worker/zygote.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "preflight/v1/worker.pb.h"
#include "service/engine/budgets.h"
#include "service/engine/engine.h"
#include "service/engine/report_util.h"
#include "service/worker/child_process.h"
#include "service/worker/framing.h"
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
  double fork_seconds = 0;
};

bool ReadFile(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::ostringstream ss;
  ss << in.rdbuf();
  *out = std::move(ss).str();
  return !in.bad();
}

[[noreturn]] void JobChild(const v1::WorkerJob& job, int write_fd, pid_t zygote,
                           const std::vector<std::string>& lib_dirs,
                           const std::vector<std::string>& nvidia_devices) {
  setpgid(0, 0);
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != zygote) _exit(70);
  RunChildBody(write_fd, [&]() -> std::string {
    const SandboxPolicy policy =
        JobPolicy(job, lib_dirs, nvidia_devices, UsableCpus(), write_fd);
    // CUDA's kernel cache would be written under $HOME: nothing is writable.
    if (!policy.device_files.empty()) setenv("CUDA_CACHE_DISABLE", "1", 1);
    int landlock_abi = 0;
    if (absl::Status s = EnterSandbox(policy, &landlock_abi); !s.ok()) {
      throw std::runtime_error(std::string(s.message()));
    }
    engine::CheckInput input;
    v1::Report report;
    if (!ReadFile(job.model_path(), &input.model_bytes) ||
        !ReadFile(job.batch_path(), &input.batch_bytes)) {
      engine::AddFinding(&report, v1::INTERNAL_ERROR, v1::Finding::ERROR, "worker",
                         "the job's input files could not be read inside the sandbox");
      report.set_verdict(v1::ERROR);
      return report.SerializeAsString();
    }
    report = engine::RunCheck(job.config(), input);
    NoteCudaFallback(policy, job.config(), &report);
    report.mutable_environment()->set_sandbox(DescribePolicy(policy, landlock_abi));
    return report.SerializeAsString();
  });
}

// The sandbox's refusals reach the engine as ordinary LibTorch errors inside
// some check (an allocation refused by RLIMIT_AS, a file open refused by
// Landlock). Reported as what they are, with the original message.
void MapSandboxRefusals(v1::Report* report, int64_t memory_limit) {
  for (const auto& f : report->findings()) {
    const std::string& m = f.message();
    v1::FindingCode code = v1::FINDING_CODE_UNSPECIFIED;
    std::string what;
    if (m.find("can't allocate memory") != std::string::npos ||
        m.find("std::bad_alloc") != std::string::npos) {
      code = v1::WORKER_OOM;
      what = absl::StrCat("the check exceeded its memory limit of ", memory_limit >> 20,
                          " MiB: ", m);
    } else if (m.find("Permission denied") != std::string::npos ||
               m.find("Operation not permitted") != std::string::npos) {
      code = v1::SANDBOX_VIOLATION;
      what = absl::StrCat("the model tried to access a file outside its inputs, which the "
                          "sandbox refused: ", m);
    }
    if (code == v1::FINDING_CODE_UNSPECIFIED) continue;
    v1::Report mapped;
    *mapped.mutable_config() = report->config();
    *mapped.mutable_environment() = report->environment();
    auto* finding = engine::AddFinding(&mapped, code, v1::Finding::ERROR, "worker", what);
    engine::AddText(finding, "original_code", v1::FindingCode_Name(f.code()));
    if (code == v1::WORKER_OOM) {
      engine::AddNumber(finding, "memory_limit_bytes", static_cast<double>(memory_limit));
    }
    mapped.set_verdict(engine::ComputeVerdict(mapped));
    *mapped.mutable_timing() = report->timing();
    *report = std::move(mapped);
    return;
  }
}

std::string ExitReason(const v1::Report& r) {
  for (const auto& f : r.findings()) {
    switch (f.code()) {
      case v1::WORKER_TIMEOUT: return "timeout";
      case v1::WORKER_CRASHED: return "crash";
      case v1::WORKER_OOM: return "oom";
      case v1::SANDBOX_VIOLATION: return "sandbox";
      default: break;
    }
  }
  return "";
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
    case ChildStatus::kOk:
      *landlock_abi = std::atoi(o.payload.c_str());
      return "";
    case ChildStatus::kTimeout:
      return "the sandbox probe did not finish in 30 s";
    case ChildStatus::kSignaled:
      return absl::StrCat("the sandbox probe died from signal ", o.signal);
    default:
      return o.error.empty() ? absl::StrCat("the sandbox probe exited ", o.exit_code) : o.error;
  }
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
      if (r.fd < 0) reap_pending = true;
      if (!r.timed_out) next = std::min(next, r.deadline);
    }
    int timeout_ms = -1;
    if (next != absl::InfiniteFuture()) {
      timeout_ms = static_cast<int>(
          std::max<int64_t>(0, absl::ToInt64Milliseconds(next - absl::Now()) + 1));
    }
    if (reap_pending) timeout_ms = timeout_ms < 0 ? 20 : std::min(timeout_ms, 20);
    if (poll(fds.data(), fds.size(), timeout_ms) < 0 && errno != EINTR) return 1;

    if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
      v1::WorkerJob job;
      absl::Status s = ReadFrame(control_fd, &job);
      if (!s.ok()) {
        for (auto& r : running) kill(-r.pid, SIGKILL);
        for (auto& r : running) waitpid(r.pid, nullptr, 0);
        return s.code() == absl::StatusCode::kUnavailable ? 0 : 1;
      }
      int pipefd[2];
      Running r;
      r.job = job;
      r.start = absl::Now();
      r.deadline = r.start + absl::Seconds(engine::DeriveBudgets(job.config().timeout_seconds())
                                               .job_deadline_seconds);
      if (pipe2(pipefd, O_CLOEXEC) != 0) {
        v1::WorkerResult res;
        res.set_id(job.id());
        ChildOutcome o;
        o.error = absl::StrCat("pipe: ", std::strerror(errno));
        *res.mutable_report() = ReportFromOutcome(o, job.config());
        (void)WriteFrame(control_fd, res);
        continue;
      }
      const absl::Time before_fork = absl::Now();
      const pid_t zygote = getpid();
      const pid_t pid = fork();
      if (pid == 0) {
        close(pipefd[0]);
        JobChild(job, pipefd[1], zygote, lib_dirs, nvidia_devices);
      }
      r.fork_seconds = absl::ToDoubleSeconds(absl::Now() - before_fork);
      close(pipefd[1]);
      if (pid < 0) {
        close(pipefd[0]);
        v1::WorkerResult res;
        res.set_id(job.id());
        ChildOutcome o;
        o.error = absl::StrCat("fork: ", std::strerror(errno));
        *res.mutable_report() = ReportFromOutcome(o, job.config());
        (void)WriteFrame(control_fd, res);
        continue;
      }
      setpgid(pid, pid);
      r.pid = pid;
      r.fd = pipefd[0];
      running.push_back(std::move(r));
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
      const pid_t done = (it->fd < 0 || it->timed_out) ? waitpid(it->pid, &wstatus, WNOHANG) : 0;
      if (done != it->pid) {
        ++it;
        continue;
      }
      kill(-it->pid, SIGKILL);  // Anything the job left behind in its group.
      if (it->fd >= 0) close(it->fd);
      const ChildOutcome o = OutcomeFromChild(it->data, wstatus, it->timed_out,
                                              absl::ToDoubleSeconds(absl::Now() - it->start));
      v1::WorkerResult res;
      res.set_id(it->job.id());
      *res.mutable_report() = ReportFromOutcome(o, it->job.config());
      MapSandboxRefusals(res.mutable_report(), it->job.memory_limit_bytes());
      res.set_exit_reason(ExitReason(res.report()));
      res.set_fork_seconds(it->fork_seconds);
      res.mutable_report()->mutable_timing()->set_fork_seconds(it->fork_seconds);
      if (!WriteFrame(control_fd, res).ok()) return 1;
      it = running.erase(it);
    }
  }
}

}  // namespace preflight::worker
