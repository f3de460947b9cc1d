// The SQLite backend: the shared conformance suite, plus what only a file
// backend has (a corrupt or unwritable file is a start-up error).
#include "service/store/sqlite_verdict_store.h"

#include <stdlib.h>

#include <fstream>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/store/verdict_store_conformance.h"

namespace preflight::store {
namespace {

using ::testing::HasSubstr;

std::string TempDir() {
  char tmpl[] = "/tmp/preflight-sqlite-test-XXXXXX";
  return mkdtemp(tmpl);
}

INSTANTIATE_TEST_SUITE_P(
    Sqlite, VerdictStoreConformance,
    ::testing::Values(VerdictStoreBackend{
        "sqlite", [] { return TempDir() + "/verdicts.db"; },
        [](const std::string& path) -> absl::StatusOr<std::unique_ptr<VerdictStore>> {
          auto store = SqliteVerdictStore::Open(path);
          if (!store.ok()) return store.status();
          return std::unique_ptr<VerdictStore>(*std::move(store));
        }}),
    [](const auto& info) { return info.param.name; });

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
