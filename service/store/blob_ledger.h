// Who uses which stored blob, and how much each tenant holds: the accounting
// behind per-tenant blob quotas and blob retention (blob_retention.h).
//
// Accounting rule: a tenant is charged the full size of every distinct blob
// it has uploaded or used (by inline bytes or by sha256) within the retention
// window. A blob shared by two tenants counts against both: neither can push
// the other out of the store, and one tenant's usage never depends on what
// another tenant did. Using a blob the tenant already holds only refreshes its
// last_used time and is never charged twice.
//
//   auto ledger = SqliteBlobLedger::Open(dir + "/blob_refs.db");
//   (*ledger)->Charge({"model", "tenant-a", sha, bytes}, now, quota_bytes);
//   auto orphans = (*ledger)->DropUnusedSince(now - retention, pinned);
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace preflight::store {

// One use of one blob by one tenant, as the RPC handler sees it.
struct BlobUse {
  std::string field;  // the request field that carried it ("model", "upload")
  std::string tenant;
  std::string sha256;
  int64_t bytes = 0;
};

// A blob that lost its last reference, and its size.
struct OrphanBlob {
  std::string sha256;
  int64_t bytes = 0;
};

// The quota decision, free of any store: OK when `tenant`, holding
// `usage_bytes`, may take on a new blob of `new_bytes` under `quota_bytes`
// (<= 0: unlimited). Otherwise RESOURCE_EXHAUSTED naming the field, the
// tenant, the usage and the quota, so the caller knows what to free.
absl::Status CheckQuota(const BlobUse& use, int64_t usage_bytes, int64_t quota_bytes);

class BlobLedger {
 public:
  virtual ~BlobLedger() = default;

  // Records that use.tenant used use.sha256 at `now`. A blob new to the
  // tenant is first checked with CheckQuota against the tenant's current
  // usage; when refused nothing is recorded (and nothing stored is touched).
  // A blob the tenant already references only gets last_used = now, and
  // only when its last_used is older than `refresh_after`: a repeat of a
  // stored request writes nothing here (it then also works on a full disk).
  // Atomic against concurrent Charges of the same tenant.
  virtual absl::Status Charge(const BlobUse& use, absl::Time now, int64_t quota_bytes,
                              absl::Duration refresh_after) = 0;
  // Bytes the tenant is charged for now (0 for an unknown tenant).
  virtual absl::StatusOr<int64_t> UsageBytes(const std::string& tenant) = 0;
  // Drops every reference last used before `cutoff`, except references to a
  // blob in `keep` (blobs an in-flight check holds). Returns the blobs that
  // lost their last reference in this call: no tenant references them any
  // more, so the blob store may delete them.
  virtual absl::StatusOr<std::vector<OrphanBlob>> DropUnusedSince(
      absl::Time cutoff, const absl::flat_hash_set<std::string>& keep) = 0;
  // Bytes of the distinct blobs any tenant references (a shared blob once).
  virtual absl::StatusOr<int64_t> StoredBytes() = 0;
  // Whether any tenant references the blob (the sweep's last check before
  // deleting, under the retention lock).
  virtual absl::StatusOr<bool> Referenced(const std::string& sha256) = 0;
};

}  // namespace preflight::store
