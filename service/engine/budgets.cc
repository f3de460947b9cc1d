#include "service/engine/budgets.h"

#include <algorithm>
#include <cmath>

namespace preflight::engine {

Budgets DeriveBudgets(double timeout_seconds, int usable_cpus) {
  Budgets b;
  b.job_deadline_seconds = std::max(0.0, timeout_seconds);
  // A job may keep every CPU it is allowed busy (inter-op pool, intra-op
  // threads), so a CPU budget of the wall time alone would fire first.
  b.cpu_limit_seconds =
      static_cast<int64_t>(std::ceil(b.job_deadline_seconds * std::max(1, usable_cpus))) + 1;
  b.backstop_seconds = b.job_deadline_seconds + kBackstopSlackSeconds;
  b.rpc_deadline_seconds = b.job_deadline_seconds + kQueueAllowanceSeconds;
  b.max_intra_op_threads = std::max(1, usable_cpus);
  return b;
}

}  // namespace preflight::engine
