// `--store SPEC` -> backends: a directory is today's embedded store; a URL
// scheme is refused at start-up, naming the scheme and never echoing the URL.
#include "service/store/store_factory.h"

#include <stdlib.h>
#include <sys/stat.h>

#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace preflight::store {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string TempDir() {
  char tmpl[] = "/tmp/preflight-factory-test-XXXXXX";
  return mkdtemp(tmpl);
}

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

TEST(OpenStore, DirectoryIsSqliteVerdictsAndBlobFiles) {
  const std::string dir = TempDir() + "/store";  // Created when absent.
  auto stores = OpenStore(dir, 1 << 20);
  ASSERT_TRUE(stores.ok()) << stores.status();
  ASSERT_NE(stores->verdicts, nullptr);
  ASSERT_NE(stores->blobs, nullptr);
  EXPECT_TRUE(Exists(dir + "/verdicts.db"));
  auto blob = stores->blobs->Put("x");
  ASSERT_TRUE(blob.ok());
  EXPECT_TRUE(Exists(dir + "/blobs/" + blob->sha256));
  StoredVerdict v;
  v.request_digest = std::string(64, 'a');
  ASSERT_TRUE(stores->verdicts->Put(v).ok());
  // Reopened from the same spec, as after a restart.
  stores->verdicts.reset();
  auto again = OpenStore(dir, 1 << 20);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->verdicts->GetByDigest(std::string(64, 'a')).ok());
}

TEST(OpenStore, UnknownSchemeIsInvalidArgumentNamingOnlyTheScheme) {
  struct Case {
    std::string spec, scheme;
  } cases[] = {
      {"postgresql://preflight:s3cret@db.internal/verdicts", "postgresql"},
      {"s3://bucket/prefix", "s3"},
      {"Redis://h:6379", "redis"},
  };
  for (const auto& tc : cases) {
    SCOPED_TRACE(tc.spec);
    auto stores = OpenStore(tc.spec, 1 << 20);
    ASSERT_FALSE(stores.ok());
    EXPECT_EQ(stores.status().code(), absl::StatusCode::kInvalidArgument);
    const std::string m(stores.status().message());
    EXPECT_THAT(m, HasSubstr("store: no '" + tc.scheme + "' backend"));
    EXPECT_THAT(m, HasSubstr("pass a directory"));
    EXPECT_THAT(m, Not(HasSubstr("s3cret")));
  }
}

TEST(OpenStore, EmptySpecIsInvalidArgument) {
  auto stores = OpenStore("", 1 << 20);
  EXPECT_EQ(stores.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(stores.status().message()), HasSubstr("store: must not be empty"));
}

TEST(OpenStore, UncreatableDirectoryIsFailedPrecondition) {
  auto stores = OpenStore("/proc/preflight-no-such/store", 1 << 20);
  ASSERT_FALSE(stores.ok());
  EXPECT_EQ(stores.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(stores.status().message()), HasSubstr("store: cannot create"));
}

TEST(OpenStore, PathContainingSchemeLikeTextIsStillADirectory) {
  const std::string dir = TempDir() + "/a b://c";
  // "a b" is not a scheme (space), so this is a path: the parent is absent.
  auto stores = OpenStore(dir, 1 << 20);
  ASSERT_FALSE(stores.ok());
  EXPECT_EQ(stores.status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace preflight::store
