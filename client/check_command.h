// The `preflight check` command line: parsing into a validated request, and
// rendering a report for people (table + sparkline) or machines (JSON).
//
//   auto cmd = ParseCheckArgs({"--model", "m.pt", "--batch", "b.pt"});
//   if (!cmd.ok()) { std::cerr << cmd.status().message(); return kExitUsage; }
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "preflight/v1/preflight.pb.h"
#include "preflight/v1/report.pb.h"

namespace preflight::client {

// Exit codes of `preflight check` (documented in --help and the README).
inline constexpr int kExitPass = 0;         // PASS or WARN.
inline constexpr int kExitFail = 1;         // FAIL.
inline constexpr int kExitUsage = 2;        // Bad flags or unreadable input files.
inline constexpr int kExitError = 3;        // ERROR: the check could not run.
inline constexpr int kExitNotFound = 4;     // `verdict`: no stored verdict.
inline constexpr int kExitUnavailable = 5;  // The service could not answer.
// The verdict cannot be trusted: unsigned or badly signed (with
// --verify-key), or its stored row failed the store's integrity check.
inline constexpr int kExitUntrusted = 6;
// The server refused the caller: no or unknown token (UNAUTHENTICATED), or
// the tenant may not use that job id (PERMISSION_DENIED).
inline constexpr int kExitDenied = 7;

// How to reach a server and whom to trust, shared by every remote command:
// --token / --token-file, --tls, --tls-ca, --tls-cert, --tls-key,
// --tls-server-name, --verify-key. The environment (PREFLIGHT_TOKEN,
// PREFLIGHT_TLS_CA, PREFLIGHT_VERIFY_KEY) fills what the flags leave empty;
// main applies it.
struct RemoteOptions {
  std::string token;            // Bearer token (visible in `ps`; prefer the file or env).
  std::string token_file;       // File holding the token (surrounding whitespace ignored).
  bool tls = false;             // TLS with the system's roots (implied by tls_ca).
  std::string tls_ca;           // PEM CA bundle that signed the server's certificate.
  std::string tls_cert;         // Client certificate, for a server with mutual TLS.
  std::string tls_key;          // Its private key.
  std::string tls_server_name;  // Name to expect in the server's certificate.
  std::string verify_key;       // PEM Ed25519 public key: refuse verdicts it did not sign.
};

struct CheckCommand {
  std::string model_path;
  std::string batch_path;
  v1::CheckConfig config;  // Defaults applied and validated.
  bool json = false;
  bool help = false;
  std::string server;  // HOST:PORT: run on a Preflight server instead of locally.
  std::string job_id;  // With --server: the training job this check gates.
  RemoteOptions remote;
};

struct VerdictCommand {
  std::string server;
  std::string job_id;
  std::string digest;
  double timeout_seconds = 10;
  bool json = false;
  bool help = false;
  RemoteOptions remote;
};

// Parses the arguments after `verdict`.
absl::StatusOr<VerdictCommand> ParseVerdictArgs(const std::vector<std::string>& args);
std::string VerdictUsage();

// `preflight attest`: a job proves, at its start, that it runs the artifacts
// its verdict was given for (a Slurm prolog, a Kubernetes init container).
struct AttestCommand {
  VerdictCommand verdict;  // --server, --job-id or --digest, --timeout, --json, remote options.
  std::string model_path;  // Required.
  std::string batch_path;  // Optional: checked too when given.
};
absl::StatusOr<AttestCommand> ParseAttestArgs(const std::vector<std::string>& args);
std::string AttestUsage();

// The decision of `preflight attest`: exit 0 only when the verdict admits
// the job (PASS or WARN) and was given for exactly these artifacts (sha256
// of the model, and of the batch when `batch_sha256` is not empty); else 1
// with a message naming both digests (or the verdict).
struct Attestation {
  int exit_code = 1;
  std::string message;
};
Attestation Attest(const v1::GetVerdictResponse& verdict, const std::string& model_sha256,
                   const std::string& batch_sha256);

// Exit code for a failed RPC: 2 for a request the server rejected as
// invalid, 4 for NOT_FOUND, 6 for DATA_LOSS (a stored verdict that failed
// its integrity check), 7 for UNAUTHENTICATED / PERMISSION_DENIED, 5 when
// the service could not answer.
int ExitCodeForRpcError(const absl::Status& status);

// With `verify_key_path` set: OK only when `signature` is `key_id`'s valid
// Ed25519 signature over the serialized `report` (crypto/signature.h);
// UNAUTHENTICATED saying why not (exit kExitUntrusted); FAILED_PRECONDITION
// when the key file cannot be used (a usage error). OK when no key is given.
absl::Status VerifyReportSignature(const std::string& verify_key_path, const v1::Report& report,
                                   const std::string& signature, const std::string& key_id);

// Parses the arguments after `check`. INVALID_ARGUMENT naming the flag on
// any problem. Accepts --flag value and --flag=value.
absl::StatusOr<CheckCommand> ParseCheckArgs(const std::vector<std::string>& args);

// The --help text of `preflight check`.
std::string CheckUsage();

// Exit code for a verdict.
int ExitCodeFor(v1::Verdict verdict);

// Canonical protobuf JSON of the report (stable field order, all fields).
std::string ReportToJson(const v1::Report& report);

// A short human summary: verdict, loss sparkline, findings with hints,
// experiments and timing.
std::string RenderReport(const v1::Report& report, const std::string& model_path,
                         const std::string& batch_path);

// Unicode sparkline of a curve in at most `width` cells (log scale when the
// curve is positive and spans more than a decade).
std::string Sparkline(const std::vector<double>& values, int width = 48);

// `preflight verdict`'s text: the verdict, its job id and digest, the
// findings at WARN and above, and, when the job id was rebound, what it
// pointed at before (verdict, digest, time), oldest first.
std::string RenderVerdict(const v1::GetVerdictResponse& response);

}  // namespace preflight::client
