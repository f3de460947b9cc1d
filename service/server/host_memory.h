// Whether the server's job slots, each at its address-space limit, fit in the
// memory of the host (or of the server's cgroup, when that is lower). Too many
// slots x --job-memory-mb is legal but lets concurrent jobs exhaust the host
// and meet the kernel's OOM killer instead of their own WORKER_OOM, so the
// server warns at start. Torch- and gRPC-free.
//
//   const std::string w = MemoryOvercommitWarning(slots, job_bytes, HostMemoryBytes());
//   if (!w.empty()) std::cerr << "preflight-server: WARNING: " << w << "\n";
#pragma once

#include <cstdint>
#include <string>

namespace preflight::server {

// Physical memory of the host, lowered to the cgroup v2 limit of this process
// (memory.max) when there is one. Bytes; 0 when it cannot be read.
int64_t HostMemoryBytes();

// A one-line warning naming the numbers when `job_slots` x `job_memory_bytes`
// exceeds `host_memory_bytes`; "" when it fits or the host's memory is unknown
// (<= 0).
std::string MemoryOvercommitWarning(int job_slots, int64_t job_memory_bytes,
                                    int64_t host_memory_bytes);

}  // namespace preflight::server
