#include "service/store/sqlite_verdict_store.h"

#include <sqlite3.h>

#include <mutex>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace preflight::store {

struct SqliteVerdictStore::Impl {
  sqlite3* db = nullptr;
  // One connection, serialized: SQLite's own locking is per connection and
  // a verdict write is a few hundred microseconds.
  std::mutex mu;
};

namespace {

absl::Status Exec(sqlite3* db, const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string m = err != nullptr ? err : "unknown error";
    sqlite3_free(err);
    return absl::InternalError(m);
  }
  return absl::OkStatus();
}

struct Stmt {
  sqlite3_stmt* s = nullptr;
  ~Stmt() { sqlite3_finalize(s); }
};

}  // namespace

SqliteVerdictStore::SqliteVerdictStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

SqliteVerdictStore::~SqliteVerdictStore() {
  if (impl_ && impl_->db) sqlite3_close(impl_->db);
}

absl::StatusOr<std::unique_ptr<SqliteVerdictStore>> SqliteVerdictStore::Open(
    const std::string& path) {
  auto impl = std::make_unique<Impl>();
  const int rc = sqlite3_open_v2(path.c_str(), &impl->db,
                                 SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                                     SQLITE_OPEN_FULLMUTEX,
                                 nullptr);
  auto fail = [&](const std::string& why) {
    return absl::FailedPreconditionError(absl::StrCat("verdict store ", path, ": ", why));
  };
  if (rc != SQLITE_OK) {
    std::string why = impl->db ? sqlite3_errmsg(impl->db) : sqlite3_errstr(rc);
    sqlite3_close(impl->db);
    return fail(why);
  }
  sqlite3_busy_timeout(impl->db, 5000);
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
    const std::string result =
        step == SQLITE_ROW ? reinterpret_cast<const char*>(sqlite3_column_text(st.s, 0))
                           : sqlite3_errmsg(impl->db);
    if (result != "ok") {
      sqlite3_finalize(st.s);
      st.s = nullptr;
      sqlite3_close(impl->db);
      return fail(absl::StrCat("integrity check failed: ", result));
    }
  }
  for (const char* sql : {
           "PRAGMA journal_mode=WAL",
           "PRAGMA synchronous=FULL",
           "CREATE TABLE IF NOT EXISTS verdicts ("
           "  request_digest TEXT PRIMARY KEY,"
           "  job_id TEXT,"
           "  verdict INTEGER NOT NULL,"
           "  report BLOB NOT NULL,"
           "  created_unix_seconds REAL NOT NULL)",
           "CREATE INDEX IF NOT EXISTS verdicts_job_id ON verdicts(job_id)",
       }) {
    if (absl::Status s = Exec(impl->db, sql); !s.ok()) {
      sqlite3_close(impl->db);
      return fail(std::string(s.message()));
    }
  }
  return std::unique_ptr<SqliteVerdictStore>(new SqliteVerdictStore(std::move(impl)));
}

absl::Status SqliteVerdictStore::Put(const StoredVerdict& v) {
  const std::string blob = v.report.SerializeAsString();
  std::lock_guard<std::mutex> lock(impl_->mu);
  Stmt st;
  if (sqlite3_prepare_v2(impl_->db,
                         "INSERT OR REPLACE INTO verdicts(request_digest, job_id, verdict, "
                         "report, created_unix_seconds) VALUES (?, ?, ?, ?, ?)",
                         -1, &st.s, nullptr) != SQLITE_OK) {
    return absl::InternalError(sqlite3_errmsg(impl_->db));
  }
  sqlite3_bind_text(st.s, 1, v.request_digest.data(), static_cast<int>(v.request_digest.size()),
                    SQLITE_TRANSIENT);
  if (v.job_id.empty()) {
    sqlite3_bind_null(st.s, 2);
  } else {
    sqlite3_bind_text(st.s, 2, v.job_id.data(), static_cast<int>(v.job_id.size()),
                      SQLITE_TRANSIENT);
  }
  sqlite3_bind_int(st.s, 3, v.report.verdict());
  sqlite3_bind_blob(st.s, 4, blob.data(), static_cast<int>(blob.size()), SQLITE_TRANSIENT);
  sqlite3_bind_double(st.s, 5, v.created_unix_seconds > 0
                                   ? v.created_unix_seconds
                                   : absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch()));
  if (sqlite3_step(st.s) != SQLITE_DONE) {
    return absl::InternalError(absl::StrCat("verdict store: ", sqlite3_errmsg(impl_->db)));
  }
  return absl::OkStatus();
}

namespace {

absl::StatusOr<StoredVerdict> Query(sqlite3* db, const char* sql, const std::string& key,
                                    const std::string& what) {
  Stmt st;
  if (sqlite3_prepare_v2(db, sql, -1, &st.s, nullptr) != SQLITE_OK) {
    return absl::InternalError(sqlite3_errmsg(db));
  }
  sqlite3_bind_text(st.s, 1, key.data(), static_cast<int>(key.size()), SQLITE_TRANSIENT);
  const int rc = sqlite3_step(st.s);
  if (rc == SQLITE_DONE) return absl::NotFoundError(absl::StrCat("no verdict for ", what));
  if (rc != SQLITE_ROW) return absl::InternalError(sqlite3_errmsg(db));
  StoredVerdict v;
  v.request_digest = reinterpret_cast<const char*>(sqlite3_column_text(st.s, 0));
  if (sqlite3_column_type(st.s, 1) != SQLITE_NULL) {
    v.job_id = reinterpret_cast<const char*>(sqlite3_column_text(st.s, 1));
  }
  const void* blob = sqlite3_column_blob(st.s, 2);
  const int size = sqlite3_column_bytes(st.s, 2);
  if (!v.report.ParseFromArray(blob, size)) {
    return absl::DataLossError(absl::StrCat("stored report for ", what, " does not decode"));
  }
  v.created_unix_seconds = sqlite3_column_double(st.s, 3);
  return v;
}

}  // namespace

absl::StatusOr<StoredVerdict> SqliteVerdictStore::GetByDigest(const std::string& digest) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return Query(impl_->db,
               "SELECT request_digest, job_id, report, created_unix_seconds FROM verdicts "
               "WHERE request_digest = ?",
               digest, absl::StrCat("request digest ", digest));
}

absl::StatusOr<StoredVerdict> SqliteVerdictStore::GetByJobId(const std::string& job_id) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return Query(impl_->db,
               "SELECT request_digest, job_id, report, created_unix_seconds FROM verdicts "
               "WHERE job_id = ? ORDER BY created_unix_seconds DESC LIMIT 1",
               job_id, absl::StrCat("job id '", job_id, "'"));
}

}  // namespace preflight::store
