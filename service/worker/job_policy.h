// The sandbox policy of one job child, decided by the zygote without touching
// CUDA (the zygote must never initialise it; each job child does, after fork).
//
// CPU jobs get the full CPU sandbox. A job that may use CUDA ("auto", "cuda",
// "cuda:N") on a node with NVIDIA device nodes additionally gets read-write
// access to exactly those nodes and read access to the driver's /proc and the
// PCI tree in /sys, and runs WITHOUT an address-space limit: CUDA reserves far
// more virtual address space than any useful RLIMIT_AS (its context creation
// fails under one), so on GPU nodes job memory is bounded by the container's
// cgroup limit instead. Not yet exercised on a real GPU (none lent so far).
#pragma once

#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "preflight/v1/worker.pb.h"
#include "service/worker/sandbox.h"

namespace preflight::worker {

// NVIDIA device nodes under `dev_dir` (nvidiactl, nvidiaN, nvidia-uvm,
// nvidia-uvm-tools, nvidia-modeset, nvidia-caps/*), sorted. A directory scan
// only: safe in the zygote.
std::vector<std::string> FindNvidiaDevices(const std::string& dev_dir = "/dev");

// Whether a configured device may resolve to CUDA.
bool MayUseCuda(absl::string_view device);

// Directories a CUDA job reads besides its libraries.
std::vector<std::string> CudaReadableDirs();

// The policy for `job`: the libraries, the result pipe; the CPU budget of
// engine::DeriveBudgets (a backstop behind the wall-clock kill); the GPU additions above when
// `nvidia_devices` is non-empty and the job may use CUDA.
SandboxPolicy JobPolicy(const v1::WorkerJob& job, const std::vector<std::string>& lib_dirs,
                        const std::vector<std::string>& nvidia_devices, int usable_cpus,
                        int result_fd);

// After the check: a job given the GPU device nodes whose `auto` device still
// resolved to the CPU means CUDA could not start inside the sandbox (a driver
// file the policy lacks, a driver/runtime mismatch). The check is valid on the
// CPU, but GPU-specific faults went unchecked: adds a WARN DEVICE_UNAVAILABLE
// so nobody mistakes it for a GPU check. No-op otherwise.
void NoteCudaFallback(const SandboxPolicy& policy, const v1::CheckConfig& config,
                      v1::Report* report);

// One line for Report.environment.sandbox: what the child ran under.
std::string DescribePolicy(const SandboxPolicy& policy, int landlock_abi);

}  // namespace preflight::worker
