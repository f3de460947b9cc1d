#include "client/local_check.h"

#include <unistd.h>

#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "service/engine/budgets.h"
#include "service/engine/engine.h"
#include "service/store/sha256.h"
#include "service/worker/child_process.h"

namespace preflight::client {
namespace {

bool ReadFile(const std::string& path, std::string* out, std::string* error) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    *error = absl::StrCat("cannot open '", path, "'");
    return false;
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) {
    *error = absl::StrCat("cannot read '", path, "'");
    return false;
  }
  *out = std::move(ss).str();
  return true;
}

}  // namespace

int RunLocalCheck(const CheckCommand& cmd) {
  engine::CheckInput input;
  std::string error;
  if (!ReadFile(cmd.model_path, &input.model_bytes, &error) ||
      !ReadFile(cmd.batch_path, &input.batch_bytes, &error)) {
    std::cerr << "preflight check: " << error << "\n";
    return kExitUsage;
  }
  if (!cmd.json && isatty(STDERR_FILENO)) {
    std::cerr << "preflight: checking " << cmd.model_path << " (up to " << cmd.config.max_steps()
              << " steps, timeout " << cmd.config.timeout_seconds() << " s)...\n";
  }
  // The engine pins process-global LibTorch state and may start CUDA: it
  // runs in a child so that a hang or crash in the model cannot take the
  // client with it, and the parent always prints a report.
  const auto outcome = worker::RunInChild(
      [&] { return engine::RunCheck(cmd.config, input).SerializeAsString(); },
      absl::Seconds(engine::DeriveBudgets(cmd.config.timeout_seconds()).job_deadline_seconds));
  v1::Report report = worker::ReportFromOutcome(outcome, cmd.config);
  report.set_model_sha256(store::Sha256Hex(input.model_bytes));
  report.set_batch_sha256(store::Sha256Hex(input.batch_bytes));
  if (cmd.json) {
    std::cout << ReportToJson(report) << "\n";
  } else {
    std::cout << RenderReport(report, cmd.model_path, cmd.batch_path);
  }
  return ExitCodeFor(report.verdict());
}

std::string LocalEngineDescription() {
  return absl::StrCat("preflight engine ", engine::EngineVersion(), ", LibTorch ",
                      engine::TorchVersion());
}

}  // namespace preflight::client
