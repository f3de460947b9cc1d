#include "client/check_command.h"

#include <algorithm>
#include <cmath>
#include <map>

#include <google/protobuf/util/json_util.h>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/time/time.h"
#include "client/server_target.h"
#include "service/crypto/signature.h"
#include "service/engine/config.h"
#include "service/engine/losses.h"

namespace preflight::client {
namespace {

absl::Status Bad(const std::string& flag, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat("--", flag, ": ", why));
}

absl::StatusOr<double> ParseDouble(const std::string& flag, const std::string& v) {
  double d = 0;
  if (!absl::SimpleAtod(v, &d) || !std::isfinite(d))
    return Bad(flag, "expected a number, got '" + v + "'");
  return d;
}

absl::StatusOr<int32_t> ParseInt(const std::string& flag, const std::string& v) {
  int32_t i = 0;
  if (!absl::SimpleAtoi(v, &i)) return Bad(flag, "expected an integer, got '" + v + "'");
  return i;
}

struct Flag {
  std::string name;
  std::string value;
  bool has_value = false;
};

// "--name=value" / "--name" / "-h"; anything else is a stray argument.
absl::StatusOr<Flag> SplitFlag(const std::string& raw) {
  const std::string arg = raw == "-h" ? "--help" : raw;
  if (!absl::StartsWith(arg, "--")) {
    return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", arg, "'"));
  }
  Flag f;
  f.name = arg.substr(2);
  if (const size_t eq = f.name.find('='); eq != std::string::npos) {
    f.value = f.name.substr(eq + 1);
    f.name = f.name.substr(0, eq);
    f.has_value = true;
  }
  return f;
}

// Maps a config validation error ("lr: ...") back to the CLI flag name.
absl::Status ToFlagError(const absl::Status& s) {
  static const std::map<std::string, std::string> kFlagOf = {
      {"max_steps", "steps"},           {"intra_op_threads", "threads"},
      {"weight_decay", "weight-decay"}, {"target_ratio", "target-ratio"},
      {"target_loss", "target-loss"},   {"determinism_steps", "determinism-steps"},
      {"timeout_seconds", "timeout"},   {"parallel_experiments", "parallel-experiments"}};
  std::string msg(s.message());
  const size_t colon = msg.find(':');
  if (colon == std::string::npos) return s;
  std::string field = msg.substr(0, colon);
  auto it = kFlagOf.find(field);
  const std::string flag = it != kFlagOf.end() ? it->second : field;
  return absl::InvalidArgumentError(absl::StrCat("--", flag, msg.substr(colon)));
}

constexpr char kRemoteUsage[] =
    R"(  --token TOKEN         bearer token for a server started with --tokens (or
                        PREFLIGHT_TOKEN; --token-file FILE keeps it out of ps)
  --tls                 connect with TLS, trusting the system's CAs
  --tls-ca PEM          connect with TLS, trusting this CA bundle (or
                        PREFLIGHT_TLS_CA)
  --tls-cert PEM, --tls-key PEM
                        client certificate and key, for mutual TLS
  --tls-server-name N   the name the server's certificate must carry
  --verify-key PEM      Ed25519 public key of the server's --signing-key:
                        refuse a verdict it did not sign (or PREFLIGHT_VERIFY_KEY)
)";

// The remote options that take a value (names without the dashes).
bool IsRemoteValueFlag(const std::string& name) {
  return name == "token" || name == "token-file" || name == "tls-ca" || name == "tls-cert" ||
         name == "tls-key" || name == "tls-server-name" || name == "verify-key";
}

void SetRemoteValue(const std::string& name, const std::string& value, RemoteOptions* r) {
  if (name == "token") r->token = value;
  if (name == "token-file") r->token_file = value;
  if (name == "tls-ca") r->tls_ca = value;
  if (name == "tls-cert") r->tls_cert = value;
  if (name == "tls-key") r->tls_key = value;
  if (name == "tls-server-name") r->tls_server_name = value;
  if (name == "verify-key") r->verify_key = value;
}

absl::Status ValidateRemote(const RemoteOptions& r) {
  if (!r.token.empty() && !r.token_file.empty()) {
    return absl::InvalidArgumentError("give one of --token and --token-file");
  }
  if (r.tls_cert.empty() != r.tls_key.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  return absl::OkStatus();
}

}  // namespace

