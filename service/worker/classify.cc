#include "service/worker/classify.h"

#include "absl/strings/str_cat.h"
#include "service/engine/report_util.h"

namespace preflight::worker {
namespace {

// Findings through which a refused call surfaces when the check catches the
// exception it caused: loading (the model's own file reads), the forward,
// loss and backward passes, and the engine's catch-all.
bool StoppedByError(const v1::Finding& f) {
  if (f.severity() != v1::Finding::ERROR && f.severity() != v1::Finding::FAIL) return false;
  switch (f.code()) {
    case v1::ARTIFACT_INVALID:
    case v1::DATA_INVALID:
    case v1::FORWARD_ERROR:
    case v1::LOSS_ERROR:
    case v1::BACKWARD_ERROR:
    case v1::INTERNAL_ERROR:
    case v1::WORKER_CRASHED: return true;
    default: return false;
  }
}

// The first refusal of `kind` that raised the exception stopping the code
// that made it; refusals the code tolerated (a probe of /proc/cpuinfo) do not
// count.
const v1::JobIncident* FirstRaised(const v1::JobRecord& record, v1::JobIncident::Kind kind) {
  for (const auto& i : record.incidents()) {
    if (i.kind() == kind && i.raised()) return &i;
  }
  return nullptr;
}

// The first refused open that asked to write, raised or not.
const v1::JobIncident* FirstDeniedWrite(const v1::JobRecord& record) {
  for (const auto& i : record.incidents()) {
    if (i.kind() == v1::JobIncident::FILE_ACCESS_DENIED && i.write()) return &i;
  }
  return nullptr;
}

void AddIncidentEvidence(v1::Finding* f, const v1::JobIncident& i) {
  engine::AddText(f, "path", i.path());
  engine::AddText(f, "call", i.call());
  engine::AddNumber(f, "errno", i.errno_value());
  engine::AddText(f, "access", i.write() ? "write" : "read");
}

// Replaces `report` by one ERROR finding of `code`, keeping config,
// environment and timing, and the code of the finding it replaces as
// evidence.
void Reclassify(v1::Report* report, v1::FindingCode code, const std::string& message,
                v1::FindingCode original, v1::Completion completion) {
  v1::Report mapped;
  *mapped.mutable_config() = report->config();
  *mapped.mutable_environment() = report->environment();
  v1::Finding* f = engine::AddFinding(&mapped, code, v1::Finding::ERROR, "worker", message);
  engine::AddText(f, "original_code", v1::FindingCode_Name(original));
  mapped.set_verdict(engine::ComputeVerdict(mapped));
  *mapped.mutable_timing() = report->timing();
  mapped.set_completion(completion);
  *report = std::move(mapped);
}

v1::Report FromRecord(v1::JobRecord record, const ChildOutcome& o, const v1::CheckConfig& config,
                      int64_t memory_limit) {
  v1::Report report;
  if (!record.failure().empty()) {
    // An exception escaped the check: reported as before, as the worker
    // failing, unless the record says what the sandbox refused.
    ChildOutcome failed = o;
    failed.status = ChildStatus::kExited;
    failed.exit_code = 70;
    failed.error = record.failure();
    report = ReportFromOutcome(failed, config);
  } else {
    report = std::move(*record.mutable_report());
    report.mutable_timing()->set_worker_seconds(o.seconds);
  }
  // The engine recognised an allocation failure by its exception type and
  // reported WORKER_OOM itself: say which limit it hit.
  for (auto& f : *report.mutable_findings()) {
    if (f.code() != v1::WORKER_OOM || memory_limit <= 0) continue;
    f.set_message(absl::StrCat("the check exceeded its memory limit of ", memory_limit >> 20,
                               " MiB: ", f.message()));
    engine::AddNumber(&f, "memory_limit_bytes", static_cast<double>(memory_limit));
    if (const v1::JobIncident* a = FirstRaised(record, v1::JobIncident::ALLOCATION_FAILED);
        a != nullptr && a->bytes() > 0) {
      engine::AddNumber(&f, "requested_bytes", static_cast<double>(a->bytes()));
    }
    return report;
  }
  const v1::Finding* stopped = nullptr;
  for (const auto& f : report.findings()) {
    if (StoppedByError(f)) {
      stopped = &f;
      break;
    }
  }
  if (stopped != nullptr) {
    const v1::Finding original = *stopped;
    if (const v1::JobIncident* a = FirstRaised(record, v1::JobIncident::ALLOCATION_FAILED)) {
      Reclassify(
          &report, v1::WORKER_OOM,
          absl::StrCat("the check exceeded its memory limit of ", memory_limit >> 20, " MiB (",
                       a->call(), a->bytes() > 0 ? absl::StrCat(" of ", a->bytes(), " bytes") : "",
                       " failed): ", original.message()),
          original.code(), v1::COMPLETION_TRANSIENT);
      v1::Finding* f = report.mutable_findings(0);
      engine::AddNumber(f, "memory_limit_bytes", static_cast<double>(memory_limit));
      if (a->bytes() > 0) engine::AddNumber(f, "requested_bytes", static_cast<double>(a->bytes()));
      return report;
    }
    if (const v1::JobIncident* d = FirstRaised(record, v1::JobIncident::FILE_ACCESS_DENIED)) {
      Reclassify(&report, v1::SANDBOX_VIOLATION,
                 absl::StrCat("the model tried to ", d->write() ? "write" : "access",
                              " a file outside its inputs (", d->path(),
                              "), which the sandbox refused: ", original.message()),
                 original.code(), v1::COMPLETION_FINAL);
      AddIncidentEvidence(report.mutable_findings(0), *d);
      return report;
    }
  }
  if (const v1::JobIncident* w = FirstDeniedWrite(record)) {
    // The model carried on after the refusal (or failed for another reason):
    // its verdict was reached by code that meant to leave a file behind.
    const std::string withheld = v1::Verdict_Name(report.verdict());
    const v1::FindingCode first = stopped != nullptr
                                      ? stopped->code()
                                      : (report.findings_size() > 0 ? report.findings(0).code()
                                                                    : v1::FINDING_CODE_UNSPECIFIED);
    Reclassify(&report, v1::SANDBOX_VIOLATION,
               absl::StrCat("the model tried to write ", w->path(), " (", w->call(),
                            "), which the sandbox refused: a check may write no file; the ",
                            withheld, " verdict the check reached is withheld"),
               first, v1::COMPLETION_FINAL);
    AddIncidentEvidence(report.mutable_findings(0), *w);
    engine::AddText(report.mutable_findings(0), "withheld_verdict", withheld);
  }
  return report;
}

}  // namespace

v1::Report ReportFromJob(const ChildOutcome& o, const v1::CheckConfig& config,
                         int64_t memory_limit_bytes) {
  if (o.status != ChildStatus::kOk) return ReportFromOutcome(o, config);
  v1::JobRecord record;
  if (!record.ParseFromString(o.payload)) {
    ChildOutcome bad = o;
    bad.payload = std::string("\xff", 1);  // ReportFromOutcome: "could not be decoded".
    return ReportFromOutcome(bad, config);
  }
  return FromRecord(std::move(record), o, config, memory_limit_bytes);
}

v1::Report CancelledReport(const v1::CheckConfig& config, double seconds) {
  v1::Report report;
  *report.mutable_config() = config;
  engine::AddFinding(&report, v1::WORKER_TIMEOUT, v1::Finding::ERROR, "worker",
                     "the check was cancelled and killed: every caller waiting for it gave up "
                     "(deadline passed or call cancelled)");
  report.mutable_timing()->set_worker_seconds(seconds);
  report.mutable_timing()->set_total_seconds(seconds);
  report.set_verdict(engine::ComputeVerdict(report));
  report.set_completion(v1::COMPLETION_TRANSIENT);
  return report;
}

std::string ExitReason(const v1::Report& r) {
  for (const auto& f : r.findings()) {
    switch (f.code()) {
      case v1::WORKER_TIMEOUT: return "timeout";
      case v1::WORKER_CRASHED: return "crash";
      case v1::WORKER_OOM: return "oom";
      case v1::SANDBOX_VIOLATION: return "sandbox";
      default: break;
    }
  }
  return "";
}

}  // namespace preflight::worker
