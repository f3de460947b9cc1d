// The PostgreSQL fleet store against a real PostgreSQL started for this test
// (tests/store/pg_cluster.sh): the verdict-store conformance suite, blobs,
// leases, concurrent schema creation, and a database that goes away and
// comes back.
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "service/store/pg_blob_ledger.h"
#include "service/store/pg_blob_store.h"
#include "service/store/pg_database.h"
#include "service/store/pg_lease_store.h"
#include "service/store/pg_verdict_store.h"
#include "service/store/sha256.h"
#include "service/store/store_factory.h"
#include "tests/store/blob_retention_conformance.h"
#include "tests/store/pg_test_cluster.h"
#include "tests/store/verdict_store_conformance.h"

namespace preflight::store {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// One cluster for the whole binary: initdb takes seconds.
PgTestCluster* Cluster() {
  static PgTestCluster* cluster = [] {
    auto c = PgTestCluster::Create();
    if (!c.ok()) {
      ADD_FAILURE() << c.status();
      return static_cast<PgTestCluster*>(nullptr);
    }
    return c->release();
  }();
  return cluster;
}

class DestroyCluster : public ::testing::Environment {
 public:
  void TearDown() override { delete Cluster(); }
};
const auto* const kDestroy = ::testing::AddGlobalTestEnvironment(new DestroyCluster);

std::string NewDatabase() {
  if (Cluster() == nullptr) return "postgresql://127.0.0.1:1/none";
  auto url = Cluster()->NewDatabase();
  EXPECT_TRUE(url.ok()) << url.status();
  return url.ok() ? *url : "";
}

INSTANTIATE_TEST_SUITE_P(
    Postgres, VerdictStoreConformance,
    ::testing::Values(VerdictStoreBackend{
        "postgres", NewDatabase,
        [](const std::string& url) -> absl::StatusOr<std::unique_ptr<VerdictStore>> {
          auto db = PgDatabase::Open(url);
          if (!db.ok()) return db.status();
          return std::make_unique<PgVerdictStore>(*db);
        },
        // One byte of the stored report flipped behind the store's back.
        [](const std::string& url, const std::string& digest) -> absl::Status {
          auto db = PgDatabase::Open(url);
          if (!db.ok()) return db.status();
          return (*db)->Run([&](PgDatabase::Conn& c) -> absl::Status {
            return c
                .Exec(
                    "UPDATE verdicts SET report = set_byte(report, 0, get_byte(report, 0) # 1) "
                    "WHERE request_digest = $1",
                    {digest})
                .status();
          });
        }}),
    [](const auto& info) { return info.param.name; });

// Quotas and retention on the fleet store: PgBlobStore + PgBlobLedger.
INSTANTIATE_TEST_SUITE_P(Postgres, BlobRetentionConformance,
                         ::testing::Values(BlobRetentionBackend{
                             "postgres",
                             []() -> absl::StatusOr<BlobBackend> {
                               auto db = PgDatabase::Open(NewDatabase());
                               if (!db.ok()) return db.status();
                               BlobBackend b;
                               b.ledger = std::make_unique<PgBlobLedger>(*db);
                               b.blobs = std::make_unique<PgBlobStore>(*db, 1 << 20);
                               return b;
                             }}),
                         [](const auto& info) { return info.param.name; });

std::shared_ptr<PgDatabase> OpenNew() {
  auto db = PgDatabase::Open(NewDatabase());
  EXPECT_TRUE(db.ok()) << db.status();
  return db.ok() ? *db : nullptr;
}

TEST(PgDatabase, ReplicasStartingAtOnceMigrateTheSchemaOnce) {
  const std::string url = NewDatabase();
  constexpr int kReplicas = 6;
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int i = 0; i < kReplicas; ++i) {
    threads.emplace_back([&] {
      auto db = PgDatabase::Open(url);
      EXPECT_TRUE(db.ok()) << db.status();
      if (db.ok()) ++ok;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), kReplicas);
  auto db = PgDatabase::Open(url);
  ASSERT_TRUE(db.ok());
  absl::Status s = (*db)->Run([](PgDatabase::Conn& c) -> absl::Status {
    auto r = c.Exec("SELECT count(*), max(version) FROM schema_version");
    if (!r.ok()) return r.status();
    EXPECT_EQ(r->Int(0, 0), 2) << "one row per migration (1: base schema, 2: blob_refs)";
    EXPECT_EQ(r->Int(0, 1), 2);
    return absl::OkStatus();
  });
  EXPECT_TRUE(s.ok()) << s;
}

// A database of schema 1 (before blob_refs) is migrated to 2 at start, its
// blobs kept, and its ledger then works.
TEST(PgDatabase, ASchemaOneDatabaseGainsTheBlobLedger) {
  const std::string url = NewDatabase();
  std::string sha;
  {
    auto db = PgDatabase::Open(url);
    ASSERT_TRUE(db.ok()) << db.status();
    auto put = PgBlobStore(*db, 1 << 20).Put("PK\x03\x04 schema one");
    ASSERT_TRUE(put.ok()) << put.status();
    sha = put->sha256;
  }
  // Back to what schema 1 wrote.
  ASSERT_TRUE(PgTestCluster::Sql(url, "DROP TABLE blob_refs").ok());
  ASSERT_TRUE(PgTestCluster::Sql(url, "DELETE FROM schema_version WHERE version = 2").ok());
  auto db = PgDatabase::Open(url);
  ASSERT_TRUE(db.ok()) << db.status();
  PgBlobStore blobs(*db, 1 << 20);
  EXPECT_TRUE(blobs.Has(sha).value_or(false));
  PgBlobLedger ledger(*db);
  EXPECT_TRUE(ledger.Charge({"model", "t", sha, 16}, absl::Now(), 0, absl::Minutes(1)).ok());
  EXPECT_EQ(ledger.UsageBytes("t").value_or(-1), 16);
}

TEST(PgDatabase, ASchemaFromANewerPreflightIsRefused) {
  const std::string url = NewDatabase();
  ASSERT_TRUE(PgDatabase::Open(url).ok());
  ASSERT_TRUE(PgTestCluster::Sql(url, "INSERT INTO schema_version (version) VALUES (7)").ok());
  auto again = PgDatabase::Open(url);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(again.status().message()), HasSubstr("newer Preflight (schema 7"));
}