std::string CheckUsage() {
  // Defaults come from config.h, the one place they are set.
  return absl::StrFormat(R"(Usage: preflight check --model MODEL.pt --batch BATCH.pt [options]

Trains the model on one fixed batch in an isolated child process and reports
whether it can fit it, with NaN/Inf, gradient-flow, init and determinism checks.

Required:
  --model PATH          torch.export program (torch.export.save, .pt2) or TorchScript file
                        (torch.jit.script/trace + torch.jit.save); detected from content
  --batch PATH          torch.save'd {"inputs": ..., "targets": ...} or (inputs, targets)

Training:
  --loss NAME           one of %s
                        (default %s). A model method loss(output, target)
                        overrides it.
  --optimizer NAME      adam, adamw, sgd (default %s)
  --lr X                learning rate (default %g)
  --weight-decay W      weight decay (default 0)
  --momentum M          SGD momentum (default 0)
  --steps N             maximum overfit steps (default %d)
  --target-ratio R      converged when |loss| <= R * initial loss (default %g)
  --target-loss L       converged when |loss| <= L (overrides --target-ratio)
  --eval-mode           train in eval mode (dropout off, running BN stats)

Run:
  --seed S              seed of every generator (default 0)
  --device D            auto (default), cpu, cuda, cuda:N
  --dtype T             fp32 (default), bf16, fp16: forward and loss under
                        autocast, as mixed-precision training runs them
  --threads N           intra-op threads (default %d; results are pinned per value)
  --timeout SEC         wall-clock limit of the whole check (default %g)
  --determinism-steps N steps replayed for the bitwise determinism check
                        (default %d, 0 disables)
  --no-diagnose         skip the follow-up experiments on a failing curve
  --parallel-experiments N
                        follow-up experiments trained at once: 0 (default)
                        one per --threads CPUs the check may use, 1 one
                        after another; the report is the same either way
  --json                print the report as JSON (protobuf canonical mapping);
                        with --server, the whole CheckResponse (report,
                        requestDigest, cached)
  -h, --help            this text

Service:
  --server SERVERS      run the check on a Preflight server (files over 4 MiB
                        are streamed through Upload); the verdict is stored.
                        HOST:PORT, a list H1:P1,H2:P2 (calls spread round-robin;
                        dead ones skipped) or dns:///NAME:PORT (every address
                        of NAME, e.g. a headless Service)
  --job-id ID           the training job this check gates, for `preflight verdict`
%s
Exit codes: 0 PASS or WARN, 1 FAIL, 2 usage error or unreadable file, 3 ERROR,
5 the server could not answer, 6 the verdict is unsigned or badly signed
(--verify-key), 7 the server refused the token or the job id.
)",
                         engine::BuiltinLossNames(), engine::kDefaultLoss,
                         engine::kDefaultOptimizer, engine::kDefaultLr, engine::kDefaultMaxSteps,
                         engine::kDefaultTargetRatio, engine::kDefaultIntraOpThreads,
                         engine::kDefaultTimeoutSeconds, engine::kDefaultDeterminismSteps,
                         kRemoteUsage);
}

std::string VerdictUsage() {
  return absl::StrCat(R"(Usage: preflight verdict --server SERVERS (--job-id ID | --digest SHA256)
                         [--timeout SEC] [--json] [remote options]

SERVERS: HOST:PORT, a list H1:P1,H2:P2 (round-robin, dead ones skipped) or
dns:///NAME:PORT (every address of NAME).

Prints the stored verdict of an earlier check; never runs a check. Meant as a
scheduler gate: exit 0 PASS or WARN, 1 FAIL, 3 ERROR, 4 no verdict stored,
5 the server could not answer (default --timeout 10), 6 the verdict is
unsigned, badly signed (--verify-key) or failed the store's integrity check,
7 the server refused the token or the job id, 2 usage error.

Remote options:
)",
                      kRemoteUsage);
}

