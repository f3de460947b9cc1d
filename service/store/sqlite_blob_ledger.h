// The blob ledger (blob_ledger.h) of a directory store: one SQLite file
// (WAL, synchronous=FULL) holding blob_refs(tenant, sha256, bytes, last_used).
// Thread-safe. Only the store factory and tests name this type.
//
//   auto ledger = SqliteBlobLedger::Open("/var/lib/preflight/blob_refs.db");
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "service/store/blob_ledger.h"

namespace preflight::store {

class SqliteBlobLedger : public BlobLedger {
 public:
  // Opens or creates the file; FAILED_PRECONDITION naming it when it cannot.
  static absl::StatusOr<std::unique_ptr<SqliteBlobLedger>> Open(const std::string& path);
  ~SqliteBlobLedger() override;

  absl::Status Charge(const BlobUse& use, absl::Time now, int64_t quota_bytes,
                      absl::Duration refresh_after) override;
  absl::StatusOr<int64_t> UsageBytes(const std::string& tenant) override;
  absl::StatusOr<std::vector<OrphanBlob>> DropUnusedSince(
      absl::Time cutoff, const absl::flat_hash_set<std::string>& keep) override;
  absl::StatusOr<bool> Referenced(const std::string& sha256) override;
  absl::StatusOr<int64_t> StoredBytes() override;

 private:
  struct Impl;
  explicit SqliteBlobLedger(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace preflight::store
