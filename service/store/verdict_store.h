// Durable verdicts: report by request digest, and by caller job id.
//
// The interface every backend implements (sqlite_verdict_store.h today; a
// fleet-wide one later) and the only verdict-store type the server and its
// tests see: they get one from store_factory.h. Every backend passes the
// conformance suite in tests/store/verdict_store_conformance.h.
//
// Contract, for every implementation: thread-safe; a Put that returned OK is
// durable (survives a crash of the process); the report comes back
// byte-for-byte as stored.
//
//   auto stores = OpenStore("/var/lib/preflight");
//   (*stores).verdicts->Put({digest, job_id, report});
//   auto v = (*stores).verdicts->GetByJobId("train/run-42");
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "preflight/v1/report.pb.h"

namespace preflight::store {

struct StoredVerdict {
  // Hex SHA-256 of the request (PreflightCore's cache key).
  std::string request_digest;
  std::string job_id;  // May be empty.
  v1::Report report;
  double created_unix_seconds = 0;
};

class VerdictStore {
 public:
  virtual ~VerdictStore() = default;
  // Stores (or replaces) the verdict for a digest; a job id, when given,
  // then points at it. `created_unix_seconds` <= 0 means now.
  virtual absl::Status Put(const StoredVerdict& verdict) = 0;
  // NOT_FOUND when absent.
  virtual absl::StatusOr<StoredVerdict> GetByDigest(const std::string& digest) = 0;
  // The most recently stored verdict that job id pointed at; NOT_FOUND when
  // none.
  virtual absl::StatusOr<StoredVerdict> GetByJobId(const std::string& job_id) = 0;
};

}  // namespace preflight::store
