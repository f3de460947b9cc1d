// preflight (and preflight-thin): the command-line client. Thin: parse ->
// run locally (local_check.h) or on a server (remote.h) -> print -> exit code.
#include <unistd.h>

#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include <google/protobuf/util/json_util.h>

#include "client/check_command.h"
#include "client/local_check.h"
#include "client/remote.h"

namespace {

constexpr char kUsage[] = R"(Usage: preflight <command> [options]

Commands:
  check     check that a TorchScript model can fit one batch, locally or on a
            server (see: preflight check --help)
  verdict   print the stored verdict of a job or request from a server; a
            scheduler gate (see: preflight verdict --help)
  version   print the engine and LibTorch versions (or that this is the thin client)
)";

std::string MessageJson(const google::protobuf::Message& m) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.always_print_primitive_fields = true;
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(m, &out, options);
  return out;
}

int RunRemoteCheck(const preflight::client::CheckCommand& cmd) {
  namespace client = preflight::client;
  if (!cmd.json && isatty(STDERR_FILENO)) {
    std::cerr << "preflight: sending " << cmd.model_path << " to " << cmd.server << "...\n";
  }
  auto resp = client::RemoteCheck(cmd.server, cmd.model_path, cmd.batch_path, cmd.config,
                                  cmd.job_id);
  if (!resp.ok()) {
    std::cerr << "preflight check: " << cmd.server << ": "
              << absl::StatusCodeToString(resp.status().code()) << ": "
              << resp.status().message() << "\n";
    return client::ExitCodeForRpcError(resp.status());
  }
  if (cmd.json) {
    std::cout << MessageJson(*resp) << "\n";
  } else {
    std::cout << client::RenderReport(resp->report(), cmd.model_path, cmd.batch_path)
              << "  request digest " << resp->request_digest()
              << (resp->cached() ? " (cached verdict)" : "") << "\n";
  }
  return client::ExitCodeFor(resp->report().verdict());
}

int RunVerdictCommand(const std::vector<std::string>& args) {
  namespace client = preflight::client;
  auto cmd = client::ParseVerdictArgs(args);
  if (!cmd.ok()) {
    std::cerr << "preflight verdict: " << cmd.status().message() << "\n";
    return client::kExitUsage;
  }
  if (cmd->help) {
    std::cout << client::VerdictUsage();
    return 0;
  }
  auto resp = client::RemoteVerdict(cmd->server, cmd->job_id, cmd->digest, cmd->timeout_seconds);
  if (!resp.ok()) {
    std::cerr << "preflight verdict: " << absl::StatusCodeToString(resp.status().code()) << ": "
              << resp.status().message() << "\n";
    return client::ExitCodeForRpcError(resp.status());
  }
  if (cmd->json) {
    std::cout << MessageJson(*resp) << "\n";
  } else {
    const auto& r = resp->report();
    std::cout << "verdict " << preflight::v1::Verdict_Name(r.verdict()) << "  job "
              << (resp->job_id().empty() ? "-" : resp->job_id()) << "  digest "
              << resp->request_digest() << "\n";
    for (const auto& f : r.findings()) {
      if (f.severity() < preflight::v1::Finding::WARN) continue;
      std::cout << "  " << preflight::v1::FindingCode_Name(f.code()) << ": " << f.message()
                << "\n";
    }
  }
  return client::ExitCodeFor(resp->report().verdict());
}

int RunCheckCommand(const std::vector<std::string>& args) {
  namespace client = preflight::client;
  auto cmd = client::ParseCheckArgs(args);
  if (!cmd.ok()) {
    std::cerr << "preflight check: " << cmd.status().message() << "\n";
    return client::kExitUsage;
  }
  if (cmd->help) {
    std::cout << client::CheckUsage();
    return 0;
  }
  if (!cmd->server.empty()) return RunRemoteCheck(*cmd);
  return client::RunLocalCheck(*cmd);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
    std::cout << kUsage;
    return args.empty() ? preflight::client::kExitUsage : 0;
  }
  const std::string command = args[0];
  args.erase(args.begin());
  if (command == "check") return RunCheckCommand(args);
  if (command == "verdict") return RunVerdictCommand(args);
  if (command == "version") {
    std::cout << preflight::client::LocalEngineDescription() << "\n";
    return 0;
  }
  std::cerr << "preflight: unknown command '" << command << "'\n" << kUsage;
  return preflight::client::kExitUsage;
}
