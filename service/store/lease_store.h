// Fleet-wide claims on a request digest, so each distinct check runs once
// across every replica sharing a store.
//
// A replica claims a digest before it runs the check (TryClaim), renews the
// claim while the check runs (Renew, at a fraction of the TTL), and releases
// it once the verdict is stored or the check is abandoned (Release). A
// replica that is refused the claim waits for the verdict the holder stores,
// and claims again when the lease expires: the holder died, so nobody else
// would run it. Expiry is judged by the store's own clock (one clock for the
// whole fleet), never by a replica's.
//
// SingleReplicaLeases (below) is the lease store of a store no other process
// shares (the SQLite directory): every claim is granted, and identical
// requests are coalesced in process by PreflightCore.
//
//   auto claim = leases->TryClaim(digest, absl::Seconds(30));
//   if (claim.ok() && claim->granted) { run; leases->Release(digest); }
//   else { wait for the verdict; TryClaim again when it does not come }
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace preflight::store {

struct Claim {
  // This replica holds the lease now (it must run the check).
  bool granted = false;
  // Granted over another owner's expired lease: that owner died mid-check.
  bool took_over = false;
};

class LeaseStore {
 public:
  virtual ~LeaseStore() = default;
  // Claims `digest` for `ttl` unless another owner holds an unexpired lease
  // on it. Claiming a digest this owner already holds renews it.
  virtual absl::StatusOr<Claim> TryClaim(const std::string& digest, absl::Duration ttl) = 0;
  // Extends this owner's lease to now + ttl. ABORTED when the lease is no
  // longer this owner's (it expired and another replica took it over).
  virtual absl::Status Renew(const std::string& digest, absl::Duration ttl) = 0;
  // Drops this owner's lease (nothing when it holds none).
  virtual absl::Status Release(const std::string& digest) = 0;
  // Whether other processes share these leases (false: waiting for another
  // replica's verdict can never end in one).
  virtual bool shared() const = 0;
};

// The leases of a store only one process uses: every claim is granted.
class SingleReplicaLeases : public LeaseStore {
 public:
  absl::StatusOr<Claim> TryClaim(const std::string&, absl::Duration) override {
    return Claim{true, false};
  }
  absl::Status Renew(const std::string&, absl::Duration) override { return absl::OkStatus(); }
  absl::Status Release(const std::string&) override { return absl::OkStatus(); }
  bool shared() const override { return false; }
};

}  // namespace preflight::store
