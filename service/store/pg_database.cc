#include "service/store/pg_database.h"

#include <libpq-fe.h>

#include <cstdlib>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace preflight::store {
namespace {

// Idle connections kept for reuse; more may be open while busy.
constexpr size_t kMaxIdle = 8;

// The schema this code writes, in the `schema_version` table (one row per
// migration applied). 1: verdicts, job_bindings, blobs, blob_chunks, leases.
// 2: blob_refs (who uses which blob: quotas and retention, blob_ledger.h).
constexpr int kSchemaVersion = 2;

// pg_advisory_xact_lock(kLockSpace, kSchemaLock) serializes migrations.
constexpr int kLockSpace = 0x70726566;  // "pref"
constexpr int kSchemaLock = 1;

constexpr const char* kSchemaV1[] = {
    "CREATE TABLE verdicts ("
    "  request_digest text PRIMARY KEY,"
    "  verdict integer NOT NULL,"
    "  report bytea NOT NULL,"
    "  created_unix_seconds double precision NOT NULL,"
    // Tamper evidence (hex sha256 of `report`) and the server's signature
    // over it, as for the SQLite store.
    "  report_sha256 text NOT NULL,"
    "  report_signature bytea,"
    "  signing_key_id text)",
    // Every (re)binding of a job id, in order: bindings are never overwritten.
    "CREATE TABLE job_bindings ("
    "  seq bigserial PRIMARY KEY,"
    "  job_id text NOT NULL,"
    "  request_digest text NOT NULL,"
    "  bound_unix_seconds double precision NOT NULL)",
    "CREATE INDEX job_bindings_by_job ON job_bindings (job_id, seq)",
    "CREATE INDEX job_bindings_by_digest ON job_bindings (request_digest, seq)",
    // A blob exists once its row does; its bytes are chunk rows, written in
    // the same transaction, under a temporary key until then.
    "CREATE TABLE blobs ("
    "  sha256 text PRIMARY KEY,"
    "  size bigint NOT NULL,"
    "  chunks integer NOT NULL,"
    "  created_unix_seconds double precision NOT NULL)",
    "CREATE TABLE blob_chunks ("
    "  blob_key text NOT NULL,"
    "  seq integer NOT NULL,"
    "  data bytea NOT NULL,"
    "  PRIMARY KEY (blob_key, seq))",
    // Artifacts are zip archives: compressing them again costs CPU for nothing.
    "ALTER TABLE blob_chunks ALTER COLUMN data SET STORAGE EXTERNAL",
    // Who runs a check now, until when (the database's clock).
    "CREATE TABLE leases ("
    "  digest text PRIMARY KEY,"
    "  owner text NOT NULL,"
    "  expires_at timestamptz NOT NULL)",
};

constexpr const char* kSchemaV2[] = {
    "CREATE TABLE blob_refs ("
    "  tenant text NOT NULL,"
    "  sha256 text NOT NULL,"
    "  bytes bigint NOT NULL,"
    "  last_used_us bigint NOT NULL,"
    "  PRIMARY KEY (tenant, sha256))",
    "CREATE INDEX blob_refs_by_sha ON blob_refs (sha256)",
    "CREATE INDEX blob_refs_by_last_used ON blob_refs (last_used_us)",
};

// libpq's messages end in a newline and may span lines.
std::string OneLine(const char* m) {
  std::string s = m != nullptr ? m : "";
  for (char& c : s) {
    if (c == '\n') c = ' ';
  }
  return std::string(absl::StripAsciiWhitespace(s));
}

}  // namespace

PgResult::~PgResult() { PQclear(r_); }
int PgResult::rows() const { return PQntuples(r_); }
bool PgResult::null(int row, int col) const { return PQgetisnull(r_, row, col) != 0; }
absl::string_view PgResult::Get(int row, int col) const {
  return absl::string_view(PQgetvalue(r_, row, col),
                           static_cast<size_t>(PQgetlength(r_, row, col)));
}
std::string PgResult::Bytes(int row, int col) const {
  size_t n = 0;
  unsigned char* b =
      PQunescapeBytea(reinterpret_cast<const unsigned char*>(PQgetvalue(r_, row, col)), &n);
  if (b == nullptr) return "";
  std::string out(reinterpret_cast<const char*>(b), n);
  PQfreemem(b);
  return out;
}
double PgResult::Double(int row, int col) const {
  return std::strtod(PQgetvalue(r_, row, col), nullptr);
}
int64_t PgResult::Int(int row, int col) const {
  return std::strtoll(PQgetvalue(r_, row, col), nullptr, 10);
}
int64_t PgResult::affected() const { return std::strtoll(PQcmdTuples(r_), nullptr, 10); }

