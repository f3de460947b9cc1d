#include "service/store/sqlite_verdict_store.h"

#include <sqlite3.h>

#include <functional>
#include <mutex>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "service/store/report_integrity.h"
#include "service/store/sha256.h"

namespace preflight::store {

struct SqliteVerdictStore::Impl {
  sqlite3* db = nullptr;
  // One connection, serialized: SQLite's own locking is per connection and
  // a verdict write is a few hundred microseconds.
  std::mutex mu;
};

namespace {

// SQLITE_FULL (the disk or quota is full) is the store's capacity:
// RESOURCE_EXHAUSTED naming the file. Anything else is a fault.
absl::Status SqliteError(sqlite3* db, int rc, const std::string& message) {
  if ((rc & 0xff) == SQLITE_FULL) {
    const char* file = sqlite3_db_filename(db, "main");
    return absl::ResourceExhaustedError(absl::StrCat("verdict store ", file != nullptr ? file : "",
                                                     " is full: ", message,
                                                     "; free space in the store's filesystem"));
  }
  return absl::InternalError(absl::StrCat("verdict store: ", message));
}

absl::Status Exec(sqlite3* db, const char* sql) {
  char* err = nullptr;
  if (const int rc = sqlite3_exec(db, sql, nullptr, nullptr, &err); rc != SQLITE_OK) {
    std::string m = err != nullptr ? err : sqlite3_errstr(rc);
    sqlite3_free(err);
    return SqliteError(db, rc, m);
  }
  return absl::OkStatus();
}

struct Stmt {
  sqlite3_stmt* s = nullptr;
  ~Stmt() { sqlite3_finalize(s); }
};

absl::Status Prepare(sqlite3* db, const char* sql, Stmt* st) {
  if (sqlite3_prepare_v2(db, sql, -1, &st->s, nullptr) != SQLITE_OK) {
    return absl::InternalError(absl::StrCat("verdict store: ", sqlite3_errmsg(db)));
  }
  return absl::OkStatus();
}

void BindText(const Stmt& st, int index, const std::string& text) {
  sqlite3_bind_text(st.s, index, text.data(), static_cast<int>(text.size()), SQLITE_TRANSIENT);
}

std::string ColumnText(const Stmt& st, int index) {
  const auto* t = reinterpret_cast<const char*>(sqlite3_column_text(st.s, index));
  return t != nullptr ? t : "";
}

double Now() { return absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch()); }

// The schema this code writes. 1: one row per digest holding its last job
// id (a second job id overwrote the first). 2: job ids in their own table,
// every (re)binding a row. 3: each verdict row records its report's SHA-256
// (tamper evidence) and the server's signature of it.
constexpr int kSchemaVersion = 3;

// SQL function preflight_sha256(blob) -> lowercase hex, registered on the
// connection: the migration and the integrity check hash inside SQLite.
void SqlSha256(sqlite3_context* ctx, int, sqlite3_value** argv) {
  const void* data = sqlite3_value_blob(argv[0]);
  const int n = sqlite3_value_bytes(argv[0]);
  const std::string hex =
      Sha256Hex(absl::string_view(static_cast<const char*>(data), static_cast<size_t>(n)));
  sqlite3_result_text(ctx, hex.data(), static_cast<int>(hex.size()), SQLITE_TRANSIENT);
}

absl::Status Migrate(sqlite3* db) {
  Stmt st;
  if (absl::Status s = Prepare(db, "PRAGMA user_version", &st); !s.ok()) return s;
  const int version = sqlite3_step(st.s) == SQLITE_ROW ? sqlite3_column_int(st.s, 0) : 0;
  if (version == kSchemaVersion) return absl::OkStatus();
  if (version > kSchemaVersion) {
    return absl::FailedPreconditionError(absl::StrCat("written by a newer Preflight (schema ",
                                                      version, ", this one reads ", kSchemaVersion,
                                                      ")"));
  }
  // One transaction per step: a crash mid-migration leaves the last schema
  // intact.
  if (version < 2) {
    if (absl::Status s =
            Exec(db,
                 "BEGIN IMMEDIATE;"
                 "CREATE TABLE IF NOT EXISTS verdicts ("
                 "  request_digest TEXT PRIMARY KEY,"
                 "  job_id TEXT,"  // Schema 1's binding; read once below, then unused.
                 "  verdict INTEGER NOT NULL,"
                 "  report BLOB NOT NULL,"
                 "  created_unix_seconds REAL NOT NULL);"
                 "CREATE TABLE IF NOT EXISTS job_bindings ("
                 "  seq INTEGER PRIMARY KEY AUTOINCREMENT,"
                 "  job_id TEXT NOT NULL,"
                 "  request_digest TEXT NOT NULL,"
                 "  bound_unix_seconds REAL NOT NULL);"
                 "CREATE INDEX IF NOT EXISTS job_bindings_by_job ON job_bindings(job_id, seq);"
                 "CREATE INDEX IF NOT EXISTS job_bindings_by_digest "
                 "  ON job_bindings(request_digest, seq);"
                 "INSERT INTO job_bindings(job_id, request_digest, bound_unix_seconds)"
                 "  SELECT job_id, request_digest, created_unix_seconds FROM verdicts"
                 "  WHERE job_id IS NOT NULL ORDER BY created_unix_seconds;"
                 "UPDATE verdicts SET job_id = NULL;"
                 "PRAGMA user_version = 2;"
                 "COMMIT;");
        !s.ok()) {
      return s;
    }
  }
  // Rows stored before schema 3 get the digest of the report as it is now.
  return Exec(db,
              "BEGIN IMMEDIATE;"
              "ALTER TABLE verdicts ADD COLUMN report_sha256 TEXT;"
              "ALTER TABLE verdicts ADD COLUMN report_signature BLOB;"
              "ALTER TABLE verdicts ADD COLUMN signing_key_id TEXT;"
              "UPDATE verdicts SET report_sha256 = preflight_sha256(report);"
              "PRAGMA user_version = 3;"
              "COMMIT;");
}

// Appends (job_id -> digest) unless it is the job id's current binding.
// Runs inside the caller's transaction.
absl::Status BindLocked(sqlite3* db, const std::string& job_id, const std::string& digest) {
  {
    Stmt st;
    if (absl::Status s = Prepare(db,
                                 "SELECT request_digest FROM job_bindings WHERE job_id = ? "
                                 "ORDER BY seq DESC LIMIT 1",
                                 &st);
        !s.ok()) {
      return s;
    }
    BindText(st, 1, job_id);
    if (sqlite3_step(st.s) == SQLITE_ROW && ColumnText(st, 0) == digest) return absl::OkStatus();
  }
  Stmt st;
  if (absl::Status s = Prepare(db,
                               "INSERT INTO job_bindings(job_id, request_digest, "
                               "bound_unix_seconds) VALUES (?, ?, ?)",
                               &st);
      !s.ok()) {
    return s;
  }
  BindText(st, 1, job_id);
  BindText(st, 2, digest);
  sqlite3_bind_double(st.s, 3, Now());
  if (const int rc = sqlite3_step(st.s); rc != SQLITE_DONE) {
    return SqliteError(db, rc, sqlite3_errmsg(db));
  }
  return absl::OkStatus();
}

// BEGIN IMMEDIATE ... COMMIT around `body`, rolled back when it fails.
absl::Status InTransaction(sqlite3* db, const std::function<absl::Status()>& body) {
  if (absl::Status s = Exec(db, "BEGIN IMMEDIATE"); !s.ok()) return s;
  absl::Status s = body();
  if (s.ok()) s = Exec(db, "COMMIT");
  if (!s.ok()) Exec(db, "ROLLBACK").IgnoreError();
  return s;
}

}  // namespace

