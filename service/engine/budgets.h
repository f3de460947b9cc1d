// Every time budget of one check, derived from the one number a caller sets
// (CheckConfig.timeout_seconds) in one place, so the layers that enforce them
// cannot drift apart. Torch-free.
//
//   const engine::Budgets b = engine::DeriveBudgets(config.timeout_seconds(), cpus);
//   kill the job at b.job_deadline_seconds; setrlimit(RLIMIT_CPU, b.cpu_limit_seconds);
//
// Outermost to innermost a check is bounded by: the client's RPC deadline >
// the server's backstop on the zygote > the zygote's wall-clock kill of the
// job; the CPU rlimit is a second wall behind the kill, not the limit itself.
#pragma once

#include <cstdint>

namespace preflight::engine {

struct Budgets {
  // Wall clock from the job's fork until the zygote (or the CLI's parent)
  // kills its process group: WORKER_TIMEOUT. Seconds.
  double job_deadline_seconds = 0;
  // RLIMIT_CPU (soft) of the job: the wall budget times every CPU the job may
  // keep busy, plus one second; SIGXCPU is also WORKER_TIMEOUT. Seconds.
  int64_t cpu_limit_seconds = 0;
  // How long the server waits for the zygote to answer one job before it
  // gives up on it (INTERNAL_ERROR): the job deadline plus slack for
  // fork, reaping and the result's transfer. Seconds.
  double backstop_seconds = 0;
  // The client's gRPC deadline for Check: the job deadline plus time to wait
  // for a job slot on a busy server. Seconds.
  double rpc_deadline_seconds = 0;
  // Most intra-op threads a job may ask for: one per CPU it may run on. More
  // only contend for the same CPUs, and each costs a stack inside the job's
  // address-space limit (512 threads ended jobs without a report).
  int max_intra_op_threads = 1;
};

// Slack of the server's backstop past the job deadline, and the client's
// allowance for queueing (both seconds).
inline constexpr double kBackstopSlackSeconds = 30;
inline constexpr double kQueueAllowanceSeconds = 300;

// `timeout_seconds`: the check's wall-clock budget (> 0 once defaults are
// applied); `usable_cpus`: CPUs the job may run on (values < 1 count as 1).
Budgets DeriveBudgets(double timeout_seconds, int usable_cpus = 1);

}  // namespace preflight::engine
