// Runs one function in a forked child process under a wall-clock deadline.
//
// The child gets its own process group (so the parent can kill everything it
// spawns), dies with its parent (PR_SET_PDEATHSIG), and sends its result
// back as one length-prefixed message over a pipe. The parent never blocks
// past the deadline: a hung child is killed with SIGKILL.
//
// Fork safety: the caller must not have run any OpenMP-parallel LibTorch op
// nor initialised CUDA before calling this (both break in a forked child).
// The CLI calls it before touching LibTorch; the service's zygote will too.
//
//   ChildOutcome o = RunInChild([&] { return Serialize(RunCheck(...)); },
//                               absl::Seconds(300));
//   if (o.status == ChildStatus::kOk) Parse(o.payload);
#pragma once

#include <functional>
#include <string>

#include "absl/time/time.h"
#include "preflight/v1/report.pb.h"
#include "service/util/usable_cpus.h"

namespace preflight::worker {

enum class ChildStatus {
  kOk,           // The child returned a payload and exited 0.
  kTimeout,      // Killed at the deadline.
  kSignaled,     // Died from a signal it did not get from us.
  kExited,       // Exited without a complete payload (exit code in exit_code).
  kSpawnFailed,  // fork/pipe failed (message in error).
};

struct ChildOutcome {
  ChildStatus status = ChildStatus::kSpawnFailed;
  std::string payload;
  int signal = 0;
  int exit_code = 0;
  double seconds = 0;  // Wall time from fork to reaping.
  // kSpawnFailed: why; kExited: the exception message the child reported.
  std::string error;
};

// Forks, runs `fn` in the child and returns its result. `fn` runs in the
// child only; exceptions escaping it end the child with exit code 70.
ChildOutcome RunInChild(const std::function<std::string()>& fn, absl::Duration deadline);
// The same, handing `fn` the descriptor its result travels on (for a child
// that must keep it open through a sandbox that closes every other one).
ChildOutcome RunInChild(const std::function<std::string(int result_fd)>& fn,
                        absl::Duration deadline);

// CPUs this process may run on (its affinity mask, so cpusets count), >= 1.
using util::UsableCpus;

// The child side, for callers that fork themselves (the zygote): runs `fn`
// and sends its result (or the exception message) on `write_fd`, then _exits.
[[noreturn]] void RunChildBody(int write_fd, const std::function<std::string()>& fn);

// The parent side: decodes what the child sent (`data`) and how it ended.
ChildOutcome OutcomeFromChild(const std::string& data, int wstatus, bool timed_out, double seconds);

// Turns a child outcome into a report: the child's own report when it
// produced one, else an ERROR report with WORKER_TIMEOUT (deadline or
// SIGXCPU), SANDBOX_VIOLATION (SIGSYS from seccomp), WORKER_CRASHED (other
// signals, exits without a report) or INTERNAL_ERROR. `config` is recorded in it.
// Reports built here are COMPLETION_TRANSIENT, but SANDBOX_VIOLATION, which
// is COMPLETION_FINAL; the child's own report keeps its completion.
v1::Report ReportFromOutcome(const ChildOutcome& outcome, const v1::CheckConfig& config);

}  // namespace preflight::worker