TEST(PgDatabase, NamesTheStoreWithoutThePassword) {
  auto name = PgStoreName("postgresql://alice:hunter2@db.example:6432/verdicts?sslmode=require");
  ASSERT_TRUE(name.ok()) << name.status();
  EXPECT_EQ(*name, "postgresql://alice@db.example:6432/verdicts");
  auto kv = PgStoreName("host=10.0.0.5 port=5433 user=bob password=s3cret dbname=pf");
  ASSERT_TRUE(kv.ok());
  EXPECT_EQ(*kv, "postgresql://bob@10.0.0.5:5433/pf");
  auto bad = PgStoreName("postgresql://alice:hunter2@[::1");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), Not(HasSubstr("hunter2")));
}

TEST(PgDatabase, UnreachableAtStartIsUnavailableNamingTheStoreNotThePassword) {
  // Port 1 on loopback: nothing listens there, so the connection is refused.
  const std::string url = "postgresql://alice:hunter2@127.0.0.1:1/pf";
  auto db = PgDatabase::Open(url);
  EXPECT_EQ(db.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(db.status().message()), HasSubstr("postgresql://alice@127.0.0.1:1/pf"));
  EXPECT_THAT(std::string(db.status().message()), Not(HasSubstr("hunter2")));
}

TEST(PgBlobStore, RoundTripAcrossChunksAndReplicas) {
  const std::string url = NewDatabase();
  auto a = PgDatabase::Open(url);
  auto b = PgDatabase::Open(url);  // A second replica.
  ASSERT_TRUE(a.ok() && b.ok());
  PgBlobStore on_a(*a, 8 << 20), on_b(*b, 8 << 20);
  // Over three chunks, with every byte value.
  std::string bytes(3 * PgBlobStore::kChunkBytes + 12345, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>(i * 131 % 256);
  auto w = on_a.NewWriter();
  for (size_t off = 0; off < bytes.size(); off += 700000) {
    ASSERT_TRUE(w->Append(absl::string_view(bytes).substr(off, 700000)).ok());
  }
  auto info = w->Commit();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->sha256, Sha256Hex(bytes));
  EXPECT_EQ(info->size, static_cast<int64_t>(bytes.size()));
  EXPECT_FALSE(info->already_present);
  EXPECT_TRUE(*on_b.Has(info->sha256));
  auto fd = on_b.OpenForRead(info->sha256);
  ASSERT_TRUE(fd.ok()) << fd.status();
  std::string got(bytes.size() + 1, '\0');
  size_t n = 0;
  while (n < got.size()) {
    const ssize_t r = pread(fd->get(), got.data() + n, got.size() - n, static_cast<off_t>(n));
    if (r <= 0) break;
    n += static_cast<size_t>(r);
  }
  got.resize(n);
  EXPECT_TRUE(got == bytes) << "read " << n << " bytes";
  EXPECT_EQ(write(fd->get(), "x", 1), -1) << "the job's copy is read-only";
  EXPECT_EQ(*on_b.ReadHead(info->sha256, 4), bytes.substr(0, 4));
  // The same bytes again, on the other replica: nothing written.
  auto again = on_b.Put(bytes);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->already_present);
}

