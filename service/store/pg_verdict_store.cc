#include "service/store/pg_verdict_store.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "service/store/report_integrity.h"
#include "service/store/sha256.h"

namespace preflight::store {
namespace {

double Now() { return absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch()); }

// A double as a text parameter that reads back exactly.
std::string Exact(double d) { return absl::StrFormat("%.17g", d); }

// pg_advisory_xact_lock(kLockSpace, hashtext(job_id)) serializes the bindings
// of one job id across replicas (two rebinds at once must not both append).
constexpr int kBindLockSpace = 0x70726567;

// Appends (job_id -> digest) unless it is the job id's current binding.
// Runs inside the caller's transaction.
absl::Status BindLocked(PgDatabase::Conn& c, const std::string& job_id, const std::string& digest) {
  if (auto r = c.Exec("SELECT pg_advisory_xact_lock($1, hashtext($2))",
                      {absl::StrCat(kBindLockSpace), job_id});
      !r.ok()) {
    return r.status();
  }
  auto last =
      c.Exec("SELECT request_digest FROM job_bindings WHERE job_id = $1 ORDER BY seq DESC LIMIT 1",
             {job_id});
  if (!last.ok()) return last.status();
  if (last->rows() == 1 && last->Get(0, 0) == digest) return absl::OkStatus();
  auto r = c.Exec(
      "INSERT INTO job_bindings (job_id, request_digest, bound_unix_seconds) VALUES ($1, $2, $3)",
      {job_id, digest, Exact(Now())});
  return r.status();
}

// The verdict row of a digest, and the job id most recently bound to it.
absl::StatusOr<StoredVerdict> VerdictOf(PgDatabase::Conn& c, const std::string& digest,
                                        const std::string& what) {
  auto r = c.Exec(
      "SELECT report, created_unix_seconds, (SELECT job_id FROM job_bindings b "
      "WHERE b.request_digest = v.request_digest ORDER BY seq DESC LIMIT 1), report_sha256, "
      "report_signature, signing_key_id "
      "FROM verdicts v WHERE request_digest = $1",
      {digest});
  if (!r.ok()) return r.status();
  if (r->rows() == 0) return absl::NotFoundError(absl::StrCat("no verdict for ", what));
  StoredVerdict v;
  v.request_digest = digest;
  const std::string blob = r->Bytes(0, 0);
  // Tamper evidence: the report must still be the bytes that were stored.
  if (absl::Status s = CheckReportHash(blob, r->Get(0, 3), what, digest); !s.ok()) return s;
  if (!r->null(0, 4)) v.report_signature = r->Bytes(0, 4);
  if (!r->null(0, 5)) v.signing_key_id = std::string(r->Get(0, 5));
  if (!v.report.ParseFromString(blob)) {
    return absl::DataLossError(absl::StrCat("stored report for ", what, " does not decode"));
  }
  v.created_unix_seconds = r->Double(0, 1);
  if (!r->null(0, 2)) v.job_id = std::string(r->Get(0, 2));
  return v;
}

}  // namespace

absl::Status PgVerdictStore::Put(const StoredVerdict& v) {
  const std::string blob = v.report.SerializeAsString();
  const std::string created = Exact(v.created_unix_seconds > 0 ? v.created_unix_seconds : Now());
  return db_->Run([&](PgDatabase::Conn& c) {
    return c.Transaction([&]() -> absl::Status {
      auto r = c.Exec(
          "INSERT INTO verdicts (request_digest, verdict, report, created_unix_seconds, "
          "report_sha256, report_signature, signing_key_id) "
          "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (request_digest) DO UPDATE SET "
          "verdict = EXCLUDED.verdict, report = EXCLUDED.report, "
          "created_unix_seconds = EXCLUDED.created_unix_seconds, "
          "report_sha256 = EXCLUDED.report_sha256, report_signature = "
          "EXCLUDED.report_signature, signing_key_id = EXCLUDED.signing_key_id",
          {v.request_digest, absl::StrCat(static_cast<int>(v.report.verdict())),
           PgParam::Bytes(blob), created, Sha256Hex(blob), PgParam::Bytes(v.report_signature),
           v.signing_key_id});
      if (!r.ok()) return r.status();
      return v.job_id.empty() ? absl::OkStatus() : BindLocked(c, v.job_id, v.request_digest);
    });
  });
}

