#include "service/store/blob_retention.h"

#include <algorithm>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"

namespace preflight::store {

BlobRetention::Pin& BlobRetention::Pin::operator=(Pin&& o) noexcept {
  if (this != &o) {
    Release();
    owner_ = o.owner_;
    sha256_ = std::move(o.sha256_);
    o.owner_ = nullptr;
  }
  return *this;
}

void BlobRetention::Pin::Release() {
  if (owner_ != nullptr) owner_->Unpin(sha256_);
  owner_ = nullptr;
}

BlobRetention::BlobRetention(RetentionOptions options, BlobLedger* ledger, BlobStore* blobs,
                             std::function<absl::Time()> clock)
    : options_(std::move(options)), ledger_(ledger), blobs_(blobs), clock_(std::move(clock)) {}

absl::Duration BlobRetention::RefreshAfter() const {
  // A held blob's last_used is rewritten at most this often: a hundredth of
  // the retention (so a blob used within 99% of it is always kept), at most a
  // minute (so a retention switched on later sees recent uses).
  constexpr absl::Duration kMax = absl::Minutes(1);
  if (options_.retention <= absl::ZeroDuration()) return kMax;
  return std::min(kMax, options_.retention / 100);
}

int64_t BlobRetention::QuotaFor(const std::string& tenant) const {
  auto it = options_.tenant_quota_bytes.find(tenant);
  return it != options_.tenant_quota_bytes.end() ? it->second : options_.default_quota_bytes;
}

absl::StatusOr<BlobRetention::Pin> BlobRetention::Use(const std::string& field,
                                                      const std::string& tenant,
                                                      const std::string& sha256) {
  std::lock_guard<std::mutex> lock(mu_);
  auto size = blobs_->SizeOf(sha256);
  if (absl::IsNotFound(size.status())) {
    return absl::NotFoundError(
        absl::StrCat(field, ": no stored artifact ", sha256, "; Upload it again"));
  }
  if (!size.ok()) return size.status();
  const BlobUse use{field, tenant, sha256, *size};
  if (absl::Status s = ledger_->Charge(use, clock_(), QuotaFor(use.tenant), RefreshAfter());
      !s.ok()) {
    return s;
  }
  std::lock_guard<std::mutex> pins(pin_mu_);
  ++pins_[use.sha256];
  return Pin(this, use.sha256);
}

void BlobRetention::Unpin(const std::string& sha256) {
  std::lock_guard<std::mutex> lock(pin_mu_);
  auto it = pins_.find(sha256);
  if (it != pins_.end() && --it->second <= 0) pins_.erase(it);
}

absl::Status BlobRetention::DiscardRefused(const std::string& sha256, bool was_already_present) {
  if (was_already_present) return absl::OkStatus();
  std::lock_guard<std::mutex> lock(mu_);
  {
    std::lock_guard<std::mutex> pins(pin_mu_);
    if (pins_.contains(sha256)) return absl::OkStatus();
  }
  auto referenced = ledger_->Referenced(sha256);
  if (!referenced.ok()) return referenced.status();
  if (*referenced) return absl::OkStatus();
  return blobs_->Remove(sha256);
}

absl::StatusOr<SweepResult> BlobRetention::Sweep() {
  SweepResult result;
  if (options_.retention <= absl::ZeroDuration()) return result;
  std::lock_guard<std::mutex> lock(mu_);
  absl::flat_hash_set<std::string> pinned;
  {
    std::lock_guard<std::mutex> pins(pin_mu_);
    for (const auto& [sha, n] : pins_) pinned.insert(sha);
  }
  auto orphans = ledger_->DropUnusedSince(clock_() - options_.retention, pinned);
  if (!orphans.ok()) return orphans.status();
  for (const OrphanBlob& o : *orphans) {
    if (absl::Status s = blobs_->Remove(o.sha256); !s.ok()) {
      ++result.remove_failures;
      if (result.first_error.ok()) result.first_error = s;
      continue;
    }
    ++result.blobs_removed;
    result.bytes_removed += o.bytes;
  }
  return result;
}

}  // namespace preflight::store
