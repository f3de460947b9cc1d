#include "service/worker/job_policy.h"

#include <dirent.h>

#include <algorithm>
#include <cmath>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "service/engine/budgets.h"
#include "service/engine/config.h"
#include "service/engine/report_util.h"

namespace preflight::worker {
namespace {

bool IsNvidiaNode(absl::string_view name) {
  if (name == "nvidiactl" || name == "nvidia-uvm" || name == "nvidia-uvm-tools" ||
      name == "nvidia-modeset") {
    return true;
  }
  if (!absl::ConsumePrefix(&name, "nvidia") || name.empty()) return false;
  return std::all_of(name.begin(), name.end(), [](char c) { return absl::ascii_isdigit(c); });
}

std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return names;
  while (const dirent* e = readdir(d)) {
    const std::string name = e->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  closedir(d);
  return names;
}

}  // namespace

std::vector<std::string> FindNvidiaDevices(const std::string& dev_dir) {
  std::vector<std::string> found;
  for (const auto& name : ListDir(dev_dir)) {
    if (IsNvidiaNode(name)) found.push_back(absl::StrCat(dev_dir, "/", name));
  }
  // MIG capability nodes: /dev/nvidia-caps/nvidia-capN.
  const std::string caps = absl::StrCat(dev_dir, "/nvidia-caps");
  for (const auto& name : ListDir(caps)) {
    if (absl::StartsWith(name, "nvidia-cap")) found.push_back(absl::StrCat(caps, "/", name));
  }
  std::sort(found.begin(), found.end());
  return found;
}

// An unset device means "auto"; one that does not parse gets no GPU nodes
// (the engine refuses it before touching any device).
bool MayUseCuda(absl::string_view device) {
  if (device.empty()) return true;
  absl::StatusOr<engine::DeviceSpec> spec = engine::ParseDevice(std::string(device));
  return spec.ok() && spec->MayUseCuda();
}

std::vector<std::string> CudaReadableDirs() {
  // Driver version and parameters; PCI topology (NUMA, device ids), which
  // /sys/bus/pci/devices links into /sys/devices.
  return {"/proc/driver/nvidia", "/sys/bus/pci", "/sys/devices"};
}

SandboxPolicy JobPolicy(const v1::WorkerJob& job, const std::vector<std::string>& lib_dirs,
                        const std::vector<std::string>& nvidia_devices, int usable_cpus,
                        int result_fd) {
  SandboxPolicy p;
  // LibTorch reads /dev/urandom when it first creates a generator. The
  // job's inputs need no rule: they arrive as descriptors, read before the
  // sandbox is entered, so no path of the store is readable at all.
  p.readable_files = {"/dev/urandom"};
  p.readable_dirs = lib_dirs;
  p.keep_fd = result_fd;
  p.address_space_bytes = job.memory_limit_bytes();
  // A backstop behind the zygote's wall-clock kill, not the limit itself.
  p.cpu_seconds =
      engine::DeriveBudgets(job.config().timeout_seconds(), usable_cpus).cpu_limit_seconds;
  if (!nvidia_devices.empty() && MayUseCuda(job.config().device())) {
    p.device_files = nvidia_devices;
    for (auto& d : CudaReadableDirs()) p.readable_dirs.push_back(std::move(d));
    p.address_space_bytes = 0;
  }
  return p;
}

void NoteCudaFallback(const SandboxPolicy& policy, const v1::CheckConfig& config,
                      v1::Report* report) {
  const std::string& device = config.device();
  if (policy.device_files.empty() || !(device.empty() || device == "auto")) return;
  if (report->environment().device() != "cpu") return;  // CUDA, or never resolved.
  v1::Finding* f = engine::AddFinding(
      report, v1::DEVICE_UNAVAILABLE, v1::Finding::WARN, "environment",
      absl::StrCat("this node has NVIDIA GPUs (", policy.device_files.size(),
                   " device nodes were given to the job) but CUDA did not start inside the "
                   "job, so device=auto checked on the CPU"));
  f->set_hint(
      "GPU-specific faults (CUDA kernel nondeterminism, GPU memory) were not checked. Tell the "
      "Preflight operators (the driver may need a path the sandbox does not grant); pass "
      "--device cuda to make this an error instead.");
  engine::AddNumber(f, "device_nodes", static_cast<double>(policy.device_files.size()));
  report->set_verdict(engine::ComputeVerdict(*report));
}

std::string DescribePolicy(const SandboxPolicy& p, int landlock_abi) {
  std::string s =
      landlock_abi > 0
          ? absl::StrCat("landlock v", landlock_abi, " (read: inputs + ", p.readable_dirs.size(),
                         " dirs; write: ", p.device_files.empty() ? "nothing" : "GPU device nodes",
                         ")")
          : std::string("no landlock (kernel lacks it)");
  absl::StrAppend(&s, ", seccomp deny-list, rlimits: ");
  if (p.address_space_bytes > 0) {
    absl::StrAppend(&s, "address space ", p.address_space_bytes >> 20, " MiB");
  } else {
    absl::StrAppend(&s, "address space unlimited",
                    p.device_files.empty() ? "" : " (CUDA; cgroup-bound)");
  }
  absl::StrAppend(&s, ", cpu ", p.cpu_seconds, " s, files 0 B, ", p.open_files, " fds");
  return s;
}

}  // namespace preflight::worker
