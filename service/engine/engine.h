// The check engine: one model artifact and one batch in, a report out.
//
// RunCheck runs, in order: artifact and batch loading (the format is detected
// from the content: model_loader.h), input checks, checks at initialisation,
// the overfit-one-batch run with numerics and gradient-flow tracking, a
// differential diagnosis of a failing curve (short follow-up runs that
// confirm a cause), and a bitwise determinism replay. The checks live in
// checks/, one file per family.
//
// Process model: RunCheck pins process-global LibTorch state (seed, thread
// counts, deterministic algorithms) and may initialise CUDA. Call it in a
// process that exists for this one check — a forked child of a zygote or a
// fresh worker — never in a long-lived server or a zygote that forks later.
//
//   engine::CheckInput in{model_bytes, batch_bytes};
//   v1::Report report = engine::RunCheck(config, in);
//   // report.verdict() is PASS/WARN/FAIL/ERROR; never throws.
#pragma once

#include <string>

#include "preflight/v1/report.pb.h"

namespace preflight::engine {

struct CheckInput {
  // A model artifact: a TorchScript archive as written by torch.jit.save.
  std::string model_bytes;
  // A torch.save'd dict {"inputs": ..., "targets": ...} or 2-tuple.
  std::string batch_bytes;
};

// Runs every check. `config` should have defaults applied (config.h); it is
// validated again here, and a config that does not validate yields an ERROR
// report with one CONFIG_INVALID finding naming the field. Never throws:
// LibTorch errors become findings at the call that raised them, and anything
// unforeseen an INTERNAL_ERROR finding (tests/engine/engine_contract_test.cc
// holds RunCheck to this). An allocation failure anywhere is reported as
// WORKER_OOM. Every report comes back with completion COMPLETION_FINAL,
// except an out-of-memory one (COMPLETION_TRANSIENT: another memory limit
// may let the same model fit).
v1::Report RunCheck(const v1::CheckConfig& config, const CheckInput& input);

// The LibTorch version linked into the engine, e.g. "2.15.0".
std::string TorchVersion();

// The engine version recorded in reports (bumped when a check changes).
std::string EngineVersion();

}  // namespace preflight::engine