SqliteVerdictStore::SqliteVerdictStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

SqliteVerdictStore::~SqliteVerdictStore() {
  if (impl_ && impl_->db) sqlite3_close(impl_->db);
}

absl::StatusOr<std::unique_ptr<SqliteVerdictStore>> SqliteVerdictStore::Open(
    const std::string& path) {
  auto impl = std::make_unique<Impl>();
  const int rc =
      sqlite3_open_v2(path.c_str(), &impl->db,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, nullptr);
  auto fail = [&](const std::string& why) {
    return absl::FailedPreconditionError(absl::StrCat("verdict store ", path, ": ", why));
  };
  if (rc != SQLITE_OK) {
    std::string why = impl->db ? sqlite3_errmsg(impl->db) : sqlite3_errstr(rc);
    sqlite3_close(impl->db);
    return fail(why);
  }
  sqlite3_busy_timeout(impl->db, 5000);
  sqlite3_create_function(impl->db, "preflight_sha256", 1, SQLITE_UTF8 | SQLITE_DETERMINISTIC,
                          nullptr, SqlSha256, nullptr, nullptr);
  // quick_check reads every page: a corrupt file fails here, at start-up,
  // instead of silently serving an empty or partial store.
  {
    Stmt st;
    if (sqlite3_prepare_v2(impl->db, "PRAGMA quick_check", -1, &st.s, nullptr) != SQLITE_OK) {
      std::string why = sqlite3_errmsg(impl->db);
      sqlite3_close(impl->db);
      return fail(why);
    }
    const int step = sqlite3_step(st.s);
    const std::string result = step == SQLITE_ROW
                                   ? reinterpret_cast<const char*>(sqlite3_column_text(st.s, 0))
                                   : sqlite3_errmsg(impl->db);
    if (result != "ok") {
      sqlite3_finalize(st.s);
      st.s = nullptr;
      sqlite3_close(impl->db);
      return fail(absl::StrCat("integrity check failed: ", result));
    }
  }
  for (const char* sql : {"PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL"}) {
    if (absl::Status s = Exec(impl->db, sql); !s.ok()) {
      sqlite3_close(impl->db);
      return fail(std::string(s.message()));
    }
  }
  if (absl::Status s = Migrate(impl->db); !s.ok()) {
    sqlite3_close(impl->db);
    return fail(std::string(s.message()));
  }
  return std::unique_ptr<SqliteVerdictStore>(new SqliteVerdictStore(std::move(impl)));
}

