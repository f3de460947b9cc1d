#include "tests/store/blob_retention_conformance.h"

#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "service/store/blob_retention.h"

namespace preflight::store {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

constexpr absl::Duration kDay = absl::Hours(24);

// A clock the test moves by hand: no sleeps.
struct FakeClock {
  absl::Time now = absl::FromUnixSeconds(1'700'000'000);
  std::function<absl::Time()> fn() {
    return [this] { return now; };
  }
};

class Fixture {
 public:
  Fixture(const BlobRetentionBackend& backend, RetentionOptions options) {
    auto b = backend.open_fresh();
    EXPECT_TRUE(b.ok()) << b.status();
    if (b.ok()) backend_ = *std::move(b);
    if (backend_.ledger && backend_.blobs) {
      retention_ = std::make_unique<BlobRetention>(std::move(options), backend_.ledger.get(),
                                                   backend_.blobs.get(), clock.fn());
    }
  }
  bool ok() const { return retention_ != nullptr; }
  BlobRetention& r() { return *retention_; }
  BlobStore& blobs() { return *backend_.blobs; }
  // Stores `n` bytes of `fill` and returns the blob's sha256.
  std::string Store(int n, char fill) {
    auto info = backend_.blobs->Put(std::string(static_cast<size_t>(n), fill));
    EXPECT_TRUE(info.ok()) << info.status();
    return info.ok() ? info->sha256 : "";
  }
  bool Has(const std::string& sha) { return backend_.blobs->Has(sha).value_or(false); }

  FakeClock clock;

