// The fleet verdict store: verdicts and job-id bindings in PostgreSQL, shared
// by every replica, with the same semantics as the SQLite store (bindings are
// history, never overwritten). Thread-safe; a Put that returned OK is
// committed (durable as the database is configured to be).
//
// A lost database is UNAVAILABLE naming the store (pg_database.h) and the
// next call reconnects. Only store_factory.cc names this type.
//
//   auto db = PgDatabase::Open("postgresql://preflight@db/preflight");
//   PgVerdictStore verdicts(*db);
#pragma once

#include <memory>
#include <string>

#include "service/store/pg_database.h"
#include "service/store/verdict_store.h"

namespace preflight::store {

class PgVerdictStore : public VerdictStore {
 public:
  explicit PgVerdictStore(std::shared_ptr<PgDatabase> db) : db_(std::move(db)) {}

  absl::Status Put(const StoredVerdict& verdict) override;
  absl::Status Bind(const std::string& job_id, const std::string& digest) override;
  absl::StatusOr<StoredVerdict> GetByDigest(const std::string& digest) override;
  absl::StatusOr<StoredVerdict> GetByJobId(const std::string& job_id) override;
  // DATA_LOSS naming (up to 10 of) the rows whose report no longer hashes to
  // the sha256 recorded when it was stored.
  absl::Status CheckIntegrity() override;

 private:
  std::shared_ptr<PgDatabase> db_;
};

}  // namespace preflight::store