absl::StatusOr<VerdictCommand> ParseVerdictArgs(const std::vector<std::string>& args) {
  VerdictCommand cmd;
  for (size_t i = 0; i < args.size(); ++i) {
    auto flag = SplitFlag(args[i]);
    if (!flag.ok()) return flag.status();
    auto& [name, value, has_value] = *flag;
    if (name == "json" || name == "help" || name == "tls") {
      if (has_value) return Bad(name, "takes no value");
      (name == "json" ? cmd.json : name == "help" ? cmd.help : cmd.remote.tls) = true;
      continue;
    }
    if (name != "server" && name != "job-id" && name != "digest" && name != "timeout" &&
        !IsRemoteValueFlag(name)) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown flag --", name, " (see preflight verdict --help)"));
    }
    if (!has_value) {
      if (i + 1 >= args.size()) return Bad(name, "needs a value");
      value = args[++i];
    }
    SetRemoteValue(name, value, &cmd.remote);
    if (name == "server") cmd.server = value;
    if (name == "job-id") cmd.job_id = value;
    if (name == "digest") cmd.digest = value;
    if (name == "timeout") {
      auto d = ParseDouble(name, value);
      if (!d.ok()) return d.status();
      if (*d <= 0) return Bad(name, "must be > 0");
      cmd.timeout_seconds = *d;
    }
  }
  if (cmd.help) return cmd;
  if (cmd.server.empty()) return Bad("server", "is required");
  if (auto spec = ParseServerSpec(cmd.server); !spec.ok()) {
    return Bad("server", std::string(spec.status().message()));
  }
  if (cmd.job_id.empty() == cmd.digest.empty()) {
    return absl::InvalidArgumentError("give exactly one of --job-id and --digest");
  }
  if (absl::Status s = ValidateRemote(cmd.remote); !s.ok()) return s;
  return cmd;
}

std::string AttestUsage() {
  return absl::StrCat(R"(Usage: preflight attest --server SERVERS (--job-id ID | --digest SHA256)
                        --model PATH [--batch PATH] [--timeout SEC] [--json] [remote options]

Proves at a job's start that it runs the artifacts its stored verdict was given
for: the sha256 of PATH must be the model digest recorded in the verdict of ID
(or of the request digest; and, with --batch, the batch digest too), and the
verdict must be PASS or WARN. Meant as a Slurm prolog / task prolog or a
Kubernetes init container.
Exit 0 attested; 1 refused (digest differs, or the verdict is FAIL/ERROR; the
message names both digests); 2 usage error or unreadable file; 4 no verdict
stored; 5 the server could not answer (default --timeout 10); 6 the verdict is
unsigned, badly signed (--verify-key) or failed the store's integrity check;
7 the server refused the token or the job id.
SERVERS as for `preflight verdict`: HOST:PORT, H1:P1,H2:P2 or dns:///NAME:PORT.

Remote options:
)",
                      kRemoteUsage);
}

absl::StatusOr<AttestCommand> ParseAttestArgs(const std::vector<std::string>& args) {
  AttestCommand cmd;
  std::vector<std::string> rest;
  for (size_t i = 0; i < args.size(); ++i) {
    auto flag = SplitFlag(args[i]);
    if (!flag.ok()) return flag.status();
    auto& [name, value, has_value] = *flag;
    if (name != "model" && name != "batch") {
      rest.push_back(args[i]);
      // A value given as the next argument belongs to that flag.
      if (!has_value && name != "json" && name != "help" && name != "tls" && i + 1 < args.size()) {
        rest.push_back(args[++i]);
      }
      continue;
    }
    if (!has_value) {
      if (i + 1 >= args.size()) return Bad(name, "needs a value");
      value = args[++i];
    }
    (name == "model" ? cmd.model_path : cmd.batch_path) = value;
  }
  auto verdict = ParseVerdictArgs(rest);
  if (!verdict.ok()) {
    return absl::InvalidArgumentError(absl::StrReplaceAll(
        verdict.status().message(), {{"preflight verdict --help", "preflight attest --help"}}));
  }
  cmd.verdict = *std::move(verdict);
  if (cmd.verdict.help) return cmd;
  if (cmd.model_path.empty()) return Bad("model", "is required");
  return cmd;
}