absl::Status PgVerdictStore::Bind(const std::string& job_id, const std::string& digest) {
  return db_->Run([&](PgDatabase::Conn& c) {
    return c.Transaction([&]() -> absl::Status {
      auto r = c.Exec("SELECT 1 FROM verdicts WHERE request_digest = $1", {digest});
      if (!r.ok()) return r.status();
      if (r->rows() == 0) {
        return absl::NotFoundError(absl::StrCat("no verdict for request digest ", digest));
      }
      return BindLocked(c, job_id, digest);
    });
  });
}

absl::StatusOr<StoredVerdict> PgVerdictStore::GetByDigest(const std::string& digest) {
  absl::StatusOr<StoredVerdict> out;
  absl::Status s = db_->Run([&](PgDatabase::Conn& c) {
    out = VerdictOf(c, digest, absl::StrCat("request digest ", digest));
    // NOT_FOUND is an answer, not a failed operation to retry.
    return absl::IsNotFound(out.status()) ? absl::OkStatus() : out.status();
  });
  if (!s.ok()) return s;
  return out;
}

absl::StatusOr<StoredVerdict> PgVerdictStore::GetByJobId(const std::string& job_id) {
  absl::StatusOr<StoredVerdict> out;
  const std::string what = absl::StrCat("job id '", job_id, "'");
  absl::Status s = db_->Run([&](PgDatabase::Conn& c) -> absl::Status {
    auto r = c.Exec(
        "SELECT b.request_digest, b.bound_unix_seconds, v.verdict FROM job_bindings b "
        "LEFT JOIN verdicts v ON v.request_digest = b.request_digest "
        "WHERE b.job_id = $1 ORDER BY b.seq",
        {job_id});
    if (!r.ok()) return r.status();
    std::vector<JobBinding> bindings;
    for (int i = 0; i < r->rows(); ++i) {
      bindings.push_back(
          {std::string(r->Get(i, 0)), r->Double(i, 1),
           r->null(i, 2) ? v1::VERDICT_UNSPECIFIED : static_cast<v1::Verdict>(r->Int(i, 2))});
    }
    if (bindings.empty()) {
      out = absl::NotFoundError(absl::StrCat("no verdict for ", what));
      return absl::OkStatus();
    }
    out = VerdictOf(c, bindings.back().request_digest, what);
    if (absl::IsNotFound(out.status())) {
      out = absl::DataLossError(absl::StrCat(what, " is bound to request digest ",
                                             bindings.back().request_digest,
                                             ", whose verdict is missing"));
      return absl::OkStatus();
    }
    if (!out.ok()) return out.status();
    out->job_id = job_id;
    out->bindings = std::move(bindings);
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return out;
}

absl::Status PgVerdictStore::CheckIntegrity() {
  std::vector<std::string> bad;
  int64_t n = 0;
  absl::Status s = db_->Run([&](PgDatabase::Conn& c) -> absl::Status {
    bad.clear();
    const std::string sql = absl::StrCat(
        "SELECT request_digest, count(*) OVER () FROM verdicts "
        "WHERE report_sha256 != encode(sha256(report), 'hex') ORDER BY request_digest LIMIT ",
        kIntegrityNamedRows);
    auto r = c.Exec(sql.c_str());
    if (!r.ok()) return r.status();
    for (int i = 0; i < r->rows(); ++i) bad.emplace_back(r->Get(i, 0));
    n = r->rows() > 0 ? r->Int(0, 1) : 0;
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return AlteredRowsError(n, bad);
}

}  // namespace preflight::store