TEST(PgBlobStore, AbsentOverLimitAndAbandonedUploadsLeaveNothing) {
  auto db = OpenNew();
  ASSERT_NE(db, nullptr);
  PgBlobStore blobs(db, 10);
  EXPECT_FALSE(*blobs.Has(std::string(64, 'e')));
  EXPECT_FALSE(*blobs.Has("not-a-digest"));
  EXPECT_EQ(blobs.OpenForRead(std::string(64, 'e')).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(blobs.ReadHead(std::string(64, 'e'), 4).status().code(), absl::StatusCode::kNotFound);
  {
    auto w = blobs.NewWriter();
    ASSERT_TRUE(w->Append("12345").ok());
    EXPECT_EQ(w->Append("678901").code(), absl::StatusCode::kResourceExhausted);
  }
  {
    auto w = blobs.NewWriter();
    ASSERT_TRUE(w->Append("abandoned").ok());
  }  // Dropped without Commit.
  EXPECT_FALSE(*blobs.Has(Sha256Hex("abandoned")));
  absl::Status s = db->Run([](PgDatabase::Conn& c) -> absl::Status {
    auto r = c.Exec("SELECT (SELECT count(*) FROM blobs), (SELECT count(*) FROM blob_chunks)");
    if (!r.ok()) return r.status();
    EXPECT_EQ(r->Int(0, 0), 0);
    EXPECT_EQ(r->Int(0, 1), 0) << "no chunk rows of an upload that never committed";
    return absl::OkStatus();
  });
  EXPECT_TRUE(s.ok()) << s;
}

TEST(PgBlobStore, ConcurrentWritersOfTheSameBytesStoreItOnce) {
  auto db = OpenNew();
  ASSERT_NE(db, nullptr);
  PgBlobStore blobs(db, 1 << 20);
  std::vector<std::thread> threads;
  std::atomic<int> fresh{0}, failed{0};
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&] {
      auto w = blobs.NewWriter();
      if (!w->Append("same bytes").ok()) ++failed;
      auto info = w->Commit();
      if (!info.ok()) {
        ++failed;
      } else if (!info->already_present) {
        ++fresh;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(fresh.load(), 1);
  auto fd = blobs.OpenForRead(Sha256Hex("same bytes"));
  ASSERT_TRUE(fd.ok());
  char buf[32];
  EXPECT_EQ(pread(fd->get(), buf, sizeof(buf), 0), 10);
}

TEST(PgLeaseStore, OneHolderUntilItReleasesOrItsLeaseExpires) {
  const std::string url = NewDatabase();
  auto db = PgDatabase::Open(url);
  ASSERT_TRUE(db.ok());
  PgLeaseStore a(*db, "replica-a"), b(*db, "replica-b");
  const std::string d(64, 'd');
  auto first = a.TryClaim(d, absl::Seconds(30));
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(first->granted);
  EXPECT_FALSE(first->took_over);
  auto refused = b.TryClaim(d, absl::Seconds(30));
  ASSERT_TRUE(refused.ok());
  EXPECT_FALSE(refused->granted) << "held by a, unexpired";
  EXPECT_TRUE(a.TryClaim(d, absl::Seconds(30))->granted) << "its own claim renews";
  EXPECT_TRUE(a.Renew(d, absl::Seconds(30)).ok());
  EXPECT_EQ(b.Renew(d, absl::Seconds(30)).code(), absl::StatusCode::kAborted);
  ASSERT_TRUE(a.Release(d).ok());
  auto after_release = b.TryClaim(d, absl::Milliseconds(300));
  ASSERT_TRUE(after_release.ok());
  EXPECT_TRUE(after_release->granted);
  EXPECT_FALSE(after_release->took_over) << "a released it: no takeover";
  // b dies: its lease runs out and a takes the check over.
  EXPECT_FALSE(a.TryClaim(d, absl::Seconds(30))->granted);
  absl::SleepFor(absl::Milliseconds(400));
  auto takeover = a.TryClaim(d, absl::Seconds(30));
  ASSERT_TRUE(takeover.ok());
  EXPECT_TRUE(takeover->granted);
  EXPECT_TRUE(takeover->took_over);
  EXPECT_EQ(b.Renew(d, absl::Seconds(30)).code(), absl::StatusCode::kAborted)
      << "the dead owner's lease is gone";
  EXPECT_TRUE(b.Release(d).ok()) << "releasing a lease it no longer holds changes nothing";
  EXPECT_FALSE(b.TryClaim(d, absl::Seconds(30))->granted);
}

TEST(PgLeaseStore, ConcurrentClaimsGrantOne) {
  auto db = OpenNew();
  ASSERT_NE(db, nullptr);
  std::vector<std::unique_ptr<PgLeaseStore>> replicas;
  for (int i = 0; i < 8; ++i) {
    replicas.push_back(std::make_unique<PgLeaseStore>(db, PgLeaseStore::NewOwnerId()));
  }
  std::atomic<int> granted{0};
  std::vector<std::thread> threads;
  for (auto& r : replicas) {
    threads.emplace_back([&, lease = r.get()] {
      auto c = lease->TryClaim(std::string(64, 'c'), absl::Seconds(30));
      EXPECT_TRUE(c.ok()) << c.status();
      if (c.ok() && c->granted) ++granted;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(granted.load(), 1);
}

// Stops and restarts the binary's cluster; the tests run one after another in
// one process (see tests/CMakeLists.txt), and later ones reconnect.
TEST(PgStore, ADatabaseThatGoesAwayIsUnavailableAndServiceResumesWhenItReturns) {
  ASSERT_NE(Cluster(), nullptr);
  const std::string url = NewDatabase();
  auto stores = OpenStore(url, 1 << 20);
  ASSERT_TRUE(stores.ok()) << stores.status();
  StoredVerdict v;
  v.request_digest = std::string(64, 'a');
  v.job_id = "train/kept";
  v.report.set_verdict(v1::FAIL);
  ASSERT_TRUE(stores->verdicts->Put(v).ok());
  auto blob = stores->blobs->Put("PK\x03\x04 kept");
  ASSERT_TRUE(blob.ok());

  ASSERT_TRUE(Cluster()->Stop().ok());
  const std::string name =
      absl::StrCat("store postgresql://preflight@127.0.0.1:", Cluster()->port(), "/");
  StoredVerdict w = v;
  w.request_digest = std::string(64, 'b');
  const absl::Status put = stores->verdicts->Put(w);
  EXPECT_EQ(put.code(), absl::StatusCode::kUnavailable) << put;
  EXPECT_THAT(std::string(put.message()), HasSubstr(name));
  const auto get = stores->verdicts->GetByJobId("train/kept");
  EXPECT_EQ(get.status().code(), absl::StatusCode::kUnavailable) << get.status();
  EXPECT_EQ(stores->blobs->Has(blob->sha256).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(stores->blobs->Put("PK\x03\x04 new").status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(stores->leases->TryClaim(std::string(64, 'c'), absl::Seconds(1)).status().code(),
            absl::StatusCode::kUnavailable);

  ASSERT_TRUE(Cluster()->Start().ok());
  // The same store objects, no restart: the next call reconnects.
  auto kept = stores->verdicts->GetByJobId("train/kept");
  ASSERT_TRUE(kept.ok()) << kept.status();
  EXPECT_EQ(kept->report.verdict(), v1::FAIL);
  EXPECT_TRUE(*stores->blobs->Has(blob->sha256));
  EXPECT_TRUE(stores->verdicts->Put(w).ok());
  EXPECT_TRUE(stores->verdicts->GetByDigest(std::string(64, 'b')).ok());
}

TEST(OpenStore, PostgresUrlsOpenTheFleetStore) {
  ASSERT_NE(Cluster(), nullptr);
  for (const char* scheme : {"postgresql", "postgres"}) {
    SCOPED_TRACE(scheme);
    auto url = Cluster()->NewDatabase();
    ASSERT_TRUE(url.ok());
    const std::string spec = absl::StrCat(scheme, url->substr(url->find("://")));
    auto stores = OpenStore(spec, 1 << 20);
    ASSERT_TRUE(stores.ok()) << stores.status();
    EXPECT_TRUE(stores->leases->shared());
    EXPECT_EQ(stores->name, absl::StrCat("postgresql", url->substr(url->find("://"))));
    StoredVerdict v;
    v.request_digest = std::string(64, 'f');
    ASSERT_TRUE(stores->verdicts->Put(v).ok());
    EXPECT_TRUE(stores->blobs->Put("x").ok());
  }
}

}  // namespace
}  // namespace preflight::store
