#include "client/check_command.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace preflight::client {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(ParseCheckArgs, DefaultsAndOverrides) {
  auto cmd = ParseCheckArgs({"--model", "m.pt", "--batch=b.pt", "--lr", "0.01", "--steps", "100",
                             "--optimizer", "sgd", "--momentum", "0.9", "--json", "--eval-mode",
                             "--seed", "7", "--device", "cpu", "--dtype", "bf16"});
  ASSERT_TRUE(cmd.ok()) << cmd.status();
  EXPECT_EQ(cmd->model_path, "m.pt");
  EXPECT_EQ(cmd->batch_path, "b.pt");
  EXPECT_TRUE(cmd->json);
  EXPECT_DOUBLE_EQ(cmd->config.lr(), 0.01);
  EXPECT_EQ(cmd->config.max_steps(), 100);
  EXPECT_EQ(cmd->config.optimizer(), "sgd");
  EXPECT_DOUBLE_EQ(cmd->config.momentum(), 0.9);
  EXPECT_FALSE(cmd->config.train_mode());
  EXPECT_EQ(cmd->config.seed(), 7u);
  EXPECT_EQ(cmd->config.dtype(), "bf16");
  EXPECT_EQ(cmd->config.determinism_steps(), 20);
}

TEST(ParseCheckArgs, ErrorsNameTheFlag) {
  struct Case {
    std::vector<std::string> args;
    std::string want;
  } cases[] = {
      {{"--batch", "b"}, "--model: is required"},
      {{"--model", "m"}, "--batch: is required"},
      {{"--model", "m", "--batch", "b", "--lr", "-1"},
       "--lr: must be a finite number in (0, 1000], got -1"},
      {{"--model", "m", "--batch", "b", "--lr", "fast"}, "--lr: expected a number"},
      {{"--model", "m", "--batch", "b", "--loss", "hinge"}, "--loss: unknown loss 'hinge'"},
      {{"--model", "m", "--batch", "b", "--optimizer", "lbfgs"}, "--optimizer: unknown"},
      {{"--model", "m", "--batch", "b", "--steps", "0"}, "--steps: must be in [1, 100000], got 0"},
      {{"--model", "m", "--batch", "b", "--device", "tpu"}, "--device: expected auto"},
      {{"--model", "m", "--batch", "b", "--dtype", "fp8"}, "--dtype: unknown dtype 'fp8'"},
      {{"--model", "m", "--batch", "b", "--momentum", "0.9"}, "--momentum: only applies"},
      {{"--model", "m", "--batch", "b", "--frobnicate"}, "unknown flag --frobnicate"},
      {{"--model", "m", "--batch", "b", "--json=1"}, "--json: takes no value"},
      {{"--model"}, "--model: needs a value"},
      {{"stray"}, "unexpected argument 'stray'"},
  };
  for (const auto& tc : cases) {
    SCOPED_TRACE(tc.want);
    auto cmd = ParseCheckArgs(tc.args);
    ASSERT_FALSE(cmd.ok());
    EXPECT_EQ(cmd.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(cmd.status().message()), HasSubstr(tc.want));
  }
}

TEST(ParseCheckArgs, HelpNeedsNothingElse) {
  auto cmd = ParseCheckArgs({"--help"});
  ASSERT_TRUE(cmd.ok());
  EXPECT_TRUE(cmd->help);
  EXPECT_THAT(CheckUsage(), HasSubstr("Exit codes"));
}

TEST(ExitCodeFor, MapsVerdicts) {
  EXPECT_EQ(ExitCodeFor(v1::PASS), 0);
  EXPECT_EQ(ExitCodeFor(v1::WARN), 0);
  EXPECT_EQ(ExitCodeFor(v1::FAIL), 1);
  EXPECT_EQ(ExitCodeFor(v1::ERROR), 3);
  EXPECT_EQ(ExitCodeFor(v1::VERDICT_UNSPECIFIED), 3);
}

TEST(Sparkline, ShapesAndBounds) {
  EXPECT_EQ(Sparkline({}), "");
  EXPECT_EQ(Sparkline({1, 1, 1}), "▁▁▁");
  EXPECT_EQ(Sparkline({0, 7}), "▁█");
  const std::string s = Sparkline(std::vector<double>(1000, 2.0), 10);
  EXPECT_EQ(s, "▁▁▁▁▁▁▁▁▁▁");
  // Log scale for positive curves spanning decades: the midpoint decade
  // sits mid-height, not on the floor.
  EXPECT_EQ(Sparkline({100, 10, 1}), "█▅▁");
}

TEST(ReportToJson, CanonicalNamesAndDefaults) {
  v1::Report r;
  r.set_verdict(v1::FAIL);
  auto* f = r.add_findings();
  f->set_code(v1::LOSS_PLATEAU);
  f->set_severity(v1::Finding::FAIL);
  const std::string j = ReportToJson(r);
  EXPECT_THAT(j, HasSubstr("\"verdict\": \"FAIL\""));
  EXPECT_THAT(j, HasSubstr("\"code\": \"LOSS_PLATEAU\""));
  EXPECT_THAT(j, HasSubstr("\"stepsRun\": 0"));
}

