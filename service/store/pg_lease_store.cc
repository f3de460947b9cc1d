#include "service/store/pg_lease_store.h"

#include <unistd.h>

#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace preflight::store {
namespace {

std::string Seconds(absl::Duration d) { return absl::StrFormat("%.3f", absl::ToDoubleSeconds(d)); }

}  // namespace

std::string PgLeaseStore::NewOwnerId() {
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  std::random_device rd;
  return absl::StrFormat("%s:%d:%08x%08x", host, getpid(), rd(), rd());
}

namespace {

// A lease lives seconds and is only ever a hint that a check is running: one
// lost with a database crash lets another replica run that check again, which
// is harmless. So its writes skip the commit's disk flush (what costs a
// durable commit milliseconds); verdicts and blobs never do.
absl::Status Ephemeral(PgDatabase::Conn& c) {
  return c.Exec("SET LOCAL synchronous_commit TO off").status();
}

}  // namespace

absl::StatusOr<Claim> PgLeaseStore::TryClaim(const std::string& digest, absl::Duration ttl) {
  Claim claim;
  absl::Status s = db_->Run([&](PgDatabase::Conn& c) -> absl::Status {
    return c.Transaction([&]() -> absl::Status {
      if (absl::Status off = Ephemeral(c); !off.ok()) return off;
      // One statement, atomic: insert, or take over a lease that expired (or
      // is already ours). `prior` is the owner before this statement, read
      // from the same snapshot: another owner there means a takeover.
      auto r = c.Exec(
          "WITH prior AS (SELECT owner FROM leases WHERE digest = $1) "
          "INSERT INTO leases (digest, owner, expires_at) "
          "VALUES ($1, $2, clock_timestamp() + $3::float8 * interval '1 second') "
          "ON CONFLICT (digest) DO UPDATE SET owner = EXCLUDED.owner, "
          "expires_at = EXCLUDED.expires_at "
          "WHERE leases.owner = EXCLUDED.owner OR leases.expires_at < clock_timestamp() "
          "RETURNING (SELECT owner FROM prior)",
          {digest, owner_, Seconds(ttl)});
      if (!r.ok()) return r.status();
      claim.granted = r->rows() == 1;
      claim.took_over = claim.granted && !r->null(0, 0) && r->Get(0, 0) != owner_;
      return absl::OkStatus();
    });
  });
  if (!s.ok()) return s;
  return claim;
}

absl::Status PgLeaseStore::Renew(const std::string& digest, absl::Duration ttl) {
  int64_t renewed = 0;
  absl::Status s = db_->Run([&](PgDatabase::Conn& c) -> absl::Status {
    return c.Transaction([&]() -> absl::Status {
      if (absl::Status off = Ephemeral(c); !off.ok()) return off;
      auto r = c.Exec(
          "UPDATE leases SET expires_at = clock_timestamp() + $3::float8 * interval '1 second' "
          "WHERE digest = $1 AND owner = $2",
          {digest, owner_, Seconds(ttl)});
      if (!r.ok()) return r.status();
      renewed = r->affected();
      return absl::OkStatus();
    });
  });
  if (!s.ok()) return s;
  if (renewed == 0) {
    return absl::AbortedError(
        absl::StrCat("lease on ", digest, " is no longer ours: it expired and was taken over"));
  }
  return absl::OkStatus();
}

absl::Status PgLeaseStore::Release(const std::string& digest) {
  return db_->Run([&](PgDatabase::Conn& c) -> absl::Status {
    return c.Exec("DELETE FROM leases WHERE digest = $1 AND owner = $2", {digest, owner_}).status();
  });
}

}  // namespace preflight::store
