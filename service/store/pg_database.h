// The PostgreSQL connection pool, error mapping and schema shared by the
// fleet backends (pg_verdict_store.h, pg_blob_store.h, pg_lease_store.h).
//
// Connections are opened on demand and kept idle for reuse; one is used by
// one thread at a time. A lost connection (the database restarted or is
// down) makes the operation UNAVAILABLE naming the store, never a crash; the
// next operation connects again, so service resumes by itself when the
// database returns. An idempotent operation that failed on a reused idle
// connection (stale after a database restart) is retried once on a fresh one.
//
// Open() creates or migrates the schema (the `schema_version` table) under
// an advisory lock, so replicas that start at once migrate it once.
//
//   auto db = PgDatabase::Open("postgresql://preflight@db:5432/preflight");
//   absl::Status s = (*db)->Run([&](PgDatabase::Conn& c) -> absl::Status {
//     auto r = c.Exec("SELECT 1 FROM verdicts WHERE request_digest = $1", {digest});
//     ...
//   });
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

typedef struct pg_conn PGconn;
typedef struct pg_result PGresult;

namespace preflight::store {

// One query parameter: text, or raw bytes for a bytea column.
struct PgParam {
  PgParam(absl::string_view v) : value(v) {}   // NOLINT: text parameters read naturally.
  PgParam(const std::string& v) : value(v) {}  // NOLINT
  PgParam(const char* v) : value(v) {}         // NOLINT
  static PgParam Bytes(absl::string_view v) {
    PgParam p(v);
    p.binary = true;
    return p;
  }
  absl::string_view value;
  bool binary = false;
};

// An owned query result.
class PgResult {
 public:
  explicit PgResult(PGresult* r) : r_(r) {}
  PgResult(PgResult&& o) noexcept : r_(o.r_) { o.r_ = nullptr; }
  PgResult& operator=(PgResult&&) = delete;
  ~PgResult();
  int rows() const;
  bool null(int row, int col) const;
  // The value as text (or raw bytes, for a binary result).
  absl::string_view Get(int row, int col) const;
  // A bytea column of a text result, decoded.
  std::string Bytes(int row, int col) const;
  double Double(int row, int col) const;
  int64_t Int(int row, int col) const;
  // Rows a command changed (UPDATE, DELETE, INSERT).
  int64_t affected() const;

 private:
  PGresult* r_;
};

class PgDatabase {
 public:
  // Connects, and creates or migrates the schema. FAILED_PRECONDITION for a
  // database written by a newer Preflight; UNAVAILABLE naming the store when
  // it cannot be reached. `url`: a libpq connection URI or key=value string.
  static absl::StatusOr<std::shared_ptr<PgDatabase>> Open(const std::string& url);
  ~PgDatabase();

  // The store as messages name it: postgresql://USER@HOST:PORT/DB, never
  // the password or other options.
  const std::string& name() const { return name_; }

  // One connection in use; returned to the pool when destroyed.
  class Conn {
   public:
    Conn(Conn&& o) noexcept;
    Conn& operator=(Conn&&) = delete;
    ~Conn();
    // Runs `sql` with positional parameters ($1...); `binary_result`: every
    // column comes back as raw bytes. Errors are mapped (see Error()).
    absl::StatusOr<PgResult> Exec(const char* sql, std::initializer_list<PgParam> params = {},
                                  bool binary_result = false);
    // BEGIN ... COMMIT around `body`, rolled back when it fails.
    absl::Status Transaction(const std::function<absl::Status()>& body);
    bool broken() const;

   private:
    friend class PgDatabase;
    Conn(PgDatabase* db, PGconn* c, bool reused) : db_(db), c_(c), reused_(reused) {}
    PgDatabase* db_;
    PGconn* c_;
    bool reused_;
  };

  // A connection for a sequence of statements (an upload's transaction).
  // UNAVAILABLE naming the store when it cannot connect.
  absl::StatusOr<Conn> Connect();
  // Runs an idempotent operation on a pooled connection; retried once on a
  // fresh connection when a reused one turns out to be dead.
  absl::Status Run(const std::function<absl::Status(Conn&)>& op);

 private:
  PgDatabase(std::string url, std::string name) : url_(std::move(url)), name_(std::move(name)) {}
  absl::StatusOr<PGconn*> NewConnection();
  void Return(PGconn* c);
  absl::Status Migrate();
  // A failed statement as a status: a connection that is gone (or a server
  // shutting down) is UNAVAILABLE naming the store; a full disk
  // RESOURCE_EXHAUSTED naming it; anything else INTERNAL.
  absl::Status Error(PGconn* c, const PGresult* r, const char* sql) const;

  const std::string url_;
  const std::string name_;
  std::mutex mu_;
  std::vector<PGconn*> idle_;  // Guarded by mu_.
};

// "postgresql://USER@HOST:PORT/DB" of a connection string, without the
// password: how logs and errors name the store. INVALID_ARGUMENT when libpq
// cannot parse it (the message does not repeat it).
absl::StatusOr<std::string> PgStoreName(const std::string& url);

}  // namespace preflight::store
