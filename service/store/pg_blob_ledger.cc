#include "service/store/pg_blob_ledger.h"

#include "absl/strings/str_cat.h"

namespace preflight::store {
namespace {

// pg_advisory_xact_lock(kLockSpace, hashtext(tenant)) serializes one
// tenant's charges across the fleet (pg_database.cc uses key 1 of the space
// for migrations; a hash collision only serializes two tenants).
constexpr int kLockSpace = 0x70726567;  // "preg"

}  // namespace

absl::Status PgBlobLedger::Charge(const BlobUse& use, absl::Time now, int64_t quota_bytes,
                                  absl::Duration refresh_after) {
  const std::string now_us = absl::StrCat(absl::ToUnixMicros(now));
  const std::string fresh_us = absl::StrCat(absl::ToUnixMicros(now - refresh_after));
  return db_->Run([&](PgDatabase::Conn& c) -> absl::Status {
    // Held and recently refreshed: nothing to write, no lock to take.
    auto fresh = c.Exec(
        "SELECT 1 FROM blob_refs WHERE tenant = $1 AND sha256 = $2 AND last_used_us >= $3::bigint",
        {use.tenant, use.sha256, fresh_us});
    if (!fresh.ok()) return fresh.status();
    if (fresh->rows() > 0) return absl::OkStatus();
    return c.Transaction([&]() -> absl::Status {
      if (auto r = c.Exec("SELECT pg_advisory_xact_lock($1, hashtext($2))",
                          {absl::StrCat(kLockSpace), use.tenant});
          !r.ok()) {
        return r.status();
      }
      auto touched = c.Exec(
          "UPDATE blob_refs SET last_used_us = GREATEST(last_used_us, $3::bigint)"
          " WHERE tenant = $1 AND sha256 = $2",
          {use.tenant, use.sha256, now_us});
      if (!touched.ok()) return touched.status();
      if (touched->affected() > 0) return absl::OkStatus();  // already held: never charged twice
      auto usage =
          c.Exec("SELECT coalesce(sum(bytes), 0) FROM blob_refs WHERE tenant = $1", {use.tenant});
      if (!usage.ok()) return usage.status();
      if (absl::Status s = CheckQuota(use, usage->Int(0, 0), quota_bytes); !s.ok()) return s;
      auto inserted = c.Exec(
          "INSERT INTO blob_refs (tenant, sha256, bytes, last_used_us) VALUES ($1, $2, $3, $4)",
          {use.tenant, use.sha256, absl::StrCat(use.bytes), now_us});
      return inserted.status();
    });
  });
}

absl::StatusOr<int64_t> PgBlobLedger::UsageBytes(const std::string& tenant) {
  int64_t out = 0;
  absl::Status s = db_->Run([&](PgDatabase::Conn& c) -> absl::Status {
    auto r = c.Exec("SELECT coalesce(sum(bytes), 0) FROM blob_refs WHERE tenant = $1", {tenant});
    if (!r.ok()) return r.status();
    out = r->Int(0, 0);
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return out;
}

absl::StatusOr<std::vector<OrphanBlob>> PgBlobLedger::DropUnusedSince(
    absl::Time cutoff, const absl::flat_hash_set<std::string>& keep) {
  const std::string cutoff_us = absl::StrCat(absl::ToUnixMicros(cutoff));
  std::vector<OrphanBlob> orphans;
  absl::Status s = db_->Run([&](PgDatabase::Conn& c) -> absl::Status {
    orphans.clear();
    return c.Transaction([&]() -> absl::Status {
      auto expired = c.Exec(
          "SELECT sha256, max(bytes) FROM blob_refs WHERE last_used_us < $1::bigint"
          " GROUP BY sha256",
          {cutoff_us});
      if (!expired.ok()) return expired.status();
      for (int i = 0; i < expired->rows(); ++i) {
        const std::string sha(expired->Get(i, 0));
        if (keep.contains(sha)) continue;
        auto dropped =
            c.Exec("DELETE FROM blob_refs WHERE sha256 = $1 AND last_used_us < $2::bigint",
                   {sha, cutoff_us});
        if (!dropped.ok()) return dropped.status();
        auto left = c.Exec("SELECT 1 FROM blob_refs WHERE sha256 = $1 LIMIT 1", {sha});
        if (!left.ok()) return left.status();
        if (left->rows() == 0) orphans.push_back({sha, expired->Int(i, 1)});
      }
      return absl::OkStatus();
    });
  });
  if (!s.ok()) return s;
  return orphans;
}

absl::StatusOr<int64_t> PgBlobLedger::StoredBytes() {
  int64_t out = 0;
  absl::Status s = db_->Run([&](PgDatabase::Conn& c) -> absl::Status {
    auto r = c.Exec(
        "SELECT coalesce(sum(b), 0) FROM (SELECT max(bytes) AS b FROM blob_refs GROUP BY sha256) "
        "t");
    if (!r.ok()) return r.status();
    out = r->Int(0, 0);
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return out;
}

absl::StatusOr<bool> PgBlobLedger::Referenced(const std::string& sha256) {
  bool found = false;
  absl::Status s = db_->Run([&](PgDatabase::Conn& c) -> absl::Status {
    auto r = c.Exec("SELECT 1 FROM blob_refs WHERE sha256 = $1 LIMIT 1", {sha256});
    if (!r.ok()) return r.status();
    found = r->rows() > 0;
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return found;
}

}  // namespace preflight::store