Attestation Attest(const v1::GetVerdictResponse& r, const std::string& model_sha256,
                   const std::string& batch_sha256) {
  const v1::Report& report = r.report();
  // GetVerdict by digest also names the job id last bound to it, if any.
  const std::string job = r.job_id().empty() ? absl::StrCat("request digest ", r.request_digest())
                                             : absl::StrCat("job ", r.job_id());
  if (report.model_sha256().empty()) {
    return {1, absl::StrCat("refused: the verdict of ", job,
                            " records no model digest (stored before verdicts were bound to "
                            "artifacts); check the model again")};
  }
  if (report.model_sha256() != model_sha256) {
    return {1, absl::StrCat("refused: the model file has sha256 ", model_sha256,
                            ", but the "
                            "verdict of ",
                            job, " was given for model sha256 ", report.model_sha256())};
  }
  if (!batch_sha256.empty() && report.batch_sha256() != batch_sha256) {
    return {1, absl::StrCat("refused: the batch file has sha256 ", batch_sha256,
                            ", but the "
                            "verdict of ",
                            job, " was given for batch sha256 ", report.batch_sha256())};
  }
  if (report.verdict() != v1::PASS && report.verdict() != v1::WARN) {
    return {1, absl::StrCat("refused: ", job, " runs the checked model, but its verdict is ",
                            v1::Verdict_Name(report.verdict()))};
  }
  return {0,
          absl::StrCat("attested: ", job, " runs model sha256 ", model_sha256,
                       batch_sha256.empty() ? "" : absl::StrCat(" and batch sha256 ", batch_sha256),
                       ", verdict ", v1::Verdict_Name(report.verdict()))};
}

int ExitCodeForRpcError(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition: return kExitUsage;
    case absl::StatusCode::kNotFound: return kExitNotFound;
    case absl::StatusCode::kDataLoss: return kExitUntrusted;
    case absl::StatusCode::kUnauthenticated:
    case absl::StatusCode::kPermissionDenied: return kExitDenied;
    default: return kExitUnavailable;
  }
}

absl::Status VerifyReportSignature(const std::string& verify_key_path, const v1::Report& report,
                                   const std::string& signature, const std::string& key_id) {
  if (verify_key_path.empty()) return absl::OkStatus();
  auto verifier = crypto::Ed25519Verifier::FromPemFile(verify_key_path);
  if (!verifier.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("--verify-key: ", verifier.status().message()));
  }
  return crypto::VerifyVerdict(**verifier, report.SerializeAsString(), signature, key_id);
}

