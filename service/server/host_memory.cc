#include "service/server/host_memory.h"

#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace preflight::server {
namespace {

// memory.max of this process's cgroup v2 ("max" or absent: no limit, 0).
int64_t CgroupLimitBytes() {
  std::ifstream self("/proc/self/cgroup");
  std::string line, path;
  while (std::getline(self, line)) {
    if (absl::StartsWith(line, "0::")) path = line.substr(3);
  }
  if (path.empty()) return 0;
  std::ifstream max(absl::StrCat("/sys/fs/cgroup", path == "/" ? "" : path, "/memory.max"));
  std::string text;
  int64_t bytes = 0;
  if (!std::getline(max, text) || !absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &bytes)) {
    return 0;
  }
  return bytes;
}

}  // namespace

int64_t HostMemoryBytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  int64_t bytes = pages > 0 && page > 0 ? int64_t{pages} * page : 0;
  const int64_t cgroup = CgroupLimitBytes();
  if (cgroup > 0) bytes = bytes > 0 ? std::min(bytes, cgroup) : cgroup;
  return bytes;
}

std::string MemoryOvercommitWarning(int job_slots, int64_t job_memory_bytes,
                                    int64_t host_memory_bytes) {
  if (host_memory_bytes <= 0 || job_slots <= 0 || job_memory_bytes <= 0) return "";
  const int64_t total = int64_t{job_slots} * job_memory_bytes;
  if (total <= host_memory_bytes) return "";
  return absl::StrCat(job_slots, " job slots x ", job_memory_bytes >> 20,
                      " MiB per job (--job-memory-mb) = ", total >> 20,
                      " MiB exceeds this host's memory of ", host_memory_bytes >> 20,
                      " MiB: concurrent jobs may be killed by the kernel's OOM killer instead of "
                      "ending in WORKER_OOM; lower --job-slots or --job-memory-mb");
}

}  // namespace preflight::server