TEST(RenderReport, NamesTheSandboxOnlyWhenThereWasOne) {
  v1::Report r;
  r.set_verdict(v1::PASS);
  EXPECT_THAT(RenderReport(r, "m.pt", "b.pt"), Not(HasSubstr("sandbox")))
      << "local checks run in a plain child";
  r.mutable_environment()->set_sandbox("landlock v3 (read: inputs + 2 dirs; write: nothing)");
  EXPECT_THAT(RenderReport(r, "m.pt", "b.pt"),
              HasSubstr("\n  sandbox landlock v3 (read: inputs + 2 dirs; write: nothing)\n"));
}

}  // namespace
}  // namespace preflight::client

namespace preflight::client {
namespace {

using ::testing::HasSubstr;

v1::GetVerdictResponse Stored(v1::Verdict verdict, const std::string& model_sha,
                              const std::string& batch_sha) {
  v1::GetVerdictResponse r;
  r.set_job_id("train/run-1");
  r.set_request_digest(std::string(64, 'd'));
  r.mutable_report()->set_verdict(verdict);
  r.mutable_report()->set_model_sha256(model_sha);
  r.mutable_report()->set_batch_sha256(batch_sha);
  return r;
}

TEST(Attest, OnlyTheCheckedArtifactsWithAnAdmittingVerdictPass) {
  const std::string m(64, 'a'), b(64, 'b'), other(64, 'c');
  EXPECT_EQ(Attest(Stored(v1::PASS, m, b), m, "").exit_code, 0);
  EXPECT_EQ(Attest(Stored(v1::WARN, m, b), m, b).exit_code, 0);
  const Attestation wrong_model = Attest(Stored(v1::PASS, m, b), other, "");
  EXPECT_EQ(wrong_model.exit_code, 1);
  EXPECT_THAT(wrong_model.message, HasSubstr(other));  // Both digests named.
  EXPECT_THAT(wrong_model.message, HasSubstr(m));
  const Attestation wrong_batch = Attest(Stored(v1::PASS, m, b), m, other);
  EXPECT_EQ(wrong_batch.exit_code, 1);
  EXPECT_THAT(wrong_batch.message, HasSubstr("batch sha256 " + b));
  EXPECT_THAT(Attest(Stored(v1::FAIL, m, b), m, "").message, HasSubstr("verdict is FAIL"));
  EXPECT_EQ(Attest(Stored(v1::FAIL, m, b), m, "").exit_code, 1);
  EXPECT_THAT(Attest(Stored(v1::PASS, "", ""), m, "").message, HasSubstr("no model digest"));
}

TEST(ParseAttestArgs, NeedsTheModelAndAJobId) {
  auto ok = ParseAttestArgs({"--server", "h:1", "--job-id", "j", "--model=m.pt", "--batch", "b"});
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->verdict.server, "h:1");
  EXPECT_EQ(ok->verdict.job_id, "j");
  EXPECT_EQ(ok->model_path, "m.pt");
  EXPECT_EQ(ok->batch_path, "b");
  EXPECT_THAT(std::string(ParseAttestArgs({"--server", "h:1", "--job-id", "j"}).status().message()),
              HasSubstr("--model: is required"));
  // A request digest names a verdict as well as a job id does.
  auto by_digest =
      ParseAttestArgs({"--server", "h:1", "--digest", std::string(64, 'a'), "--model", "m"});
  ASSERT_TRUE(by_digest.ok()) << by_digest.status();
  EXPECT_EQ(by_digest->verdict.digest, std::string(64, 'a'));
  EXPECT_EQ(by_digest->verdict.job_id, "");
  EXPECT_THAT(std::string(ParseAttestArgs({"--model", "m", "--bogus"}).status().message()),
              HasSubstr("preflight attest --help"));
}

TEST(ParseServerFlag, ListsAndDnsTargetsAreAcceptedBadOnesNamed) {
  // The forms of --server, for each command that takes it; the full grammar
  // is server_target_test's.
  for (const std::string server : {"h:1", "10.0.0.1:50051,10.0.0.2:50051", "a:1, b:2",
                                   "dns:///preflight.preflight.svc:50051"}) {
    SCOPED_TRACE(server);
    EXPECT_TRUE(ParseVerdictArgs({"--server", server, "--job-id", "j"}).ok());
    EXPECT_TRUE(ParseCheckArgs({"--model", "m", "--batch", "b", "--server", server}).ok());
  }
  struct Case {
    std::string server, message;
  } cases[] = {
      {"h1:1,,h2:2", "--server: empty address in the list 'h1:1,,h2:2'"},
      {"host", "--server: 'host' has no port (expected HOST:PORT)"},
      {"http://h:1", "--server: unsupported scheme 'http'"},
  };
  for (const auto& tc : cases) {
    SCOPED_TRACE(tc.server);
    auto v = ParseVerdictArgs({"--server", tc.server, "--job-id", "j"});
    EXPECT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(v.status().message()), HasSubstr(tc.message));
    auto c = ParseCheckArgs({"--model", "m", "--batch", "b", "--server", tc.server});
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(c.status().message()), HasSubstr(tc.message));
    auto a = ParseAttestArgs({"--server", tc.server, "--job-id", "j", "--model", "m"});
    EXPECT_THAT(std::string(a.status().message()), HasSubstr(tc.message));
  }
}