absl::StatusOr<std::string> PgStoreName(const std::string& url) {
  char* err = nullptr;
  PQconninfoOption* opts = PQconninfoParse(url.c_str(), &err);
  if (opts == nullptr) {
    std::string why = OneLine(err);
    PQfreemem(err);
    // libpq's message may quote the string, password included: say only why.
    if (absl::StrContains(why, url)) why = "malformed";
    return absl::InvalidArgumentError(
        absl::StrCat("store: not a PostgreSQL connection URL (", why,
                     "); expected postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"));
  }
  std::string user, host, hostaddr, port, db;
  for (PQconninfoOption* o = opts; o->keyword != nullptr; ++o) {
    if (o->val == nullptr) continue;
    const std::string k = o->keyword;
    if (k == "user") user = o->val;
    if (k == "host") host = o->val;
    if (k == "hostaddr") hostaddr = o->val;
    if (k == "port") port = o->val;
    if (k == "dbname") db = o->val;
  }
  PQconninfoFree(opts);
  if (host.empty()) host = hostaddr.empty() ? "localhost" : hostaddr;
  return absl::StrCat("postgresql://", user.empty() ? "" : absl::StrCat(user, "@"), host,
                      port.empty() ? "" : absl::StrCat(":", port), "/", db);
}

absl::StatusOr<std::shared_ptr<PgDatabase>> PgDatabase::Open(const std::string& url) {
  auto name = PgStoreName(url);
  if (!name.ok()) return name.status();
  std::shared_ptr<PgDatabase> db(new PgDatabase(url, *name));
  if (absl::Status s = db->Migrate(); !s.ok()) return s;
  return db;
}

PgDatabase::~PgDatabase() {
  for (PGconn* c : idle_) PQfinish(c);
}

absl::StatusOr<PGconn*> PgDatabase::NewConnection() {
  // These come before the URL so that its own settings override them. A
  // database that stops answering (a network partition: no refusal comes
  // back) must fail an operation within half a minute, not hang it for
  // libpq's default of forever: a connect timeout, TCP keepalives, and a
  // bound on unacknowledged sends.
  const char* keys[] = {"connect_timeout",     "keepalives",       "keepalives_idle",
                        "keepalives_interval", "keepalives_count", "tcp_user_timeout",
                        "application_name",    "dbname",           nullptr};
  const char* values[] = {"5",          "1",    "10", "5", "3", "30000", "preflight-server",
                          url_.c_str(), nullptr};
  PGconn* c = PQconnectdbParams(keys, values, /*expand_dbname=*/1);
  if (c == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat("store ", name_, ": out of memory"));
  }
  if (PQstatus(c) != CONNECTION_OK) {
    const std::string why = OneLine(PQerrorMessage(c));
    PQfinish(c);
    return absl::UnavailableError(absl::StrCat("store ", name_, " is unavailable: ", why,
                                               "; retry when the database is reachable"));
  }
  // The server's NOTICEs ("relation ... already exists, skipping") are not
  // for the service's log.
  PQsetNoticeProcessor(
      c, [](void*, const char*) {}, nullptr);
  // Verdict bytes and chunk rows travel as bytea: hex, whatever the server's
  // default.
  PGresult* r = PQexec(c, "SET bytea_output = 'hex'");
  const bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
  PQclear(r);
  if (!ok) {
    const std::string why = OneLine(PQerrorMessage(c));
    PQfinish(c);
    return absl::UnavailableError(absl::StrCat("store ", name_, " is unavailable: ", why));
  }
  return c;
}

absl::StatusOr<PgDatabase::Conn> PgDatabase::Connect() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!idle_.empty()) {
      PGconn* c = idle_.back();
      idle_.pop_back();
      return Conn(this, c, /*reused=*/true);
    }
  }
  auto c = NewConnection();
  if (!c.ok()) return c.status();
  return Conn(this, *c, /*reused=*/false);
}

void PgDatabase::Return(PGconn* c) {
  // A connection left inside a transaction (an upload abandoned mid-way) is
  // rolled back before anyone else may use it.
  if (PQstatus(c) == CONNECTION_OK &&
      (PQtransactionStatus(c) == PQTRANS_INTRANS || PQtransactionStatus(c) == PQTRANS_INERROR)) {
    PQclear(PQexec(c, "ROLLBACK"));
  }
  const bool reusable = PQstatus(c) == CONNECTION_OK && PQtransactionStatus(c) == PQTRANS_IDLE;
  if (reusable) {
    std::lock_guard<std::mutex> lock(mu_);
    if (idle_.size() < kMaxIdle) {
      idle_.push_back(c);
      return;
    }
  }
  PQfinish(c);
}

absl::Status PgDatabase::Run(const std::function<absl::Status(Conn&)>& op) {
  for (int attempt = 0;; ++attempt) {
    auto conn = Connect();
    if (!conn.ok()) return conn.status();
    absl::Status s = op(*conn);
    if (s.ok() || !conn->reused_ || !conn->broken() || attempt > 0) return s;
    // The idle connection died while it waited (a database restart): every
    // other idle one did too. Retry once on a fresh connection.
    std::vector<PGconn*> stale;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stale.swap(idle_);
    }
    for (PGconn* c : stale) PQfinish(c);
  }
}

PgDatabase::Conn::Conn(Conn&& o) noexcept : db_(o.db_), c_(o.c_), reused_(o.reused_) {
  o.c_ = nullptr;
}

