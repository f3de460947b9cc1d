#include "service/worker/worker_pool.h"

#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "service/engine/budgets.h"
#include "service/engine/report_util.h"
#include "service/worker/framing.h"

namespace preflight::worker {
namespace {

v1::WorkerResult ErrorResult(uint64_t id, const v1::CheckConfig& config, v1::FindingCode code,
                             const std::string& message) {
  v1::WorkerResult r;
  r.set_id(id);
  v1::Report* report = r.mutable_report();
  *report->mutable_config() = config;
  engine::AddFinding(report, code, v1::Finding::ERROR, "worker", message);
  report->set_verdict(engine::ComputeVerdict(*report));
  // The zygote died or did not answer: nothing was learned about the model.
  report->set_completion(v1::COMPLETION_TRANSIENT);
  r.set_exit_reason("crash");
  return r;
}

}  // namespace

absl::StatusOr<std::unique_ptr<WorkerPool>> WorkerPool::Start(const WorkerPoolConfig& config) {
  if (access(config.worker_binary.c_str(), X_OK) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("worker binary '", config.worker_binary, "' is not executable"));
  }
  std::unique_ptr<WorkerPool> pool(new WorkerPool(config));
  {
    std::lock_guard<std::mutex> lock(pool->mu_);
    if (absl::Status s = pool->Spawn(); !s.ok()) return s;
  }
  pool->reader_ = std::thread([p = pool.get()] { p->ReaderLoop(); });
  if (config.heartbeat_timeout > absl::ZeroDuration()) {
    pool->heartbeat_ = std::thread([p = pool.get()] { p->HeartbeatLoop(); });
  }
  return pool;
}

absl::Status WorkerPool::Spawn() {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    return absl::InternalError(absl::StrCat("socketpair: ", std::strerror(errno)));
  }
  const absl::Time start = absl::Now();
  const pid_t pid = fork();
  if (pid < 0) {
    close(sv[0]);
    close(sv[1]);
    return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
  }
  if (pid == 0) {
    // Only async-signal-safe calls until exec: the server is multi-threaded.
    dup2(sv[1], 3);  // dup2 clears FD_CLOEXEC on the copy.
    // Its own process group, so a stuck zygote is killed with all of it.
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    const char* argv[] = {config_.worker_binary.c_str(), "--control-fd=3", nullptr};
    execv(argv[0], const_cast<char* const*>(argv));
    _exit(127);
  }
  close(sv[1]);
  setpgid(pid, pid);  // As the child does: whichever runs first.
  if (config_.heartbeat_timeout > absl::ZeroDuration()) {
    // A zygote that stopped reading must not block a writer (who holds mu_)
    // for longer than the heartbeat takes to find it stuck.
    const timeval tv = absl::ToTimeval(config_.heartbeat_timeout);
    setsockopt(sv[0], SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  }
  // The hello proves LibTorch loaded and the zygote is ready.
  pollfd p{sv[0], POLLIN, 0};
  const int ready = poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(config_.start_timeout)));
  v1::WorkerHello hello;
  absl::Status s = ready == 1 ? ReadFrame(sv[0], &hello)
                              : absl::DeadlineExceededError("no hello from the worker");
  if (!s.ok()) {
    close(sv[0]);
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    return absl::UnavailableError(
        absl::StrCat("worker '", config_.worker_binary, "' did not start: ", s.message()));
  }
  if (!hello.sandbox_error().empty()) {
    close(sv[0]);
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    return absl::FailedPreconditionError(
        absl::StrCat("the job sandbox cannot be applied on this host: ", hello.sandbox_error()));
  }
  last_start_seconds_ = absl::ToDoubleSeconds(absl::Now() - start);
  landlock_abi_ = hello.landlock_abi();
  engine_version_ = hello.engine_version();
  torch_version_ = hello.torch_version();
  fd_ = sv[0];
  pid_ = pid;
  last_heard_ = absl::Now();
  ++generation_;
  return absl::OkStatus();
}

void WorkerPool::FailAllPending(const std::string& why) {
  for (auto& [id, p] : pending_) {
    if (p->done) continue;
    p->result = ErrorResult(id, p->config, v1::WORKER_CRASHED, why);
    p->done = true;
  }
  pending_.clear();
  cv_.notify_all();
}

void WorkerPool::ReaderLoop() {
  for (;;) {
    int fd;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return;
      fd = fd_;
    }
    v1::WorkerResult result;
    absl::Status s = ReadFrame(fd, &result);
    std::unique_lock<std::mutex> lock(mu_);
    if (s.ok()) {
      last_heard_ = absl::Now();  // Any frame is a sign of life.
      if (result.pong() != 0) continue;
      auto it = pending_.find(result.id());
      if (it != pending_.end()) {
        it->second->result = std::move(result);
        it->second->done = true;
        pending_.erase(it);
        cv_.notify_all();
      }
      continue;
    }
    if (stopping_) return;
    // The zygote died, spoke garbage or was found stuck (the heartbeat killed
    // it and shut the socket): fail its jobs, then replace it. Its jobs die
    // with it (PR_SET_PDEATHSIG), so none runs on unseen.
    close(fd_);
    fd_ = -1;
    kill(-pid_, SIGKILL);
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    FailAllPending(stuck_reason_.empty()
                       ? "the worker process (zygote) died while the check ran; it was restarted"
                       : stuck_reason_);
    stuck_reason_.clear();
    if (config_.on_down) {
      lock.unlock();
      config_.on_down();
      lock.lock();
    }
    for (int attempt = 0; !stopping_; ++attempt) {
      if (Spawn().ok()) break;
      lock.unlock();
      std::this_thread::sleep_for(
          std::chrono::milliseconds(std::min(5000, 100 << std::min(attempt, 6))));
      lock.lock();
    }
    if (stopping_) return;
    ++restarts_;
    lock.unlock();
    if (config_.on_restart) config_.on_restart();
  }
}