absl::StatusOr<CheckCommand> ParseCheckArgs(const std::vector<std::string>& args) {
  CheckCommand cmd;
  v1::CheckConfig& c = cmd.config;
  static const std::vector<std::string> kBoolFlags = {"json", "eval-mode", "no-diagnose", "help",
                                                      "tls"};
  for (size_t i = 0; i < args.size(); ++i) {
    auto flag = SplitFlag(args[i]);
    if (!flag.ok()) return flag.status();
    auto& [name, value, has_value] = *flag;
    const bool is_bool = std::find(kBoolFlags.begin(), kBoolFlags.end(), name) != kBoolFlags.end();
    if (is_bool) {
      if (has_value) return Bad(name, "takes no value");
      if (name == "json") cmd.json = true;
      if (name == "eval-mode") c.set_train_mode(false);
      if (name == "no-diagnose") c.set_diagnose(false);
      if (name == "help") cmd.help = true;
      if (name == "tls") cmd.remote.tls = true;
      continue;
    }
    static const std::vector<std::string> kValueFlags = {"model",
                                                         "batch",
                                                         "loss",
                                                         "optimizer",
                                                         "device",
                                                         "dtype",
                                                         "lr",
                                                         "weight-decay",
                                                         "momentum",
                                                         "timeout",
                                                         "target-ratio",
                                                         "target-loss",
                                                         "steps",
                                                         "seed",
                                                         "threads",
                                                         "determinism-steps",
                                                         "server",
                                                         "job-id",
                                                         "parallel-experiments"};
    if (std::find(kValueFlags.begin(), kValueFlags.end(), name) == kValueFlags.end() &&
        !IsRemoteValueFlag(name)) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown flag --", name, " (see preflight check --help)"));
    }
    if (!has_value) {
      if (i + 1 >= args.size()) return Bad(name, "needs a value");
      value = args[++i];
    }
    if (IsRemoteValueFlag(name)) {
      SetRemoteValue(name, value, &cmd.remote);
    } else if (name == "server") {
      cmd.server = value;
    } else if (name == "job-id") {
      cmd.job_id = value;
    } else if (name == "model") {
      cmd.model_path = value;
    } else if (name == "batch") {
      cmd.batch_path = value;
    } else if (name == "loss") {
      c.set_loss(value);
    } else if (name == "optimizer") {
      c.set_optimizer(value);
    } else if (name == "device") {
      c.set_device(value);
    } else if (name == "dtype") {
      c.set_dtype(value);
    } else if (name == "lr" || name == "weight-decay" || name == "momentum" || name == "timeout" ||
               name == "target-ratio" || name == "target-loss") {
      // Syntax only: ranges (and what 0 means) are config.cc's, reported
      // below under the flag's name.
      auto d = ParseDouble(name, value);
      if (!d.ok()) return d.status();
      if (name == "lr") c.set_lr(*d);
      if (name == "weight-decay") c.set_weight_decay(*d);
      if (name == "momentum") c.set_momentum(*d);
      if (name == "timeout") c.set_timeout_seconds(*d);
      if (name == "target-ratio") c.set_target_ratio(*d);
      if (name == "target-loss") c.set_target_loss(*d);
    } else if (name == "seed") {
      uint64_t seed = 0;
      if (!absl::SimpleAtoi(value, &seed)) {
        return Bad(name, "expected a non-negative integer, got '" + value + "'");
      }
      c.set_seed(seed);
    } else if (name == "steps" || name == "threads" || name == "determinism-steps" ||
               name == "parallel-experiments") {
      auto n = ParseInt(name, value);
      if (!n.ok()) return n.status();
      if (name == "steps") c.set_max_steps(*n);
      if (name == "threads") c.set_intra_op_threads(*n);
      if (name == "determinism-steps") c.set_determinism_steps(*n);
      if (name == "parallel-experiments") c.set_parallel_experiments(*n);
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown flag --", name, " (see preflight check --help)"));
    }
  }
  if (cmd.help) return cmd;
  if (cmd.model_path.empty()) return Bad("model", "is required");
  if (cmd.batch_path.empty()) return Bad("batch", "is required");
  if (!cmd.job_id.empty() && cmd.server.empty()) return Bad("job-id", "needs --server");
  if (!cmd.server.empty()) {
    if (auto spec = ParseServerSpec(cmd.server); !spec.ok()) {
      return Bad("server", std::string(spec.status().message()));
    }
  }
  if (absl::Status s = ValidateRemote(cmd.remote); !s.ok()) return s;
  engine::ApplyDefaults(&c);
  if (absl::Status s = engine::ValidateConfig(c); !s.ok()) return ToFlagError(s);
  return cmd;
}

int ExitCodeFor(v1::Verdict verdict) {
  switch (verdict) {
    case v1::PASS:
    case v1::WARN: return kExitPass;
    case v1::FAIL: return kExitFail;
    default: return kExitError;
  }
}

std::string ReportToJson(const v1::Report& report) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.always_print_primitive_fields = true;
  std::string out;
  if (!google::protobuf::util::MessageToJsonString(report, &out, options).ok()) {
    return "{}";
  }
  return out;
}

std::string Sparkline(const std::vector<double>& values, int width) {
  static const char* kBars[] = {"▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"};
  std::vector<double> v;
  for (double x : values) {
    if (std::isfinite(x)) v.push_back(x);
  }
  if (v.empty() || width <= 0) return "";
  bool positive = true;
  double lo = v[0], hi = v[0];
  for (double x : v) {
    positive &= x > 0;
    lo = std::min(lo, x);
    hi = std::max(hi, x);
  }
  const bool log_scale = positive && hi / lo > 10;
  auto tr = [&](double x) { return log_scale ? std::log10(x) : x; };
  const double tlo = tr(lo), thi = tr(hi);
  const size_t cells = std::min<size_t>(v.size(), static_cast<size_t>(width));
  std::string out;
  for (size_t c = 0; c < cells; ++c) {
    const size_t b = c * v.size() / cells, e = std::max(b + 1, (c + 1) * v.size() / cells);
    double sum = 0;
    for (size_t i = b; i < e; ++i) sum += tr(v[i]);
    const double m = sum / static_cast<double>(e - b);
    int level = thi > tlo ? static_cast<int>(std::lround(7 * (m - tlo) / (thi - tlo))) : 0;
    out += kBars[std::clamp(level, 0, 7)];
  }
  return out;
}

