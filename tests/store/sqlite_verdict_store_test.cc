// The SQLite backend: the shared conformance suite, plus what only a file
// backend has (a corrupt or unwritable file is a start-up error).
#include "service/store/sqlite_verdict_store.h"

#include <sqlite3.h>
#include <stdlib.h>

#include <fstream>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/store/tiny_tmpfs.h"
#include "tests/store/verdict_store_conformance.h"

namespace preflight::store {
namespace {

using ::testing::HasSubstr;

std::string TempDir() {
  char tmpl[] = "/tmp/preflight-sqlite-test-XXXXXX";
  return mkdtemp(tmpl);
}

// XORs the last byte of a stored report blob with 1, through SQLite itself,
// as an edit of the file would.
absl::Status AlterStoredReport(const std::string& path, const std::string& digest) {
  sqlite3* db = nullptr;
  if (sqlite3_open(path.c_str(), &db) != SQLITE_OK) return absl::InternalError("open");
  std::string blob;
  {
    sqlite3_stmt* st = nullptr;
    sqlite3_prepare_v2(db, "SELECT report FROM verdicts WHERE request_digest = ?", -1, &st,
                       nullptr);
    sqlite3_bind_text(st, 1, digest.c_str(), -1, SQLITE_TRANSIENT);
    if (sqlite3_step(st) == SQLITE_ROW) {
      blob.assign(static_cast<const char*>(sqlite3_column_blob(st, 0)),
                  static_cast<size_t>(sqlite3_column_bytes(st, 0)));
    }
    sqlite3_finalize(st);
  }
  if (blob.empty()) {
    sqlite3_close(db);
    return absl::NotFoundError(digest);
  }
  blob.back() = static_cast<char>(blob.back() ^ 1);
  sqlite3_stmt* st = nullptr;
  sqlite3_prepare_v2(db, "UPDATE verdicts SET report = ? WHERE request_digest = ?", -1, &st,
                     nullptr);
  sqlite3_bind_blob(st, 1, blob.data(), static_cast<int>(blob.size()), SQLITE_TRANSIENT);
  sqlite3_bind_text(st, 2, digest.c_str(), -1, SQLITE_TRANSIENT);
  const int rc = sqlite3_step(st);
  sqlite3_finalize(st);
  sqlite3_close(db);
  return rc == SQLITE_DONE ? absl::OkStatus() : absl::InternalError("update");
}

INSTANTIATE_TEST_SUITE_P(
    Sqlite, VerdictStoreConformance,
    ::testing::Values(VerdictStoreBackend{
        "sqlite", [] { return TempDir() + "/verdicts.db"; },
        [](const std::string& path) -> absl::StatusOr<std::unique_ptr<VerdictStore>> {
          auto store = SqliteVerdictStore::Open(path);
          if (!store.ok()) return store.status();
          return std::unique_ptr<VerdictStore>(*std::move(store));
        },
        AlterStoredReport}),
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

// A file written by schema 1 (one row per digest with its last job id)
// opens with every job id it held still bound.
TEST(SqliteVerdictStore, SchemaOneFileKeepsItsJobIds) {
  const std::string path = TempDir() + "/v.db";
  v1::Report pass;
  pass.set_verdict(v1::PASS);
  const std::string blob = pass.SerializeAsString();
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db,
                           "CREATE TABLE verdicts (request_digest TEXT PRIMARY KEY, job_id TEXT,"
                           " verdict INTEGER NOT NULL, report BLOB NOT NULL,"
                           " created_unix_seconds REAL NOT NULL)",
                           nullptr, nullptr, nullptr),
              SQLITE_OK);
    sqlite3_stmt* st = nullptr;
    ASSERT_EQ(
        sqlite3_prepare_v2(db, "INSERT INTO verdicts VALUES (?, ?, 1, ?, 1000)", -1, &st, nullptr),
        SQLITE_OK);
    const std::string digest(64, 'a');
    sqlite3_bind_text(st, 1, digest.c_str(), -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, "old/job", -1, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 3, blob.data(), static_cast<int>(blob.size()), SQLITE_TRANSIENT);
    ASSERT_EQ(sqlite3_step(st), SQLITE_DONE);
    sqlite3_finalize(st);
    sqlite3_close(db);
  }
  auto store = SqliteVerdictStore::Open(path);
  ASSERT_TRUE(store.ok()) << store.status();
  auto got = (*store)->GetByJobId("old/job");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->request_digest, std::string(64, 'a'));
  EXPECT_EQ(got->report.verdict(), v1::PASS);
  ASSERT_EQ(got->bindings.size(), 1u);
  EXPECT_EQ(got->bindings[0].bound_unix_seconds, 1000);
  // Rows from before schema 3 get their report's digest at migration.
  EXPECT_TRUE((*store)->CheckIntegrity().ok()) << (*store)->CheckIntegrity();
}

TEST(SqliteVerdictStore, FileFromANewerSchemaIsAStartupError) {
  const std::string path = TempDir() + "/v.db";
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db, "PRAGMA user_version = 9", nullptr, nullptr, nullptr), SQLITE_OK);
    sqlite3_close(db);
  }
  auto store = SqliteVerdictStore::Open(path);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(store.status().message()), HasSubstr("newer Preflight (schema 9"));
}

// SQLITE_FULL was INTERNAL: a full disk is the store's capacity, named.
TEST(SqliteVerdictStore, FullDiskIsResourceExhaustedNamingTheFile) {
  TinyTmpfs disk(256 << 10);
  if (!disk.error().empty()) GTEST_SKIP() << disk.error();
  const std::string path = disk.dir() + "/verdicts.db";
  auto store = SqliteVerdictStore::Open(path);
  ASSERT_TRUE(store.ok()) << store.status();
  absl::Status s;
  for (int i = 0; i < 64 && s.ok(); ++i) {
    StoredVerdict v;
    v.request_digest = std::string(63, 'a') + static_cast<char>('a' + i % 26) + std::to_string(i);
    v.report.add_findings()->set_message(std::string(32 << 10, 'm'));
    s = (*store)->Put(v);
  }
  ASSERT_FALSE(s.ok()) << "256 KiB held 64 reports of 32 KiB";
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("verdict store " + path + " is full"));
}

}  // namespace
}  // namespace preflight::store