absl::Status SqliteVerdictStore::Put(const StoredVerdict& v) {
  const std::string blob = v.report.SerializeAsString();
  std::lock_guard<std::mutex> lock(impl_->mu);
  sqlite3* db = impl_->db;
  return InTransaction(db, [&]() -> absl::Status {
    Stmt st;
    if (absl::Status s = Prepare(db,
                                 "INSERT OR REPLACE INTO verdicts(request_digest, job_id, "
                                 "verdict, report, created_unix_seconds, report_sha256, "
                                 "report_signature, signing_key_id) "
                                 "VALUES (?, NULL, ?, ?, ?, ?, ?, ?)",
                                 &st);
        !s.ok()) {
      return s;
    }
    BindText(st, 1, v.request_digest);
    sqlite3_bind_int(st.s, 2, v.report.verdict());
    sqlite3_bind_blob(st.s, 3, blob.data(), static_cast<int>(blob.size()), SQLITE_TRANSIENT);
    sqlite3_bind_double(st.s, 4, v.created_unix_seconds > 0 ? v.created_unix_seconds : Now());
    BindText(st, 5, Sha256Hex(blob));
    sqlite3_bind_blob(st.s, 6, v.report_signature.data(),
                      static_cast<int>(v.report_signature.size()), SQLITE_TRANSIENT);
    BindText(st, 7, v.signing_key_id);
    if (const int rc = sqlite3_step(st.s); rc != SQLITE_DONE) {
      return SqliteError(db, rc, sqlite3_errmsg(db));
    }
    return v.job_id.empty() ? absl::OkStatus() : BindLocked(db, v.job_id, v.request_digest);
  });
}

absl::Status SqliteVerdictStore::Bind(const std::string& job_id, const std::string& digest) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  sqlite3* db = impl_->db;
  return InTransaction(db, [&]() -> absl::Status {
    Stmt st;
    if (absl::Status s = Prepare(db, "SELECT 1 FROM verdicts WHERE request_digest = ?", &st);
        !s.ok()) {
      return s;
    }
    BindText(st, 1, digest);
    if (sqlite3_step(st.s) != SQLITE_ROW) {
      return absl::NotFoundError(absl::StrCat("no verdict for request digest ", digest));
    }
    return BindLocked(db, job_id, digest);
  });
}