 private:
  BlobBackend backend_;
  std::unique_ptr<BlobRetention> retention_;
};

TEST_P(BlobRetentionConformance, OverQuotaIsRefusedNamingFieldTenantUsageAndQuota) {
  Fixture f(GetParam(), {.default_quota_bytes = 100});
  ASSERT_TRUE(f.ok());
  const std::string a = f.Store(60, 'a'), b = f.Store(60, 'b');
  ASSERT_TRUE(f.r().Use("model", "tenant-a", a).ok());
  auto refused = f.r().Use("batch", "tenant-a", b);
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
  EXPECT_THAT(refused.status().message(),
              AllOf(HasSubstr("batch"), HasSubstr("tenant-a"), HasSubstr("60 of 100")));
  // Nothing already stored is lost, and the refused blob is not charged.
  EXPECT_TRUE(f.Has(a));
  EXPECT_TRUE(f.Has(b));
  EXPECT_EQ(f.r().UsageBytes("tenant-a").value_or(-1), 60);
  // Using a blob the tenant already holds is never charged twice.
  EXPECT_TRUE(f.r().Use("model", "tenant-a", a).ok());
  EXPECT_EQ(f.r().UsageBytes("tenant-a").value_or(-1), 60);
  // Another tenant is not affected by tenant-a's usage.
  EXPECT_TRUE(f.r().Use("batch", "tenant-b", b).ok());
}

TEST_P(BlobRetentionConformance, PerTenantQuotaOverridesTheDefault) {
  Fixture f(GetParam(), {.default_quota_bytes = 10, .tenant_quota_bytes = {{"big", 0}}});
  ASSERT_TRUE(f.ok());
  const std::string a = f.Store(50, 'a');
  EXPECT_EQ(f.r().Use("model", "small", a).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(f.r().Use("model", "big", a).ok()) << "0 overrides to unlimited";
}

TEST_P(BlobRetentionConformance,
       ABlobSharedByTwoTenantsCountsAgainstBothAndStaysWhileEitherUsesIt) {
  Fixture f(GetParam(), {.retention = 30 * kDay});
  ASSERT_TRUE(f.ok());
  const std::string shared = f.Store(40, 's');
  ASSERT_TRUE(f.r().Use("model", "t1", shared).ok());
  f.clock.now += 20 * kDay;
  ASSERT_TRUE(f.r().Use("model", "t2", shared).ok());
  EXPECT_EQ(f.r().UsageBytes("t1").value_or(-1), 40);
  EXPECT_EQ(f.r().UsageBytes("t2").value_or(-1), 40);
  EXPECT_EQ(f.r().StoredBytes().value_or(-1), 40) << "stored once";
  f.clock.now += 15 * kDay;  // t1's use is 35 days old, t2's 15
  auto swept = f.r().Sweep();
  ASSERT_TRUE(swept.ok()) << swept.status();
  EXPECT_EQ(swept->blobs_removed, 0);
  EXPECT_TRUE(f.Has(shared));
  EXPECT_EQ(f.r().UsageBytes("t1").value_or(-1), 0) << "t1's expired reference was dropped";
  EXPECT_EQ(f.r().UsageBytes("t2").value_or(-1), 40);
  f.clock.now += 16 * kDay;  // now t2's is 31 days old too
  swept = f.r().Sweep();
  ASSERT_TRUE(swept.ok()) << swept.status();
  EXPECT_EQ(swept->blobs_removed, 1);
  EXPECT_EQ(swept->bytes_removed, 40);
  EXPECT_FALSE(f.Has(shared));
  EXPECT_EQ(f.r().StoredBytes().value_or(-1), 0);
}

TEST_P(BlobRetentionConformance, SweepRemovesExpiredBlobsAndKeepsFreshAndInUseOnes) {
  Fixture f(GetParam(), {.retention = 30 * kDay});
  ASSERT_TRUE(f.ok());
  const std::string old = f.Store(10, 'o'), fresh = f.Store(20, 'f'), busy = f.Store(30, 'b');
  ASSERT_TRUE(f.r().Use("model", "t", old).ok());
  auto pin = f.r().Use("model", "t", busy);  // a check that is still running
  ASSERT_TRUE(pin.ok());
  f.clock.now += 29 * kDay;
  ASSERT_TRUE(f.r().Use("batch", "t", fresh).ok());
  f.clock.now += 2 * kDay;
  auto swept = f.r().Sweep();
  ASSERT_TRUE(swept.ok()) << swept.status();
  EXPECT_EQ(swept->blobs_removed, 1);
  EXPECT_EQ(swept->bytes_removed, 10);
  EXPECT_FALSE(f.Has(old));
  EXPECT_TRUE(f.Has(fresh));
  EXPECT_TRUE(f.Has(busy)) << "a pinned blob is never collected";
  // The check ends: the next sweep may take it.
  pin->Release();
  swept = f.r().Sweep();
  ASSERT_TRUE(swept.ok()) << swept.status();
  EXPECT_EQ(swept->blobs_removed, 1);
  EXPECT_FALSE(f.Has(busy));
  EXPECT_TRUE(f.Has(fresh));
  EXPECT_EQ(f.r().UsageBytes("t").value_or(-1), 20);
}

// Uses refresh last_used at most every hundredth of the retention: a blob used
// within 99% of the retention is always kept, one unused for longer goes.
TEST_P(BlobRetentionConformance, ABlobUsedWithinTheRetentionIsKeptThoughRefreshesAreSparse) {
  Fixture f(GetParam(), {.retention = absl::Minutes(100)});
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f.r().RefreshAfter(), absl::Minutes(1));
  const std::string a = f.Store(10, 'a');
  ASSERT_TRUE(f.r().Use("model", "t", a).ok());
  f.clock.now += absl::Seconds(30);
  ASSERT_TRUE(f.r().Use("model", "t", a).ok());  // within a minute: not rewritten
  f.clock.now += absl::Seconds(90);
  ASSERT_TRUE(f.r().Use("model", "t", a).ok());  // 2 min after the first: rewritten
  f.clock.now += absl::Minutes(99);              // 99 min after the last use
  ASSERT_TRUE(f.r().Sweep().ok());
  EXPECT_TRUE(f.Has(a));
  f.clock.now += absl::Minutes(2);  // 101 min
  ASSERT_TRUE(f.r().Sweep().ok());
  EXPECT_FALSE(f.Has(a));
}

TEST_P(BlobRetentionConformance, ASweptBlobIsNotFoundAndAReUploadWorksAgain) {
  Fixture f(GetParam(), {.retention = kDay});
  ASSERT_TRUE(f.ok());
  const std::string a = f.Store(10, 'a');
  ASSERT_TRUE(f.r().Use("model", "t", a).ok());
  f.clock.now += 2 * kDay;
  ASSERT_TRUE(f.r().Sweep().ok());
  auto gone = f.r().Use("model", "t", a);
  EXPECT_EQ(gone.status().code(), absl::StatusCode::kNotFound) << gone.status();
  EXPECT_EQ(f.Store(10, 'a'), a);
  EXPECT_TRUE(f.r().Use("model", "t", a).ok());
}

TEST_P(BlobRetentionConformance, ZeroRetentionKeepsEverything) {
  Fixture f(GetParam(), {});
  ASSERT_TRUE(f.ok());
  const std::string a = f.Store(10, 'a');
  ASSERT_TRUE(f.r().Use("model", "t", a).ok());
  f.clock.now += 10000 * kDay;
  auto swept = f.r().Sweep();
  ASSERT_TRUE(swept.ok());
  EXPECT_EQ(swept->blobs_removed, 0);
  EXPECT_TRUE(f.Has(a));
}

TEST_P(BlobRetentionConformance, ARefusedNewUploadIsDiscardedButASharedOneIsKept) {
  Fixture f(GetParam(), {.default_quota_bytes = 15});
  ASSERT_TRUE(f.ok());
  const std::string a = f.Store(10, 'a');
  ASSERT_TRUE(f.r().Use("upload", "t", a).ok());
  const std::string b = f.Store(10, 'b');  // t's second upload: over quota
  ASSERT_FALSE(f.r().Use("upload", "t", b).ok());
  ASSERT_TRUE(f.r().DiscardRefused(b, /*was_already_present=*/false).ok());
  EXPECT_FALSE(f.Has(b)) << "a refused upload leaves nothing uncharged behind";
  // u holds c; t's refused upload of the same bytes must not delete it.
  const std::string c = f.Store(10, 'c');
  ASSERT_TRUE(f.r().Use("upload", "u", c).ok());
  ASSERT_FALSE(f.r().Use("upload", "t", c).ok());
  ASSERT_TRUE(f.r().DiscardRefused(c, /*was_already_present=*/false).ok());
  EXPECT_TRUE(f.Has(c));
  EXPECT_TRUE(f.Has(a));
}

}  // namespace
}  // namespace preflight::store
