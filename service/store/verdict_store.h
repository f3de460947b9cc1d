// Durable verdicts: report by request digest, and by caller job id.
//
// VerdictStore is the seam a fleet-wide store will implement later; the
// embedded implementation is SQLite in WAL mode with synchronous=FULL, so a
// Put that returned OK survives kill -9 and power loss, and readers never
// block the writer. Thread-safe.
//
//   auto store = SqliteVerdictStore::Open("/var/lib/preflight/verdicts.db");
//   if (!store.ok()) ... // a corrupt or unwritable file is a start-up error
//   (*store)->Put({digest, job_id, report});
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "preflight/v1/report.pb.h"

namespace preflight::store {

struct StoredVerdict {
  std::string request_digest;
  std::string job_id;  // May be empty.
  v1::Report report;
  double created_unix_seconds = 0;
};

class VerdictStore {
 public:
  virtual ~VerdictStore() = default;
  // Stores (or replaces) the verdict for a digest; a job id, when given,
  // then points at it.
  virtual absl::Status Put(const StoredVerdict& verdict) = 0;
  // NOT_FOUND when absent.
  virtual absl::StatusOr<StoredVerdict> GetByDigest(const std::string& digest) = 0;
  virtual absl::StatusOr<StoredVerdict> GetByJobId(const std::string& job_id) = 0;
};

class SqliteVerdictStore : public VerdictStore {
 public:
  // Opens or creates the database and checks its integrity. FAILED_PRECONDITION
  // with the reason for an unwritable path or a corrupt file.
  static absl::StatusOr<std::unique_ptr<SqliteVerdictStore>> Open(const std::string& path);
  ~SqliteVerdictStore() override;

  absl::Status Put(const StoredVerdict& verdict) override;
  absl::StatusOr<StoredVerdict> GetByDigest(const std::string& digest) override;
  absl::StatusOr<StoredVerdict> GetByJobId(const std::string& job_id) override;

 private:
  struct Impl;
  explicit SqliteVerdictStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace preflight::store
