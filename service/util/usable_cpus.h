// CPUs this process may run on: its affinity mask, so cpusets and taskset
// count, never less than 1. Shared by the server (job budgets), the zygote
// (a job's CPU rlimit) and the engine (how many experiments train at once).
#pragma once

#include <sched.h>

#include <algorithm>

namespace preflight::util {

inline int UsableCpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return 1;
  return std::max(1, CPU_COUNT(&set));
}

}  // namespace preflight::util
