// How the zygote turns what came back from a job child into the job's report,
// from structure only: how the child ended (exit, signal, deadline), the
// JobRecord it sent (its report, the incidents the sandbox recorded inside
// it, an exception that escaped), never the text of an error message.
//
//   v1::Report report = ReportFromJob(outcome, job.config(), memory_limit);
//
// Rules, in order:
//   - the child did not send a record (deadline, signal, exit): the same
//     reports as the CLI's child (child_process.h: WORKER_TIMEOUT,
//     SANDBOX_VIOLATION for SIGSYS, WORKER_CRASHED, INTERNAL_ERROR);
//   - the check ended in an error (an exception escaped it, or its report
//     has an error finding that a refused call can cause) AND the record
//     shows a failed allocation that raised an exception -> WORKER_OOM; else
//     a refused file open that raised one -> SANDBOX_VIOLATION. The original
//     finding is kept as evidence;
//   - a refused open that asked to WRITE, raised or not -> SANDBOX_VIOLATION
//     (TorchScript's torch.save ignores a failed open and the check would
//     pass; the verdict it would have had is kept as evidence);
//   - otherwise the check's own report. A refused read that raised nothing
//     (LibTorch probing /proc/cpuinfo and carrying on) changes nothing.
// Completion: WORKER_OOM, crashes, timeouts and internal errors are
// COMPLETION_TRANSIENT (not reused from the cache); SANDBOX_VIOLATION and a
// report the check returned are COMPLETION_FINAL.
#pragma once

#include <cstdint>

#include "preflight/v1/worker.pb.h"
#include "service/worker/child_process.h"

namespace preflight::worker {

// `outcome.payload` (when kOk) is a serialized v1::JobRecord.
v1::Report ReportFromJob(const ChildOutcome& outcome, const v1::CheckConfig& config,
                         int64_t memory_limit_bytes);

// The report of a job killed because every caller gave up on it.
v1::Report CancelledReport(const v1::CheckConfig& config, double seconds);

// The metrics label for how a job ended: "", "timeout", "crash", "oom",
// "sandbox".
std::string ExitReason(const v1::Report& report);

}  // namespace preflight::worker
