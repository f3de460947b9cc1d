// The sandbox a job child enters after fork and before it reads the model.
//
// A TorchScript file is someone else's program. Layers, outermost first
// (README "Sandbox" says what each blocks and what none of them cover):
//   1. process: own process group, dies with its parent, every inherited fd
//      closed except the result pipe, stdio redirected to /dev/null;
//   2. rlimits: address space, CPU seconds, file size 0, open files, stack,
//      user tasks, core 0;
//   3. PR_SET_NO_NEW_PRIVS;
//   4. Landlock: read-only access to /dev/urandom and the directories of
//      already-loaded libraries (the job's inputs come as descriptors); nothing writable but the
//      GPU device nodes a CUDA job is given (job_policy.h);
//   5. seccomp: network sockets, exec, ptrace, new processes (fork, vfork,
//      clone without CLONE_THREAD), io_uring, signals to other processes,
//      namespaces, mounts, bpf kill the child with SIGSYS, reported as
//      SANDBOX_VIOLATION.
// Landlock also denies TCP bind/connect (ABI 4+), ioctl on devices other
// than the job's GPU nodes (ABI 5+), and signals and abstract Unix sockets
// across the job's boundary (ABI 6+).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace preflight::worker {

struct SandboxPolicy {
  std::vector<std::string> readable_files;  // Read-only files (/dev/urandom).
  std::vector<std::string> readable_dirs;   // Libraries (read + execute).
  std::vector<std::string> device_files;    // Read + write (GPU device nodes).
  int keep_fd = -1;                         // The result pipe.
  int64_t address_space_bytes = 0;          // RLIMIT_AS; 0 = unlimited.
  int64_t cpu_seconds = 0;                  // RLIMIT_CPU (soft; hard +2 s); 0 = unlimited.
  int64_t open_files = 64;                  // RLIMIT_NOFILE.
  int64_t stack_bytes = 8 << 20;            // RLIMIT_STACK; 0 = inherited.
  int64_t max_user_tasks = 4096;            // RLIMIT_NPROC (per user!); 0 = inherited.
  bool seccomp = true;                      // false only in tests that probe the layers beneath it.
};

// Applies every layer, in order. Call in the child only: it is
// irreversible. An error means a layer could not be applied (the child must
// not run the model then); Landlock missing from the kernel is not an error
// but is reported in `landlock_abi` (0).
absl::Status EnterSandbox(const SandboxPolicy& policy, int* landlock_abi);

// Directories of every shared object loaded in this process, for
// SandboxPolicy::readable_dirs (lazy dlopen of a sibling library must work).
std::vector<std::string> LoadedLibraryDirs();

}  // namespace preflight::worker
