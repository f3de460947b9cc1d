#include "service/store/sqlite_blob_ledger.h"

#include <sqlite3.h>

#include <mutex>

#include "absl/strings/str_cat.h"

namespace preflight::store {

struct SqliteBlobLedger::Impl {
  sqlite3* db = nullptr;
  // One connection, so one writer at a time; also makes Charge's
  // read-check-insert atomic within the process.
  std::mutex mu;
};

namespace {

absl::Status LedgerError(sqlite3* db, int rc, const std::string& what) {
  const char* file = sqlite3_db_filename(db, "main");
  const std::string name = file != nullptr ? file : "";
  if ((rc & 0xff) == SQLITE_FULL) {
    return absl::ResourceExhaustedError(absl::StrCat("blob ledger ", name, " is full: ", what,
                                                     "; free space in the store's filesystem"));
  }
  return absl::InternalError(
      absl::StrCat("blob ledger ", name, ": ", what, ": ", sqlite3_errmsg(db)));
}

absl::Status Exec(sqlite3* db, const char* sql) {
  char* err = nullptr;
  if (const int rc = sqlite3_exec(db, sql, nullptr, nullptr, &err); rc != SQLITE_OK) {
    std::string m = err != nullptr ? err : sqlite3_errstr(rc);
    sqlite3_free(err);
    return LedgerError(db, rc, m);
  }
  return absl::OkStatus();
}

struct Stmt {
  sqlite3_stmt* s = nullptr;
  ~Stmt() { sqlite3_finalize(s); }
};

absl::Status Prepare(sqlite3* db, const char* sql, Stmt* st) {
  if (const int rc = sqlite3_prepare_v2(db, sql, -1, &st->s, nullptr); rc != SQLITE_OK) {
    return LedgerError(db, rc, "prepare");
  }
  return absl::OkStatus();
}

void BindText(const Stmt& st, int index, const std::string& text) {
  sqlite3_bind_text(st.s, index, text.data(), static_cast<int>(text.size()), SQLITE_TRANSIENT);
}

// Runs `body` in one IMMEDIATE transaction: committed when it returns OK.
template <typename F>
absl::Status InTransaction(sqlite3* db, F&& body) {
  if (absl::Status s = Exec(db, "BEGIN IMMEDIATE"); !s.ok()) return s;
  absl::Status s = body();
  if (s.ok()) s = Exec(db, "COMMIT");
  if (!s.ok()) Exec(db, "ROLLBACK").IgnoreError();
  return s;
}

absl::StatusOr<int64_t> Usage(sqlite3* db, const std::string& tenant) {
  Stmt st;
  if (absl::Status s =
          Prepare(db, "SELECT COALESCE(SUM(bytes), 0) FROM blob_refs WHERE tenant = ?1", &st);
      !s.ok()) {
    return s;
  }
  BindText(st, 1, tenant);
  if (const int rc = sqlite3_step(st.s); rc != SQLITE_ROW) return LedgerError(db, rc, "usage");
  return sqlite3_column_int64(st.s, 0);
}

}  // namespace

SqliteBlobLedger::SqliteBlobLedger(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SqliteBlobLedger::~SqliteBlobLedger() { sqlite3_close(impl_->db); }

absl::StatusOr<std::unique_ptr<SqliteBlobLedger>> SqliteBlobLedger::Open(const std::string& path) {
  auto impl = std::make_unique<Impl>();
  const int rc =
      sqlite3_open_v2(path.c_str(), &impl->db,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, nullptr);
  auto fail = [&](const std::string& why) {
    sqlite3_close(impl->db);
    return absl::FailedPreconditionError(absl::StrCat("blob ledger ", path, ": ", why));
  };
  if (rc != SQLITE_OK) return fail(impl->db ? sqlite3_errmsg(impl->db) : sqlite3_errstr(rc));
  sqlite3_busy_timeout(impl->db, 5000);
  for (const char* sql : {"PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL",
                          "CREATE TABLE IF NOT EXISTS blob_refs ("
                          " tenant TEXT NOT NULL, sha256 TEXT NOT NULL,"
                          " bytes INTEGER NOT NULL, last_used_us INTEGER NOT NULL,"
                          " PRIMARY KEY (tenant, sha256))",
                          "CREATE INDEX IF NOT EXISTS blob_refs_by_sha ON blob_refs (sha256)"}) {
    if (absl::Status s = Exec(impl->db, sql); !s.ok()) return fail(std::string(s.message()));
  }
  return std::unique_ptr<SqliteBlobLedger>(new SqliteBlobLedger(std::move(impl)));
}

absl::Status SqliteBlobLedger::Charge(const BlobUse& use, absl::Time now, int64_t quota_bytes,
                                      absl::Duration refresh_after) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  sqlite3* db = impl_->db;
  {
    // Held and recently refreshed: nothing to write.
    Stmt fresh;
    if (absl::Status s = Prepare(db,
                                 "SELECT 1 FROM blob_refs WHERE tenant = ?1 AND sha256 = ?2"
                                 " AND last_used_us >= ?3",
                                 &fresh);
        !s.ok()) {
      return s;
    }
    BindText(fresh, 1, use.tenant);
    BindText(fresh, 2, use.sha256);
    sqlite3_bind_int64(fresh.s, 3, absl::ToUnixMicros(now - refresh_after));
    const int rc = sqlite3_step(fresh.s);
    if (rc == SQLITE_ROW) return absl::OkStatus();
    if (rc != SQLITE_DONE) return LedgerError(db, rc, "lookup");
  }
  return InTransaction(db, [&]() -> absl::Status {
    Stmt touch;
    if (absl::Status s = Prepare(db,
                                 "UPDATE blob_refs SET last_used_us = MAX(last_used_us, ?3)"
                                 " WHERE tenant = ?1 AND sha256 = ?2",
                                 &touch);
        !s.ok()) {
      return s;
    }
    BindText(touch, 1, use.tenant);
    BindText(touch, 2, use.sha256);
    sqlite3_bind_int64(touch.s, 3, absl::ToUnixMicros(now));
    if (const int rc = sqlite3_step(touch.s); rc != SQLITE_DONE) {
      return LedgerError(db, rc, "touch");
    }
    if (sqlite3_changes(db) > 0) return absl::OkStatus();  // already held: never charged twice
    auto usage = Usage(db, use.tenant);
    if (!usage.ok()) return usage.status();
    if (absl::Status s = CheckQuota(use, *usage, quota_bytes); !s.ok()) return s;
    Stmt insert;
    if (absl::Status s = Prepare(db,
                                 "INSERT INTO blob_refs (tenant, sha256, bytes, last_used_us)"
                                 " VALUES (?1, ?2, ?3, ?4)",
                                 &insert);
        !s.ok()) {
      return s;
    }
    BindText(insert, 1, use.tenant);
    BindText(insert, 2, use.sha256);
    sqlite3_bind_int64(insert.s, 3, use.bytes);
    sqlite3_bind_int64(insert.s, 4, absl::ToUnixMicros(now));
    if (const int rc = sqlite3_step(insert.s); rc != SQLITE_DONE) {
      return LedgerError(db, rc, "insert");
    }
    return absl::OkStatus();
  });
}

absl::StatusOr<int64_t> SqliteBlobLedger::UsageBytes(const std::string& tenant) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return Usage(impl_->db, tenant);
}