PgDatabase::Conn::~Conn() {
  if (c_ != nullptr) db_->Return(c_);
}

bool PgDatabase::Conn::broken() const { return c_ == nullptr || PQstatus(c_) != CONNECTION_OK; }

absl::StatusOr<PgResult> PgDatabase::Conn::Exec(const char* sql,
                                                std::initializer_list<PgParam> params,
                                                bool binary_result) {
  std::vector<const char*> values;
  std::vector<int> lengths, formats;
  // Text parameters must be NUL-terminated for libpq: keep copies.
  std::vector<std::string> text;
  text.reserve(params.size());
  for (const PgParam& p : params) {
    if (p.binary) {
      values.push_back(p.value.data());
    } else {
      text.emplace_back(p.value);
      values.push_back(text.back().c_str());
    }
    lengths.push_back(static_cast<int>(p.value.size()));
    formats.push_back(p.binary ? 1 : 0);
  }
  PGresult* r = PQexecParams(c_, sql, static_cast<int>(params.size()), nullptr, values.data(),
                             lengths.data(), formats.data(), binary_result ? 1 : 0);
  const ExecStatusType st = PQresultStatus(r);
  if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) return PgResult(r);
  absl::Status s = db_->Error(c_, r, sql);
  PQclear(r);
  return s;
}

absl::Status PgDatabase::Conn::Transaction(const std::function<absl::Status()>& body) {
  if (auto r = Exec("BEGIN"); !r.ok()) return r.status();
  absl::Status s = body();
  if (s.ok()) {
    if (auto r = Exec("COMMIT"); !r.ok()) s = r.status();
  }
  if (!s.ok() && !broken()) Exec("ROLLBACK").IgnoreError();
  return s;
}

absl::Status PgDatabase::Error(PGconn* c, const PGresult* r, const char* sql) const {
  const char* state = r != nullptr ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : nullptr;
  const std::string code = state != nullptr ? state : "";
  const std::string why = OneLine(r != nullptr && *PQresultErrorMessage(r) ? PQresultErrorMessage(r)
                                                                           : PQerrorMessage(c));
  // Class 08: connection exceptions; 57P0x: the server is shutting down or
  // starting; no SQLSTATE with a dead connection: libpq lost it itself.
  if (PQstatus(c) != CONNECTION_OK || absl::StartsWith(code, "08") ||
      absl::StartsWith(code, "57P")) {
    return absl::UnavailableError(absl::StrCat("store ", name_, " is unavailable: ", why,
                                               "; retry when the database is reachable"));
  }
  // 53100 disk_full, 53200 out_of_memory, 53300 too_many_connections.
  if (absl::StartsWith(code, "53")) {
    return absl::ResourceExhaustedError(
        absl::StrCat("store ", name_, " is out of resources: ", why, " (SQLSTATE ", code, ")"));
  }
  std::string stmt = sql;
  if (stmt.size() > 60) stmt = stmt.substr(0, 60) + "...";
  return absl::InternalError(
      absl::StrCat("store ", name_, ": ", why, " (SQLSTATE ", code, ", in: ", stmt, ")"));
}

absl::Status PgDatabase::Migrate() {
  return Run([&](Conn& c) -> absl::Status {
    return c.Transaction([&]() -> absl::Status {
      // Held to the end of this transaction: replicas that start at once
      // migrate one after another, the later ones finding nothing to do.
      if (auto r = c.Exec("SELECT pg_advisory_xact_lock($1, $2)",
                          {absl::StrCat(kLockSpace), absl::StrCat(kSchemaLock)});
          !r.ok()) {
        return r.status();
      }
      if (auto r = c.Exec("CREATE TABLE IF NOT EXISTS schema_version ("
                          "  version integer PRIMARY KEY,"
                          "  migrated_at timestamptz NOT NULL DEFAULT now())");
          !r.ok()) {
        return r.status();
      }
      auto v = c.Exec("SELECT coalesce(max(version), 0) FROM schema_version");
      if (!v.ok()) return v.status();
      const int64_t version = v->Int(0, 0);
      if (version > kSchemaVersion) {
        return absl::FailedPreconditionError(
            absl::StrCat("store ", name_, ": written by a newer Preflight (schema ", version,
                         ", this one reads ", kSchemaVersion, ")"));
      }
      if (version < 1) {
        for (const char* ddl : kSchemaV1) {
          if (auto r = c.Exec(ddl); !r.ok()) return r.status();
        }
        if (auto r = c.Exec("INSERT INTO schema_version (version) VALUES (1)"); !r.ok()) {
          return r.status();
        }
      }
      if (version < 2) {
        for (const char* ddl : kSchemaV2) {
          if (auto r = c.Exec(ddl); !r.ok()) return r.status();
        }
        if (auto r = c.Exec("INSERT INTO schema_version (version) VALUES (2)"); !r.ok()) {
          return r.status();
        }
      }
      return absl::OkStatus();
    });
  });
}

}  // namespace preflight::store
