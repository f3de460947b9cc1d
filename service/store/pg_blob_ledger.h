// The blob ledger (blob_ledger.h) of the PostgreSQL fleet store: the
// blob_refs table (schema 2, pg_database.cc), shared by every server of the
// fleet. Charge takes a per-tenant advisory lock, so two servers charging one
// tenant at once cannot both slip under its quota.
//
//   PgBlobLedger ledger(db);
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "service/store/blob_ledger.h"
#include "service/store/pg_database.h"

namespace preflight::store {

class PgBlobLedger : public BlobLedger {
 public:
  explicit PgBlobLedger(std::shared_ptr<PgDatabase> db) : db_(std::move(db)) {}

  absl::Status Charge(const BlobUse& use, absl::Time now, int64_t quota_bytes,
                      absl::Duration refresh_after) override;
  absl::StatusOr<int64_t> UsageBytes(const std::string& tenant) override;
  absl::StatusOr<std::vector<OrphanBlob>> DropUnusedSince(
      absl::Time cutoff, const absl::flat_hash_set<std::string>& keep) override;
  absl::StatusOr<bool> Referenced(const std::string& sha256) override;
  absl::StatusOr<int64_t> StoredBytes() override;

 private:
  std::shared_ptr<PgDatabase> db_;
};

}  // namespace preflight::store
