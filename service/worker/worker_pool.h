// The server's handle on its zygote worker process (server side: no
// LibTorch). Starts the zygote binary, sends jobs, matches results, and
// restarts a zygote that died or stopped answering its heartbeat (stopped,
// hung): jobs in flight then get an ERROR report (WORKER_CRASHED), never a
// hang.
//
//   auto pool = WorkerPool::Start({"/usr/bin/preflight-worker"});
//   v1::WorkerResult r = (*pool)->Run(job);  // blocks until the result
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "preflight/v1/worker.pb.h"
#include "service/util/unique_fd.h"

namespace preflight::worker {

// A job's two inputs, opened read-only by the caller; the runner hands them
// to the job and closes its copies.
struct JobInputs {
  util::UniqueFd model;
  util::UniqueFd batch;
};

// Polled while a job runs (from the thread that called Run); true once every
// caller waiting for the job has gone (deadline passed, call cancelled).
using AbandonedFn = std::function<bool()>;

// What the server needs from whatever runs jobs (a fake in tests).
class JobRunner {
 public:
  virtual ~JobRunner() = default;
  // Blocks until the job's result; never throws. Worker failures are ERROR
  // reports, not errors. Once `abandoned` (may be empty) returns true the
  // job is killed and the result has exit_reason "cancelled".
  virtual v1::WorkerResult Run(v1::WorkerJob job, JobInputs inputs,
                               const AbandonedFn& abandoned) = 0;
  // The engine version of the worker (part of every cache key).
  virtual std::string engine_version() const = 0;
};

struct WorkerPoolConfig {
  std::string worker_binary;  // Path of preflight-worker.
  // How long Start waits for the zygote's hello (LibTorch load ~1 s).
  absl::Duration start_timeout = absl::Seconds(60);
  // Liveness: the pool pings the zygote every heartbeat_timeout / 5 and
  // counts any frame from it as an answer. One that has sent nothing for
  // heartbeat_timeout (SIGSTOPped, or its loop hung) is killed with its
  // process group and replaced; its jobs, which die with it
  // (PR_SET_PDEATHSIG), get WORKER_CRASHED. The zygote answers from its
  // event loop, which never blocks for long (forks, pipe reads), so a few
  // seconds tell a stuck zygote from a busy host. Zero: no heartbeat.
  absl::Duration heartbeat_timeout = absl::Seconds(5);
  // Called (on the pool's reader thread, without the pool's lock) once a
  // zygote was found dead or stuck and its jobs failed, before the
  // replacement starts; then `on_restart` once the replacement is up.
  std::function<void()> on_down;
  std::function<void()> on_restart;
};

class WorkerPool : public JobRunner {
 public:
  static absl::StatusOr<std::unique_ptr<WorkerPool>> Start(const WorkerPoolConfig& config);
  ~WorkerPool();

  // Sends the job with its input descriptors and blocks until its result.
  // The zygote enforces the job's deadline; a dead zygote completes the job
  // with an ERROR report. `abandoned` is polled every kAbandonPoll; once true
  // the zygote is told to kill the job.
  v1::WorkerResult Run(v1::WorkerJob job, JobInputs inputs, const AbandonedFn& abandoned) override;
  static constexpr absl::Duration kAbandonPoll = absl::Milliseconds(50);
  std::string engine_version() const override;
  std::string torch_version() const;

  int zygote_restarts() const { return restarts_.load(); }
  int zygote_pid() const;
  // Wall time of the last zygote start until its hello (LibTorch load).
  double last_start_seconds() const { return last_start_seconds_.load(); }
  // The kernel's Landlock ABI as a job sandbox sees it (0: no file sandbox).
  int landlock_abi() const { return landlock_abi_.load(); }

 private:
  explicit WorkerPool(WorkerPoolConfig config) : config_(std::move(config)) {}
  absl::Status Spawn();  // Requires mu_.
  void ReaderLoop();
  void HeartbeatLoop();
  void FailAllPending(const std::string& why);  // Requires mu_.

  struct Pending {
    bool done = false;
    v1::WorkerResult result;
    v1::CheckConfig config;
  };

  WorkerPoolConfig config_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  int fd_ = -1;
  int pid_ = -1;
  uint64_t next_id_ = 1;
  uint64_t generation_ = 0;
  std::map<uint64_t, std::shared_ptr<Pending>> pending_;
  bool stopping_ = false;
  // When the current zygote last sent a frame (its hello counts).
  absl::Time last_heard_;
  // Set by the heartbeat when it killed a stuck zygote: what its jobs are
  // told. Cleared once the reader has failed them.
  std::string stuck_reason_;
  std::condition_variable stop_cv_;  // Wakes the heartbeat when stopping.
  std::thread reader_;
  std::thread heartbeat_;
  std::atomic<int> restarts_{0};
  std::atomic<double> last_start_seconds_{0};
  std::atomic<int> landlock_abi_{0};
  std::string engine_version_;  // From the zygote's hello; guarded by mu_.
  std::string torch_version_;   // Likewise.
};

}  // namespace preflight::worker
