// What the sandbox refused inside a job child, recorded where it happens: a
// file open that failed with EACCES/EPERM, an allocation that failed with
// ENOMEM (or operator new). The zygote classifies the job from this record
// (classify.h), never from the text of an error message.
//
// Recording works by interposition: this component defines open, open64,
// openat, openat64, fopen, fopen64 and posix_memalign for the process that
// links it (the zygote binary; LibTorch's calls resolve to them), each
// forwarding to libc's and noting the failure; and __cxa_throw, which marks
// the failure a thread's throw immediately follows as `raised` (what stopped
// the code), so refusals LibTorch merely probes and tolerates stay apart. Nothing is noted until
// ArmIncidentRecording(), which a job child calls right after entering its
// sandbox, so the zygote's own start-up is never recorded. Recording is
// lock-free and allocation-free (fixed capacity; extra incidents are counted).
//
//   EnterSandbox(policy, &abi);
//   ArmIncidentRecording();
//   ... run the check ...
//   TakeIncidents(&record);  // into the JobRecord sent to the zygote
#pragma once

#include <cstdint>

#include "preflight/v1/worker.pb.h"

namespace preflight::worker {

// From now on, in this process, refused opens and failed allocations are
// recorded. Also installs a new-handler that records a failed operator new
// before it throws std::bad_alloc. Irreversible; for job children only.
void ArmIncidentRecording();

// Notes an allocation failure seen elsewhere (a std::bad_alloc caught by the
// child; `raised`: it is what stopped the check). No-op unless armed.
void RecordAllocationFailure(int64_t bytes, const char* call, bool raised);

// Appends every incident recorded so far to `record` (and the count of those
// that did not fit), in the order they happened.
void TakeIncidents(v1::JobRecord* record);

}  // namespace preflight::worker
