// Per-tenant blob quotas and blob retention over a BlobStore and its
// BlobLedger (blob_ledger.h states the accounting rule).
//
// Every blob a check or an upload uses goes through Use(): it is charged to
// the tenant (RESOURCE_EXHAUSTED past its quota, nothing stored is touched)
// and pinned for as long as the returned Pin lives. Sweep() drops references
// unused for the retention and deletes the blobs nobody references any more,
// never one that is pinned. Verdicts and job bindings are never touched: a
// verdict does not need its blobs.
//
// Races, in one process: Use() and Sweep() take the same lock, and Use()
// checks that the blob is still stored under it, so a blob is either swept
// before a check takes it (the check then sees NOT_FOUND, as for a never
// uploaded sha256) or pinned and refreshed before the sweep looks at it.
// Across a fleet sharing one PostgreSQL store another server's pins are not
// seen; a retention of days against checks of minutes is what keeps them
// apart there (a check refreshes last_used when it starts).
//
//   BlobRetention r({.default_quota_bytes = 1 << 30, .retention = absl::Hours(24 * 30)},
//                   ledger, blobs, absl::Now);
//   auto pin = r.Use({"model", tenant, sha, size});  // held until the check ends
//   auto swept = r.Sweep();                          // at start-up, then hourly
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "service/store/blob_ledger.h"
#include "service/store/blob_store.h"

namespace preflight::store {

struct RetentionOptions {
  // Bytes a tenant may hold; <= 0: unlimited.
  int64_t default_quota_bytes = 0;
  // Per-tenant overrides of default_quota_bytes (<= 0 there: unlimited).
  absl::flat_hash_map<std::string, int64_t> tenant_quota_bytes;
  // How long an unused reference lasts; zero: forever (Sweep drops nothing).
  absl::Duration retention = absl::ZeroDuration();
};

struct SweepResult {
  int blobs_removed = 0;
  int64_t bytes_removed = 0;
  // Blobs whose references were dropped but which could not be deleted
  // (the first error is logged by the caller through `first_error`).
  int remove_failures = 0;
  absl::Status first_error;
};

class BlobRetention {
 public:
  // Keeps a blob pinned (not collectable) while it lives. Movable.
  class Pin {
   public:
    Pin() = default;
    Pin(Pin&& o) noexcept : owner_(o.owner_), sha256_(std::move(o.sha256_)) { o.owner_ = nullptr; }
    Pin& operator=(Pin&& o) noexcept;
    ~Pin() { Release(); }
    void Release();

   private:
    friend class BlobRetention;
    Pin(BlobRetention* owner, std::string sha256) : owner_(owner), sha256_(std::move(sha256)) {}
    BlobRetention* owner_ = nullptr;
    std::string sha256_;
  };

  // `ledger`, `blobs` outlive this; `clock` gives the time of uses and sweeps.
  BlobRetention(RetentionOptions options, BlobLedger* ledger, BlobStore* blobs,
                std::function<absl::Time()> clock);

  int64_t QuotaFor(const std::string& tenant) const;
  // How stale a held blob's last_used may get before a use rewrites it.
  absl::Duration RefreshAfter() const;
  // Charges `tenant` the stored size of blob `sha256` (carried by request
  // field `field`) and pins it. NOT_FOUND when it is not (or no longer)
  // stored; RESOURCE_EXHAUSTED past the tenant's quota.
  absl::StatusOr<Pin> Use(const std::string& field, const std::string& tenant,
                          const std::string& sha256);
  // For an upload that Use() refused: deletes the blob it just stored unless
  // it was already stored, someone references it or it is pinned, so a
  // refused upload leaves nothing uncharged behind.
  absl::Status DiscardRefused(const std::string& sha256, bool was_already_present);
  // Drops references unused for the retention and deletes unreferenced,
  // unpinned blobs. Cheap when nothing expired (one indexed query).
  absl::StatusOr<SweepResult> Sweep();
  // Bytes charged to the tenant.
  absl::StatusOr<int64_t> UsageBytes(const std::string& tenant) {
    return ledger_->UsageBytes(tenant);
  }
  // Bytes of the distinct blobs someone references (the stored-bytes metric).
  absl::StatusOr<int64_t> StoredBytes() { return ledger_->StoredBytes(); }
  const RetentionOptions& options() const { return options_; }

 private:
  void Unpin(const std::string& sha256);

  const RetentionOptions options_;
  BlobLedger* const ledger_;
  BlobStore* const blobs_;
  const std::function<absl::Time()> clock_;
  std::mutex mu_;  // Use vs Sweep
  std::mutex pin_mu_;
  absl::flat_hash_map<std::string, int> pins_;  // guarded by pin_mu_
};

}  // namespace preflight::store
