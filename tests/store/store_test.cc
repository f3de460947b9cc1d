#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "service/store/blob_store.h"
#include "service/store/sha256.h"
#include "service/store/verdict_store.h"

namespace preflight::store {
namespace {

using ::testing::HasSubstr;

std::string TempDir() {
  char tmpl[] = "/tmp/preflight-store-test-XXXXXX";
  return mkdtemp(tmpl);
}

TEST(Sha256, KnownVector) {
  EXPECT_EQ(Sha256Hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_TRUE(IsSha256Hex(Sha256Hex("")));
  EXPECT_FALSE(IsSha256Hex("ABC"));
}

TEST(BlobStore, ContentAddressedAndIdempotent) {
  auto store = BlobStore::Open(TempDir() + "/blobs", 1 << 20);
  ASSERT_TRUE(store.ok()) << store.status();
  auto a = (*store)->Put("hello");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->sha256, Sha256Hex("hello"));
  EXPECT_FALSE(a->already_present);
  EXPECT_TRUE((*store)->Has(a->sha256));
  auto b = (*store)->Put("hello");
  ASSERT_TRUE(b.ok());
  EXPECT_TRUE(b->already_present);
  std::ifstream in((*store)->PathOf(a->sha256));
  std::string content((std::istreambuf_iterator<char>(in)), {});
  EXPECT_EQ(content, "hello");
}

TEST(BlobStore, RefusesOverLimitAndLeavesNoPartialBlob) {
  const std::string dir = TempDir() + "/blobs";
  auto store = BlobStore::Open(dir, 8);
  ASSERT_TRUE(store.ok());
  auto w = (*store)->NewWriter();
  ASSERT_TRUE(w->Append("12345").ok());
  const absl::Status s = w->Append("67890");
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  w.reset();
  EXPECT_FALSE((*store)->Has(Sha256Hex("1234567890")));
  EXPECT_EQ(std::system(("test -z \"$(ls -A " + dir + ")\"").c_str()), 0) << "temp file left";
}

TEST(SqliteVerdictStore, RoundTripByDigestAndJobId) {
  const std::string path = TempDir() + "/v.db";
  {
    auto store = SqliteVerdictStore::Open(path);
    ASSERT_TRUE(store.ok()) << store.status();
    StoredVerdict v;
    v.request_digest = std::string(64, 'a');
    v.job_id = "job-1";
    v.report.set_verdict(v1::FAIL);
    ASSERT_TRUE((*store)->Put(v).ok());
  }
  // Survives reopening (a restart).
  auto store = SqliteVerdictStore::Open(path);
  ASSERT_TRUE(store.ok());
  auto by_digest = (*store)->GetByDigest(std::string(64, 'a'));
  ASSERT_TRUE(by_digest.ok());
  EXPECT_EQ(by_digest->report.verdict(), v1::FAIL);
  EXPECT_EQ(by_digest->job_id, "job-1");
  EXPECT_GT(by_digest->created_unix_seconds, 0);
  auto by_job = (*store)->GetByJobId("job-1");
  ASSERT_TRUE(by_job.ok());
  EXPECT_EQ(by_job->request_digest, std::string(64, 'a'));
  EXPECT_EQ((*store)->GetByJobId("nope").status().code(), absl::StatusCode::kNotFound);
}

TEST(SqliteVerdictStore, CorruptFileIsAStartupError) {
  const std::string path = TempDir() + "/v.db";
  {
    std::ofstream out(path);
    out << std::string(8192, 'x');
  }
  auto store = SqliteVerdictStore::Open(path);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(store.status().message()), HasSubstr(path));
}

TEST(SqliteVerdictStore, UnwritablePathIsAStartupError) {
  auto store = SqliteVerdictStore::Open("/nonexistent-dir/v.db");
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace preflight::store