std::string RenderReport(const v1::Report& r, const std::string& model_path,
                         const std::string& batch_path) {
  std::string out;
  const auto& c = r.config();
  absl::StrAppendFormat(&out, "Preflight %s  %s + %s\n", v1::Verdict_Name(r.verdict()), model_path,
                        batch_path);
  absl::StrAppendFormat(&out, "  loss %s, %s lr %g, wd %g, max %d steps, seed %d, %s\n",
                        c.loss().empty() ? "-" : c.loss(), c.optimizer(), c.lr(), c.weight_decay(),
                        c.max_steps(), c.seed(),
                        r.environment().device().empty() ? c.device() : r.environment().device());
  if (r.loss_curve_size() > 0) {
    std::vector<double> curve(r.loss_curve().begin(), r.loss_curve().end());
    absl::StrAppendFormat(&out, "  curve %.4g %s %.4g  (%d steps%s)\n", curve.front(),
                          Sparkline(curve), curve.back(), r.steps_run(),
                          r.converged() ? ", converged" : "");
  }
  out += "\n";
  for (const auto& f : r.findings()) {
    absl::StrAppendFormat(&out, "  %-5s %-32s %s\n", v1::Finding::Severity_Name(f.severity()),
                          v1::FindingCode_Name(f.code()), f.message());
    if (!f.hint().empty() && f.code() != v1::OVERFIT_CONVERGED) {
      absl::StrAppendFormat(&out, "        hint: %s\n", f.hint());
    }
  }
  if (r.experiments_size() > 0) {
    out += "\n  experiments:\n";
    for (const auto& e : r.experiments()) {
      absl::StrAppendFormat(&out, "    %-15s %-9s %-17s loss %.4g -> %.4g in %d steps\n", e.name(),
                            v1::Experiment::Outcome_Name(e.outcome()),
                            v1::FindingCode_Name(e.curve()), e.initial_loss(), e.final_loss(),
                            e.steps_run());
    }
  }
  const auto& t = r.timing();
  absl::StrAppendFormat(&out,
                        "\n  time %.2fs (load %.2f, init %.2f, overfit %.2f, diagnosis %.2f, "
                        "determinism %.2f; worker %.2f)\n",
                        t.total_seconds(), t.load_seconds(), t.init_checks_seconds(),
                        t.overfit_seconds(), t.diagnosis_seconds(), t.determinism_seconds(),
                        t.worker_seconds());
  if (t.diagnosis_parallelism() > 1) {
    absl::StrAppendFormat(&out, "  diagnosis: %d experiments at once, %.2fs of runs in %.2fs\n",
                          t.diagnosis_parallelism(), t.diagnosis_serial_seconds(),
                          t.diagnosis_seconds());
  }
  if (!r.environment().sandbox().empty()) {
    absl::StrAppend(&out, "  sandbox ", r.environment().sandbox(), "\n");
  }
  return out;
}

std::string RenderVerdict(const v1::GetVerdictResponse& r) {
  std::string out =
      absl::StrCat("verdict ", v1::Verdict_Name(r.report().verdict()), "  job ",
                   r.job_id().empty() ? "-" : r.job_id(), "  digest ", r.request_digest(), "\n");
  for (const auto& f : r.report().findings()) {
    if (f.severity() < v1::Finding::WARN) continue;
    absl::StrAppend(&out, "  ", v1::FindingCode_Name(f.code()), ": ", f.message(), "\n");
  }
  if (r.bindings_size() > 1) {
    absl::StrAppend(&out, "  rebound: job ", r.job_id(), " pointed at ", r.bindings_size() - 1,
                    " earlier check(s):\n");
    for (int i = 0; i + 1 < r.bindings_size(); ++i) {
      const v1::JobBinding& b = r.bindings(i);
      absl::StrAppend(
          &out, "    ", v1::Verdict_Name(b.verdict()), "  digest ", b.request_digest(), "  bound ",
          absl::FormatTime("%Y-%m-%d %H:%M:%S UTC",
                           absl::FromUnixSeconds(static_cast<int64_t>(b.bound_unix_seconds())),
                           absl::UTCTimeZone()),
          "\n");
    }
  }
  return out;
}

}  // namespace preflight::client