absl::StatusOr<std::vector<OrphanBlob>> SqliteBlobLedger::DropUnusedSince(
    absl::Time cutoff, const absl::flat_hash_set<std::string>& keep) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  sqlite3* db = impl_->db;
  std::vector<OrphanBlob> orphans;
  absl::Status s = InTransaction(db, [&]() -> absl::Status {
    Stmt expired;
    if (absl::Status s = Prepare(
            db, "SELECT sha256, MAX(bytes) FROM blob_refs WHERE last_used_us < ?1 GROUP BY sha256",
            &expired);
        !s.ok()) {
      return s;
    }
    sqlite3_bind_int64(expired.s, 1, absl::ToUnixMicros(cutoff));
    std::vector<OrphanBlob> candidates;
    int rc;
    while ((rc = sqlite3_step(expired.s)) == SQLITE_ROW) {
      std::string sha(reinterpret_cast<const char*>(sqlite3_column_text(expired.s, 0)));
      if (!keep.contains(sha)) {
        candidates.push_back({std::move(sha), sqlite3_column_int64(expired.s, 1)});
      }
    }
    if (rc != SQLITE_DONE) return LedgerError(db, rc, "select expired");
    for (const OrphanBlob& c : candidates) {
      const std::string& sha = c.sha256;
      Stmt drop, left;
      if (absl::Status s =
              Prepare(db, "DELETE FROM blob_refs WHERE sha256 = ?1 AND last_used_us < ?2", &drop);
          !s.ok()) {
        return s;
      }
      BindText(drop, 1, sha);
      sqlite3_bind_int64(drop.s, 2, absl::ToUnixMicros(cutoff));
      if (const int rc = sqlite3_step(drop.s); rc != SQLITE_DONE) {
        return LedgerError(db, rc, "drop");
      }
      if (absl::Status s = Prepare(db, "SELECT 1 FROM blob_refs WHERE sha256 = ?1 LIMIT 1", &left);
          !s.ok()) {
        return s;
      }
      BindText(left, 1, sha);
      const int step = sqlite3_step(left.s);
      if (step == SQLITE_DONE)
        orphans.push_back(c);
      else if (step != SQLITE_ROW)
        return LedgerError(db, step, "count refs");
    }
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return orphans;
}

absl::StatusOr<int64_t> SqliteBlobLedger::StoredBytes() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  Stmt st;
  if (absl::Status s = Prepare(impl_->db,
                               "SELECT COALESCE(SUM(b), 0) FROM"
                               " (SELECT MAX(bytes) AS b FROM blob_refs GROUP BY sha256)",
                               &st);
      !s.ok()) {
    return s;
  }
  if (const int rc = sqlite3_step(st.s); rc != SQLITE_ROW) {
    return LedgerError(impl_->db, rc, "stored bytes");
  }
  return sqlite3_column_int64(st.s, 0);
}

absl::StatusOr<bool> SqliteBlobLedger::Referenced(const std::string& sha256) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  Stmt st;
  if (absl::Status s = Prepare(impl_->db, "SELECT 1 FROM blob_refs WHERE sha256 = ?1 LIMIT 1", &st);
      !s.ok()) {
    return s;
  }
  BindText(st, 1, sha256);
  const int rc = sqlite3_step(st.s);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  return LedgerError(impl_->db, rc, "referenced");
}

}  // namespace preflight::store
