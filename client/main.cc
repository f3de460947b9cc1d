// preflight (and preflight-thin): the command-line client. Thin: parse ->
// run locally (local_check.h) or on a server (remote.h) -> print -> exit code.
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include <google/protobuf/util/json_util.h>
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

#include "client/check_command.h"
#include "client/local_check.h"
#include "client/remote.h"
#include "service/store/sha256.h"

namespace {

constexpr char kUsage[] = R"(Usage: preflight <command> [options]

Commands:
  check     check that a model (.pt2 or TorchScript) can fit one batch, locally or on a
            server (see: preflight check --help)
  verdict   print the stored verdict of a job or request from a server; a
            scheduler gate (see: preflight verdict --help)
  attest    prove at a job's start that its model file is the one its verdict
            was given for; a Slurm prolog or init container (see: preflight
            attest --help)
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
  auto resp =
      client::RemoteCheck(cmd.server, cmd.model_path, cmd.batch_path, cmd.config, cmd.job_id);
  if (!resp.ok()) {
    std::cerr << "preflight check: " << cmd.server << ": "
              << absl::StatusCodeToString(resp.status().code()) << ": " << resp.status().message()
              << "\n";
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
    std::cout << client::RenderVerdict(*resp);
  }
  return client::ExitCodeFor(resp->report().verdict());
}

// Streams a file through SHA-256; false with the reason when it cannot be read.
bool FileSha256(const std::string& path, std::string* hex, std::string* error) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    *error = absl::StrCat(path, ": ", std::strerror(errno));
    return false;
  }
  preflight::store::Sha256 h;
  std::vector<char> buf(1 << 20);
  while (in.read(buf.data(), static_cast<std::streamsize>(buf.size())) || in.gcount() > 0) {
    h.Update(absl::string_view(buf.data(), static_cast<size_t>(in.gcount())));
  }
  if (in.bad()) {
    *error = absl::StrCat(path, ": read failed");
    return false;
  }
  *hex = h.HexDigest();
  return true;
}

int RunAttestCommand(const std::vector<std::string>& args) {
  namespace client = preflight::client;
  auto cmd = client::ParseAttestArgs(args);
  if (!cmd.ok()) {
    std::cerr << "preflight attest: " << cmd.status().message() << "\n";
    return client::kExitUsage;
  }
  if (cmd->verdict.help) {
    std::cout << client::AttestUsage();
    return 0;
  }
  std::string model_sha, batch_sha, error;
  if (!FileSha256(cmd->model_path, &model_sha, &error) ||
      (!cmd->batch_path.empty() && !FileSha256(cmd->batch_path, &batch_sha, &error))) {
    std::cerr << "preflight attest: " << error << "\n";
    return client::kExitUsage;
  }
  const auto& v = cmd->verdict;
  auto resp = client::RemoteVerdict(v.server, v.job_id, "", v.timeout_seconds);
  if (!resp.ok()) {
    std::cerr << "preflight attest: " << absl::StatusCodeToString(resp.status().code()) << ": "
              << resp.status().message() << "\n";
    return client::ExitCodeForRpcError(resp.status());
  }
  const client::Attestation a = client::Attest(*resp, model_sha, batch_sha);
  (a.exit_code == 0 ? std::cout : std::cerr) << "preflight attest: " << a.message << "\n";
  return a.exit_code;
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
  if (command == "attest") return RunAttestCommand(args);
  if (command == "version") {
    std::cout << preflight::client::LocalEngineDescription() << "\n";
    return 0;
  }
  std::cerr << "preflight: unknown command '" << command << "'\n" << kUsage;
  return preflight::client::kExitUsage;
}
