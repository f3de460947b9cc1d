// The embedded verdict store: one SQLite file in WAL mode with
// synchronous=FULL, so a Put that returned OK survives kill -9 and power
// loss, and readers never block the writer. Thread-safe. Each verdict row
// holds the SHA-256 of its report blob, recomputed on every read, so a
// report edited in the file is DATA_LOSS instead of a different verdict.
//
// Only store_factory.cc names this type; everything else holds a
// VerdictStore.
//
//   auto store = SqliteVerdictStore::Open("/var/lib/preflight/verdicts.db");
//   if (!store.ok()) ... // a corrupt or unwritable file is a start-up error
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "service/store/verdict_store.h"

namespace preflight::store {

class SqliteVerdictStore : public VerdictStore {
 public:
  // Opens or creates the database and checks its integrity. FAILED_PRECONDITION
  // with the reason for an unwritable path or a corrupt file.
  static absl::StatusOr<std::unique_ptr<SqliteVerdictStore>> Open(const std::string& path);
  ~SqliteVerdictStore() override;

  absl::Status Put(const StoredVerdict& verdict) override;
  absl::Status Bind(const std::string& job_id, const std::string& digest) override;
  absl::StatusOr<StoredVerdict> GetByDigest(const std::string& digest) override;
  absl::StatusOr<StoredVerdict> GetByJobId(const std::string& job_id) override;
  absl::Status CheckIntegrity() override;

 private:
  struct Impl;
  explicit SqliteVerdictStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace preflight::store