void WorkerPool::HeartbeatLoop() {
  const absl::Duration timeout = config_.heartbeat_timeout;
  const absl::Duration interval = std::max(absl::Milliseconds(10), timeout / 5);
  uint64_t seq = 0;
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    stop_cv_.wait_for(lock, absl::ToChronoMilliseconds(interval), [this] { return stopping_; });
    if (stopping_) return;
    // Being replaced, or already found stuck: the reader's turn.
    if (fd_ < 0 || !stuck_reason_.empty()) continue;
    const absl::Duration silent = absl::Now() - last_heard_;
    if (silent >= timeout) {
      stuck_reason_ =
          absl::StrCat("the worker process (zygote) stopped answering (no heartbeat for ",
                       absl::FormatDuration(absl::Trunc(silent, absl::Milliseconds(100))),
                       "; stopped or hung); it and its jobs were killed and it was restarted");
      kill(-pid_, SIGKILL);
      kill(pid_, SIGKILL);
      // The reader sees end of stream even should a job still hold a copy.
      shutdown(fd_, SHUT_RDWR);
      continue;
    }
    v1::WorkerCommand ping;
    ping.set_ping(++seq);
    // A broken socket is the reader's to see; a full one times out
    // (SO_SNDTIMEO) and the silence is caught on a later round.
    (void)WriteFrame(fd_, ping);
  }
}

v1::WorkerResult WorkerPool::Run(v1::WorkerJob job, JobInputs inputs,
                                 const AbandonedFn& abandoned) {
  auto p = std::make_shared<Pending>();
  p->config = job.config();
  std::unique_lock<std::mutex> lock(mu_);
  const uint64_t id = next_id_++;
  job.set_id(id);
  if (fd_ < 0) {
    return ErrorResult(id, job.config(), v1::WORKER_CRASHED, "no worker process is running");
  }
  pending_[id] = p;
  v1::WorkerCommand command;
  *command.mutable_run() = std::move(job);
  const int input_fds[] = {inputs.model.get(), inputs.batch.get()};
  absl::Status sent = inputs.model.valid() && inputs.batch.valid()
                          ? WriteFrame(fd_, command, input_fds)
                          : absl::InvalidArgumentError("the job's inputs are not open");
  inputs = {};  // The zygote holds its own copies now.
  job = std::move(*command.mutable_run());
  if (absl::Status s = sent; !s.ok()) {
    // The reader sees the same broken socket and restarts the zygote.
    pending_.erase(id);
    return ErrorResult(id, job.config(), v1::WORKER_CRASHED,
                       absl::StrCat("could not reach the worker process: ", s.message()));
  }
  // The zygote enforces the job's deadline itself; this only bounds how long
  // the server waits for it to answer at all.
  const absl::Time deadline =
      absl::Now() +
      absl::Seconds(engine::DeriveBudgets(job.config().timeout_seconds()).backstop_seconds);
  bool cancel_sent = false;
  const uint64_t generation = generation_;
  while (!p->done) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      pending_.erase(id);
      return ErrorResult(id, job.config(), v1::INTERNAL_ERROR,
                         "the worker process did not answer within the job's deadline");
    }
    cv_.wait_for(lock, absl::ToChronoMilliseconds(
                           std::max(absl::Milliseconds(1), std::min(left, kAbandonPoll))));
    if (p->done || cancel_sent || !abandoned) continue;
    // Asked without the lock: the predicate takes the caller's own locks.
    lock.unlock();
    const bool gone = abandoned();
    lock.lock();
    // A restarted zygote never saw this job (its pending entry already failed).
    if (gone && !p->done && fd_ >= 0 && generation_ == generation) {
      v1::WorkerCommand cancel;
      cancel.set_cancel_id(id);
      cancel_sent = WriteFrame(fd_, cancel).ok();
    }
  }
  return p->result;
}

std::string WorkerPool::engine_version() const {
  std::lock_guard<std::mutex> lock(mu_);
  return engine_version_;
}

std::string WorkerPool::torch_version() const {
  std::lock_guard<std::mutex> lock(mu_);
  return torch_version_;
}

int WorkerPool::zygote_pid() const {
  std::lock_guard<std::mutex> lock(mu_);
  return pid_;
}

WorkerPool::~WorkerPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    if (fd_ >= 0) shutdown(fd_, SHUT_RDWR);
    FailAllPending("the server is shutting down");
  }
  stop_cv_.notify_all();
  if (heartbeat_.joinable()) heartbeat_.join();
  if (reader_.joinable()) reader_.join();
  std::lock_guard<std::mutex> lock(mu_);
  if (fd_ >= 0) close(fd_);
  if (pid_ > 0) {
    // The zygote exits on EOF; SIGKILL only if it does not.
    for (int i = 0; i < 50; ++i) {
      if (waitpid(pid_, nullptr, WNOHANG) == pid_) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
}

}  // namespace preflight::worker