namespace {

// The verdict row of a digest, and the job id most recently bound to it.
absl::StatusOr<StoredVerdict> VerdictOf(sqlite3* db, const std::string& digest,
                                        const std::string& what) {
  Stmt st;
  if (absl::Status s = Prepare(db,
                               "SELECT report, created_unix_seconds, (SELECT job_id FROM "
                               "job_bindings b WHERE b.request_digest = v.request_digest "
                               "ORDER BY seq DESC LIMIT 1), report_sha256, report_signature, "
                               "signing_key_id FROM verdicts v "
                               "WHERE request_digest = ?",
                               &st);
      !s.ok()) {
    return s;
  }
  BindText(st, 1, digest);
  const int rc = sqlite3_step(st.s);
  if (rc == SQLITE_DONE) return absl::NotFoundError(absl::StrCat("no verdict for ", what));
  if (rc != SQLITE_ROW) return absl::InternalError(sqlite3_errmsg(db));
  StoredVerdict v;
  v.request_digest = digest;
  const absl::string_view blob(static_cast<const char*>(sqlite3_column_blob(st.s, 0)),
                               static_cast<size_t>(sqlite3_column_bytes(st.s, 0)));
  // Tamper evidence: the report must still be the bytes that were stored.
  if (absl::Status s = CheckReportHash(blob, ColumnText(st, 3), what, digest); !s.ok()) return s;
  if (!v.report.ParseFromArray(blob.data(), static_cast<int>(blob.size()))) {
    return absl::DataLossError(absl::StrCat("stored report for ", what, " does not decode"));
  }
  v.created_unix_seconds = sqlite3_column_double(st.s, 1);
  v.job_id = ColumnText(st, 2);
  if (const int n = sqlite3_column_bytes(st.s, 4); n > 0) {
    v.report_signature.assign(static_cast<const char*>(sqlite3_column_blob(st.s, 4)),
                              static_cast<size_t>(n));
  }
  v.signing_key_id = ColumnText(st, 5);
  return v;
}

}  // namespace

absl::StatusOr<StoredVerdict> SqliteVerdictStore::GetByDigest(const std::string& digest) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return VerdictOf(impl_->db, digest, absl::StrCat("request digest ", digest));
}

absl::StatusOr<StoredVerdict> SqliteVerdictStore::GetByJobId(const std::string& job_id) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  sqlite3* db = impl_->db;
  std::vector<JobBinding> bindings;
  {
    Stmt st;
    if (absl::Status s = Prepare(db,
                                 "SELECT b.request_digest, b.bound_unix_seconds, v.verdict "
                                 "FROM job_bindings b LEFT JOIN verdicts v "
                                 "ON v.request_digest = b.request_digest "
                                 "WHERE b.job_id = ? ORDER BY b.seq",
                                 &st);
        !s.ok()) {
      return s;
    }
    BindText(st, 1, job_id);
    while (sqlite3_step(st.s) == SQLITE_ROW) {
      bindings.push_back({ColumnText(st, 0), sqlite3_column_double(st.s, 1),
                          static_cast<v1::Verdict>(sqlite3_column_int(st.s, 2))});
    }
  }
  const std::string what = absl::StrCat("job id '", job_id, "'");
  if (bindings.empty()) return absl::NotFoundError(absl::StrCat("no verdict for ", what));
  auto v = VerdictOf(db, bindings.back().request_digest, what);
  if (absl::IsNotFound(v.status())) {
    return absl::DataLossError(absl::StrCat(what, " is bound to request digest ",
                                            bindings.back().request_digest,
                                            ", whose verdict is missing"));
  }
  if (!v.ok()) return v.status();
  v->job_id = job_id;
  v->bindings = std::move(bindings);
  return v;
}

absl::Status SqliteVerdictStore::CheckIntegrity() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  Stmt st;
  if (absl::Status s = Prepare(impl_->db,
                               "SELECT request_digest FROM verdicts WHERE report_sha256 IS NULL "
                               "OR report_sha256 != preflight_sha256(report) "
                               "ORDER BY request_digest",
                               &st);
      !s.ok()) {
    return s;
  }
  std::vector<std::string> bad;
  int rc;
  while ((rc = sqlite3_step(st.s)) == SQLITE_ROW) bad.push_back(ColumnText(st, 0));
  if (rc != SQLITE_DONE) return SqliteError(impl_->db, rc, sqlite3_errmsg(impl_->db));
  const int64_t n = static_cast<int64_t>(bad.size());
  if (n > kIntegrityNamedRows) bad.resize(kIntegrityNamedRows);
  return AlteredRowsError(n, bad);
}

}  // namespace preflight::store
