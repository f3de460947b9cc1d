// The zygote's classification of a job's outcome: from how the child ended
// and the incidents its sandbox recorded, never from message text.
#include "service/worker/classify.h"

#include <errno.h>
#include <signal.h>

#include <map>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace preflight::worker {
namespace {

using ::testing::HasSubstr;

constexpr int64_t kLimit = int64_t{8} << 30;

v1::JobIncident Denied(const std::string& path) {
  v1::JobIncident i;
  i.set_kind(v1::JobIncident::FILE_ACCESS_DENIED);
  i.set_errno_value(EACCES);
  i.set_path(path);
  i.set_call("open64");
  i.set_raised(true);
  return i;
}

v1::JobIncident AllocFailed(int64_t bytes) {
  v1::JobIncident i;
  i.set_kind(v1::JobIncident::ALLOCATION_FAILED);
  i.set_errno_value(ENOMEM);
  i.set_bytes(bytes);
  i.set_call("posix_memalign");
  i.set_raised(true);
  return i;
}

v1::JobIncident Tolerated(v1::JobIncident i) {
  i.set_raised(false);
  return i;
}

v1::Report ReportWith(v1::FindingCode code, v1::Finding::Severity severity,
                      const std::string& message) {
  v1::Report r;
  auto* f = r.add_findings();
  f->set_code(code);
  f->set_severity(severity);
  f->set_message(message);
  r.set_verdict(severity == v1::Finding::ERROR ? v1::ERROR : v1::FAIL);
  r.set_completion(v1::COMPLETION_FINAL);  // As engine::RunCheck marks every report.
  return r;
}

ChildOutcome Returned(const v1::JobRecord& record) {
  ChildOutcome o;
  o.status = ChildStatus::kOk;
  o.payload = record.SerializeAsString();
  o.seconds = 1.5;
  return o;
}

TEST(ReportFromJob, ClassifiesFromTheRecordNotTheMessage) {
  struct Case {
    std::string name;
    v1::JobRecord record;
    v1::FindingCode want;
    v1::Completion completion;
  };
  auto record = [](v1::Report report, std::vector<v1::JobIncident> incidents,
                   std::string failure = "") {
    v1::JobRecord r;
    if (failure.empty()) *r.mutable_report() = std::move(report);
    for (auto& i : incidents) *r.add_incidents() = std::move(i);
    r.set_failure(failure);
    return r;
  };
  // Messages deliberately say nothing (or the wrong thing): only the record counts.
  const Case cases[] = {
      {"refused open behind a forward error",
       record(ReportWith(v1::FORWARD_ERROR, v1::Finding::FAIL, "opaque"), {Denied("/etc/passwd")}),
       v1::SANDBOX_VIOLATION, v1::COMPLETION_FINAL},
      {"refused open behind an artifact error",
       record(ReportWith(v1::ARTIFACT_INVALID, v1::Finding::ERROR, "x"), {Denied("/store/b/1")}),
       v1::SANDBOX_VIOLATION, v1::COMPLETION_FINAL},
      {"failed allocation behind a forward error",
       record(ReportWith(v1::FORWARD_ERROR, v1::Finding::FAIL, "Permission denied"),
              {AllocFailed(int64_t{512} << 30)}),
       v1::WORKER_OOM, v1::COMPLETION_TRANSIENT},
      {"allocation wins over a denied open",
       record(ReportWith(v1::FORWARD_ERROR, v1::Finding::FAIL, ""),
              {Denied("/x"), AllocFailed(1 << 30)}),
       v1::WORKER_OOM, v1::COMPLETION_TRANSIENT},
      {"bad_alloc escaping the check", record({}, {AllocFailed(0)}, "std::bad_alloc"),
       v1::WORKER_OOM, v1::COMPLETION_TRANSIENT},
      {"'Permission denied' text without a record stays a forward error",
       record(ReportWith(v1::FORWARD_ERROR, v1::Finding::FAIL, "open: Permission denied"), {}),
       v1::FORWARD_ERROR, v1::COMPLETION_FINAL},
      {"'can't allocate memory' text without a record stays a forward error",
       record(ReportWith(v1::FORWARD_ERROR, v1::Finding::FAIL, "can't allocate memory"), {}),
       v1::FORWARD_ERROR, v1::COMPLETION_FINAL},
      {"a tolerated probe behind an unrelated forward error changes nothing",
       record(ReportWith(v1::FORWARD_ERROR, v1::Finding::FAIL, "shape mismatch"),
              {Tolerated(Denied("/proc/cpuinfo"))}),
       v1::FORWARD_ERROR, v1::COMPLETION_FINAL},
      {"a tolerated allocation failure changes nothing",
       record(ReportWith(v1::FORWARD_ERROR, v1::Finding::FAIL, ""),
              {Tolerated(AllocFailed(1 << 30))}),
       v1::FORWARD_ERROR, v1::COMPLETION_FINAL},
      {"the raised refusal is the one named",
       record(ReportWith(v1::FORWARD_ERROR, v1::Finding::FAIL, ""),
              {Tolerated(Denied("/proc/cpuinfo")), Denied("/etc/passwd")}),
       v1::SANDBOX_VIOLATION, v1::COMPLETION_FINAL},
      {"a denied open the check survived changes nothing",
       record(ReportWith(v1::LOSS_FLAT, v1::Finding::FAIL, "flat"), {Denied("/sys/x")}),
       v1::LOSS_FLAT, v1::COMPLETION_FINAL},
      {"escaped exception without incidents is a crash", record({}, {}, "boom"), v1::WORKER_CRASHED,
       v1::COMPLETION_TRANSIENT},
  };
  for (const auto& tc : cases) {
    SCOPED_TRACE(tc.name);
    const v1::Report r = ReportFromJob(Returned(tc.record), v1::CheckConfig(), kLimit);
    ASSERT_GE(r.findings_size(), 1);
    EXPECT_EQ(r.findings(0).code(), tc.want);
    EXPECT_EQ(r.completion(), tc.completion);
  }
}

TEST(ReportFromJob, ViolationNamesThePathAndKeepsTheOriginalFinding) {
  v1::JobRecord record;
  *record.mutable_report() = ReportWith(v1::FORWARD_ERROR, v1::Finding::FAIL, "from_file failed");
  record.mutable_report()->mutable_environment()->set_sandbox("landlock v7");
  *record.add_incidents() = Denied("/var/lib/preflight/blobs/eee");
  const v1::Report r = ReportFromJob(Returned(record), v1::CheckConfig(), kLimit);
  ASSERT_EQ(r.findings_size(), 1);
  const v1::Finding& f = r.findings(0);
  EXPECT_EQ(f.severity(), v1::Finding::ERROR);
  EXPECT_EQ(r.verdict(), v1::ERROR);
  EXPECT_THAT(f.message(), HasSubstr("/var/lib/preflight/blobs/eee"));
  EXPECT_THAT(f.message(), HasSubstr("from_file failed"));
  EXPECT_EQ(r.environment().sandbox(), "landlock v7");
  EXPECT_DOUBLE_EQ(r.timing().worker_seconds(), 1.5);
  bool original = false;
  for (const auto& e : f.evidence()) {
    if (e.name() == "original_code") original = e.text() == "FORWARD_ERROR";
  }
  EXPECT_TRUE(original);
}

// TorchScript's torch.save (aten::save) opens its file with std::fstream and
// ignores the failure: the check goes on and would PASS. A refused write is
// the model's, raised or not; a refused read that raised nothing is LibTorch
// probing the host and changes nothing.
TEST(ReportFromJob, ARefusedWriteIsAViolationEvenWhenNothingRaised) {
  v1::JobRecord passed;
  passed.mutable_report()->set_verdict(v1::PASS);
  passed.mutable_report()->set_completion(v1::COMPLETION_FINAL);
  *passed.add_incidents() = Tolerated(Denied("/proc/cpuinfo"));
  v1::JobIncident write = Tolerated(Denied("/tmp/preflight-hostile-save"));
  write.set_write(true);
  write.set_call("fopen64");

  v1::Report r = ReportFromJob(Returned(passed), v1::CheckConfig(), kLimit);
  EXPECT_EQ(r.verdict(), v1::PASS) << "a tolerated read refusal changes nothing";

  *passed.add_incidents() = write;
  r = ReportFromJob(Returned(passed), v1::CheckConfig(), kLimit);
  EXPECT_EQ(r.verdict(), v1::ERROR);
  EXPECT_EQ(r.completion(), v1::COMPLETION_FINAL);
  ASSERT_EQ(r.findings_size(), 1);
  const v1::Finding& f = r.findings(0);
  EXPECT_EQ(f.code(), v1::SANDBOX_VIOLATION);
  EXPECT_THAT(f.message(), HasSubstr("write /tmp/preflight-hostile-save (fopen64)"));
  EXPECT_THAT(f.message(), HasSubstr("PASS verdict the check reached is withheld"));
  std::map<std::string, std::string> text;
  for (const auto& e : f.evidence()) text[e.name()] = e.text();
  EXPECT_EQ(text["access"], "write");
  EXPECT_EQ(text["withheld_verdict"], "PASS");
  EXPECT_EQ(text["path"], "/tmp/preflight-hostile-save");

  // A write refusal also wins over the unrelated error that ended the check.
  v1::JobRecord failed;
  *failed.mutable_report() = ReportWith(v1::LOSS_ERROR, v1::Finding::FAIL, "bad loss");
  *failed.add_incidents() = write;
  r = ReportFromJob(Returned(failed), v1::CheckConfig(), kLimit);
  ASSERT_EQ(r.findings_size(), 1);
  EXPECT_EQ(r.findings(0).code(), v1::SANDBOX_VIOLATION);
  bool original = false;
  for (const auto& e : r.findings(0).evidence()) {
    if (e.name() == "original_code") original = e.text() == "LOSS_ERROR";
  }
  EXPECT_TRUE(original);
}

TEST(ReportFromJob, OomSaysTheLimitAndTheRequest) {
  v1::JobRecord record;
  *record.mutable_report() = ReportWith(v1::FORWARD_ERROR, v1::Finding::FAIL, "");
  *record.add_incidents() = AllocFailed(int64_t{512} << 30);
  const v1::Report r = ReportFromJob(Returned(record), v1::CheckConfig(), kLimit);
  ASSERT_EQ(r.findings_size(), 1);
  EXPECT_THAT(r.findings(0).message(), HasSubstr("memory limit of 8192 MiB"));
  EXPECT_THAT(r.findings(0).message(), HasSubstr(std::to_string(int64_t{512} << 30)));
}

// The engine marks every report it returns; the worker keeps that mark.
TEST(ReportFromJob, TheEnginesCompletionIsKept) {
  v1::JobRecord record;
  record.mutable_report()->set_verdict(v1::PASS);
  record.mutable_report()->set_completion(v1::COMPLETION_FINAL);
  v1::Report r = ReportFromJob(Returned(record), v1::CheckConfig(), kLimit);
  EXPECT_EQ(r.verdict(), v1::PASS);
  EXPECT_EQ(r.completion(), v1::COMPLETION_FINAL);

  // The engine's own out-of-memory report: transient, and it learns the limit.
  v1::JobRecord oom;
  *oom.mutable_report() =
      ReportWith(v1::WORKER_OOM, v1::Finding::ERROR, "the check ran out of memory: can't allocate");
  oom.mutable_report()->set_completion(v1::COMPLETION_TRANSIENT);
  r = ReportFromJob(Returned(oom), v1::CheckConfig(), kLimit);
  EXPECT_EQ(r.completion(), v1::COMPLETION_TRANSIENT);
  ASSERT_EQ(r.findings_size(), 1);
  EXPECT_THAT(r.findings(0).message(), HasSubstr("memory limit of 8192 MiB"));
}

TEST(ReportFromJob, HowTheChildEndedWithoutARecord) {
  struct Case {
    std::string name;
    ChildStatus status;
    int signal;
    v1::FindingCode want;
    v1::Completion completion;
  } cases[] = {
      {"deadline", ChildStatus::kTimeout, 0, v1::WORKER_TIMEOUT, v1::COMPLETION_TRANSIENT},
      {"seccomp", ChildStatus::kSignaled, SIGSYS, v1::SANDBOX_VIOLATION, v1::COMPLETION_FINAL},
      {"cpu rlimit", ChildStatus::kSignaled, SIGXCPU, v1::WORKER_TIMEOUT, v1::COMPLETION_TRANSIENT},
      {"segfault", ChildStatus::kSignaled, SIGSEGV, v1::WORKER_CRASHED, v1::COMPLETION_TRANSIENT},
      {"exit without a record", ChildStatus::kExited, 0, v1::WORKER_CRASHED,
       v1::COMPLETION_TRANSIENT},
      {"spawn failure", ChildStatus::kSpawnFailed, 0, v1::INTERNAL_ERROR, v1::COMPLETION_TRANSIENT},
  };
  for (const auto& tc : cases) {
    SCOPED_TRACE(tc.name);
    ChildOutcome o;
    o.status = tc.status;
    o.signal = tc.signal;
    const v1::Report r = ReportFromJob(o, v1::CheckConfig(), kLimit);
    ASSERT_GE(r.findings_size(), 1);
    EXPECT_EQ(r.findings(0).code(), tc.want);
    EXPECT_EQ(r.completion(), tc.completion);
    EXPECT_EQ(r.verdict(), v1::ERROR);
  }
}

TEST(ReportFromJob, UndecodableRecordIsAnInternalError) {
  ChildOutcome o;
  o.status = ChildStatus::kOk;
  o.payload = std::string("\xff\xff\xff", 3);
  const v1::Report r = ReportFromJob(o, v1::CheckConfig(), kLimit);
  ASSERT_EQ(r.findings_size(), 1);
  EXPECT_EQ(r.findings(0).code(), v1::INTERNAL_ERROR);
  EXPECT_EQ(r.completion(), v1::COMPLETION_TRANSIENT);
}

TEST(CancelledReport, IsTransientAndSaysWhy) {
  const v1::Report r = CancelledReport(v1::CheckConfig(), 2);
  EXPECT_EQ(r.completion(), v1::COMPLETION_TRANSIENT);
  EXPECT_EQ(r.verdict(), v1::ERROR);
  EXPECT_THAT(r.findings(0).message(), HasSubstr("cancelled"));
}

TEST(ExitReason, NamesTheWorkerOutcome) {
  EXPECT_EQ(ExitReason(ReportWith(v1::WORKER_OOM, v1::Finding::ERROR, "")), "oom");
  EXPECT_EQ(ExitReason(ReportWith(v1::SANDBOX_VIOLATION, v1::Finding::ERROR, "")), "sandbox");
  EXPECT_EQ(ExitReason(ReportWith(v1::LOSS_FLAT, v1::Finding::FAIL, "")), "");
}

}  // namespace
}  // namespace preflight::worker
