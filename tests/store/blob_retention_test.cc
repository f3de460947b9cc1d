// Quotas and retention on the directory store (file blobs + the SQLite
// ledger): the shared conformance suite, plus the quota decision itself on
// hand-made numbers.
#include <stdlib.h>

#include <memory>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "service/store/blob_ledger.h"
#include "service/store/file_blob_store.h"
#include "service/store/sqlite_blob_ledger.h"
#include "tests/store/blob_retention_conformance.h"

namespace preflight::store {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

TEST(CheckQuota, UnlimitedAtOrUnderTheQuotaIsOk) {
  EXPECT_TRUE(CheckQuota({"model", "t", "x", 1'000'000}, 5'000'000, 0).ok());
  EXPECT_TRUE(CheckQuota({"model", "t", "x", 50}, 50, 100).ok()) << "exactly at the quota";
}

TEST(CheckQuota, OverTheQuotaNamesFieldTenantUsageAndQuota) {
  const absl::Status s = CheckQuota({"batch", "team-b", "x", 51}, 50, 100);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("batch: 51 bytes"), HasSubstr("'team-b'"),
                                 HasSubstr("50 of 100 bytes used")));
}

absl::StatusOr<BlobBackend> OpenFresh() {
  char tmpl[] = "/tmp/preflight-retention-test-XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  BlobBackend b;
  auto ledger = SqliteBlobLedger::Open(dir + "/blob_refs.db");
  if (!ledger.ok()) return ledger.status();
  auto blobs = FileBlobStore::Open(dir + "/blobs", 1 << 20);
  if (!blobs.ok()) return blobs.status();
  b.ledger = *std::move(ledger);
  b.blobs = *std::move(blobs);
  return b;
}

INSTANTIATE_TEST_SUITE_P(Directory, BlobRetentionConformance,
                         ::testing::Values(BlobRetentionBackend{"sqlite_files", OpenFresh}),
                         [](const auto& info) { return info.param.name; });

TEST(SqliteBlobLedger, ReferencesSurviveAReopen) {
  char tmpl[] = "/tmp/preflight-ledger-test-XXXXXX";
  const std::string path = std::string(mkdtemp(tmpl)) + "/blob_refs.db";
  {
    auto ledger = SqliteBlobLedger::Open(path);
    ASSERT_TRUE(ledger.ok()) << ledger.status();
    ASSERT_TRUE((*ledger)->Charge({"model", "t", "abc", 7}, absl::Now(), 0, absl::Minutes(1)).ok());
  }
  auto ledger = SqliteBlobLedger::Open(path);
  ASSERT_TRUE(ledger.ok()) << ledger.status();
  EXPECT_EQ((*ledger)->UsageBytes("t").value_or(-1), 7);
  EXPECT_TRUE((*ledger)->Referenced("abc").value_or(false));
}

TEST(SqliteBlobLedger, AnUnopenablePathIsFailedPreconditionNamingIt) {
  auto ledger = SqliteBlobLedger::Open("/nonexistent-dir/blob_refs.db");
  EXPECT_EQ(ledger.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(ledger.status().message(), HasSubstr("/nonexistent-dir/blob_refs.db"));
}

}  // namespace
}  // namespace preflight::store