TEST(ParseRemoteOptions, EveryRemoteCommandTakesCredentialsAndTrust) {
  const std::vector<std::string> remote = {
      "--token-file",      "t",         "--tls", "--tls-ca",     "ca.pem",
      "--tls-cert=c.pem",  "--tls-key", "k",     "--verify-key", "v.pem",
      "--tls-server-name", "svc"};
  auto with = [&](std::vector<std::string> args) {
    args.insert(args.end(), remote.begin(), remote.end());
    return args;
  };
  auto check = ParseCheckArgs(with({"--model", "m", "--batch", "b", "--server", "h:1"}));
  auto verdict = ParseVerdictArgs(with({"--server", "h:1", "--job-id", "j"}));
  auto attest = ParseAttestArgs(with({"--server", "h:1", "--job-id", "j", "--model", "m"}));
  ASSERT_TRUE(check.ok()) << check.status();
  ASSERT_TRUE(verdict.ok()) << verdict.status();
  ASSERT_TRUE(attest.ok()) << attest.status();
  for (const RemoteOptions* r : {&check->remote, &verdict->remote, &attest->verdict.remote}) {
    EXPECT_EQ(r->token_file, "t");
    EXPECT_TRUE(r->tls);
    EXPECT_EQ(r->tls_ca, "ca.pem");
    EXPECT_EQ(r->tls_cert, "c.pem");
    EXPECT_EQ(r->tls_key, "k");
    EXPECT_EQ(r->verify_key, "v.pem");
    EXPECT_EQ(r->tls_server_name, "svc");
  }
  EXPECT_THAT(std::string(ParseVerdictArgs({"--server", "h:1", "--job-id", "j", "--token", "a",
                                            "--token-file", "f"})
                              .status()
                              .message()),
              HasSubstr("one of --token and --token-file"));
  EXPECT_THAT(std::string(ParseVerdictArgs({"--server", "h:1", "--job-id", "j", "--tls-cert", "c"})
                              .status()
                              .message()),
              HasSubstr("--tls-cert and --tls-key go together"));
}

TEST(ExitCodeForRpcError, RefusalsAndUntrustedVerdictsHaveTheirOwnCodes) {
  // A gate must not mistake them for an outage (which it may admit).
  EXPECT_EQ(ExitCodeForRpcError(absl::UnauthenticatedError("no token")), kExitDenied);
  EXPECT_EQ(ExitCodeForRpcError(absl::PermissionDeniedError("tenant")), kExitDenied);
  EXPECT_EQ(ExitCodeForRpcError(absl::DataLossError("altered")), kExitUntrusted);
  EXPECT_EQ(ExitCodeForRpcError(absl::UnavailableError("down")), kExitUnavailable);
  EXPECT_EQ(ExitCodeForRpcError(absl::NotFoundError("none")), kExitNotFound);
}

TEST(VerifyReportSignature, AnUnusableKeyFileIsAUsageError) {
  v1::Report r;
  const absl::Status s = VerifyReportSignature("/nonexistent/v.pem", r, "sig", "ed25519:x");
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("--verify-key: /nonexistent/v.pem"));
  EXPECT_TRUE(VerifyReportSignature("", r, "", "").ok()) << "no key: nothing to verify";
}

TEST(Attest, ByDigestNamesTheDigest) {
  v1::GetVerdictResponse r = Stored(v1::PASS, "", "");
  r.set_job_id("");
  r.set_request_digest(std::string(64, 'd'));
  r.mutable_report()->set_model_sha256(std::string(64, 'm'));
  const Attestation a = Attest(r, std::string(64, 'x'), "");
  EXPECT_EQ(a.exit_code, 1);
  EXPECT_THAT(a.message, HasSubstr("verdict of request digest " + std::string(64, 'd')));
}

TEST(RenderVerdict, ShowsWhatARebindingReplaced) {
  v1::GetVerdictResponse r = Stored(v1::PASS, "", "");
  auto* first = r.add_bindings();
  first->set_request_digest(std::string(64, 'e'));
  first->set_verdict(v1::FAIL);
  first->set_bound_unix_seconds(1764633600);  // 2025-12-02 00:00:00 UTC
  auto* second = r.add_bindings();
  second->set_request_digest(r.request_digest());
  second->set_verdict(v1::PASS);
  const std::string text = RenderVerdict(r);
  EXPECT_THAT(text, HasSubstr("verdict PASS  job train/run-1  digest " + r.request_digest()));
  EXPECT_THAT(text, HasSubstr("rebound: job train/run-1 pointed at 1 earlier check(s)"));
  EXPECT_THAT(
      text, HasSubstr("FAIL  digest " + std::string(64, 'e') + "  bound 2025-12-02 00:00:00 UTC"));
  r.clear_bindings();
  EXPECT_THAT(RenderVerdict(r), ::testing::Not(HasSubstr("rebound")));
}

}  // namespace
}  // namespace preflight::client
