// `--store SPEC` -> backends: a directory is the embedded store, postgresql://
// the fleet store; another scheme is refused at start-up, naming the scheme and
// never echoing the URL.
#include "service/store/store_factory.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

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

// A store that lost its verdict file must not come back as an empty store:
// the gates would find no verdicts and nobody would be told why.
TEST(OpenStore, UsedDirectoryWithoutItsVerdictFileIsRefusedUnlessInitStore) {
  struct Case {
    const char* name;
    void (*lose)(const std::string& db);
    const char* says;
  } cases[] = {
      {"deleted", [](const std::string& db) { ASSERT_EQ(unlink(db.c_str()), 0); }, "is missing"},
      {"zero-length", [](const std::string& db) { ASSERT_EQ(truncate(db.c_str(), 0), 0); },
       "is empty (zero bytes)"},
  };
  for (const auto& tc : cases) {
    SCOPED_TRACE(tc.name);
    const std::string dir = TempDir();
    const std::string db = dir + "/verdicts.db";
    {
      auto stores = OpenStore(dir, 1 << 20);
      ASSERT_TRUE(stores.ok()) << stores.status();
      StoredVerdict v;
      v.request_digest = std::string(64, 'a');
      ASSERT_TRUE(stores->verdicts->Put(v).ok());
      ASSERT_TRUE(stores->blobs->Put("x").ok());
    }
    tc.lose(db);
    auto refused = OpenStore(dir, 1 << 20);
    ASSERT_FALSE(refused.ok());
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
    const std::string m(refused.status().message());
    EXPECT_THAT(m, HasSubstr(db));
    EXPECT_THAT(m, HasSubstr(tc.says));
    EXPECT_THAT(m, HasSubstr("--init-store"));
    // Refusing leaves the evidence as it was.
    struct stat st;
    EXPECT_TRUE(stat(db.c_str(), &st) != 0 || st.st_size == 0);

    auto fresh = OpenStore(dir, 1 << 20, /*init_store=*/true);
    ASSERT_TRUE(fresh.ok()) << fresh.status();
    EXPECT_TRUE(absl::IsNotFound(fresh->verdicts->GetByDigest(std::string(64, 'a')).status()));
  }
}

TEST(OpenStore, EmptyDirectoryOrOneWithOnlyForeignFilesIsANewStore) {
  const std::string dir = TempDir();
  // As tools/quickstart.sh does: its server log lives in the store directory.
  ASSERT_EQ(close(creat((dir + "/server.out").c_str(), 0640)), 0);
  auto stores = OpenStore(dir, 1 << 20);
  ASSERT_TRUE(stores.ok()) << stores.status();
  EXPECT_TRUE(Exists(dir + "/verdicts.db"));
}

TEST(OpenStore, UnknownSchemeIsInvalidArgumentNamingOnlyTheScheme) {
  struct Case {
    std::string spec, scheme;
  } cases[] = {
      {"mysql://preflight:s3cret@db.internal/verdicts", "mysql"},
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

// The fleet backend is built in: an unreachable database is UNAVAILABLE at
// start naming the store, never its password. (tests/store/pg_verdict_store_test.cc
// opens a real one.)
TEST(OpenStore, PostgresUrlOfAnUnreachableDatabaseIsUnavailableWithoutThePassword) {
  for (const char* spec : {"postgresql://preflight:s3cret@127.0.0.1:1/verdicts",
                           "postgres://preflight:s3cret@127.0.0.1:1/verdicts"}) {
    SCOPED_TRACE(spec);
    auto stores = OpenStore(spec, 1 << 20);
    EXPECT_EQ(stores.status().code(), absl::StatusCode::kUnavailable);
    const std::string m(stores.status().message());
    EXPECT_THAT(m, HasSubstr("store postgresql://preflight@127.0.0.1:1/verdicts is unavailable"));
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
