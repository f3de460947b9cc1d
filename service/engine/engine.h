// The check engine: one TorchScript model and one batch in, a report out.
//
// RunCheck runs, in order: artifact and batch loading, input checks, checks
// at initialisation, the overfit-one-batch run with numerics and gradient-flow
// tracking, a differential diagnosis of a failing curve (short follow-up runs
// that confirm a cause), and a bitwise determinism replay.
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
  // A TorchScript archive as written by torch.jit.save.
  std::string model_bytes;
  // A torch.save'd dict {"inputs": ..., "targets": ...} or 2-tuple.
  std::string batch_bytes;
};

// Runs every check. `config` must already have defaults applied and be
// valid (see config.h); an invalid config yields an ERROR report. Never
// throws: every LibTorch error becomes a finding.
v1::Report RunCheck(const v1::CheckConfig& config, const CheckInput& input);

// The LibTorch version linked into the engine, e.g. "2.15.0".
std::string TorchVersion();

// The engine version recorded in reports (bumped when a check changes).
std::string EngineVersion();

}  // namespace preflight::engine
