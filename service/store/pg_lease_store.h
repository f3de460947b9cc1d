// Leases in PostgreSQL (`leases(digest, owner, expires_at)`): how replicas
// sharing a database run each distinct check once (lease_store.h has the
// protocol). Expiry is judged by the database's clock, so replicas' clocks
// need not agree. Thread-safe.
//
//   PgLeaseStore leases(db, PgLeaseStore::NewOwnerId());
//   auto claim = leases.TryClaim(digest, absl::Seconds(30));
#pragma once

#include <memory>
#include <string>

#include "service/store/lease_store.h"
#include "service/store/pg_database.h"

namespace preflight::store {

class PgLeaseStore : public LeaseStore {
 public:
  // `owner`: unique to this process among every replica, ever (a restarted
  // replica must not inherit its dead predecessor's leases).
  PgLeaseStore(std::shared_ptr<PgDatabase> db, std::string owner)
      : db_(std::move(db)), owner_(std::move(owner)) {}
  // HOSTNAME:PID:RANDOM.
  static std::string NewOwnerId();

  absl::StatusOr<Claim> TryClaim(const std::string& digest, absl::Duration ttl) override;
  absl::Status Renew(const std::string& digest, absl::Duration ttl) override;
  absl::Status Release(const std::string& digest) override;
  bool shared() const override { return true; }

  const std::string& owner() const { return owner_; }

 private:
  std::shared_ptr<PgDatabase> db_;
  const std::string owner_;
};

}  // namespace preflight::store
