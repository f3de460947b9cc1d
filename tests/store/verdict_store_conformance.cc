#include "tests/store/verdict_store_conformance.h"

#include <thread>
#include <vector>

#include <gmock/gmock.h>

#include "absl/strings/str_cat.h"

namespace preflight::store {
namespace {

using ::testing::HasSubstr;

std::string Digest(char c) { return std::string(64, c); }

StoredVerdict Verdict(char digest, const std::string& job_id, v1::Verdict verdict) {
  StoredVerdict v;
  v.request_digest = Digest(digest);
  v.job_id = job_id;
  v.report.set_verdict(verdict);
  return v;
}

std::unique_ptr<VerdictStore> Open(const VerdictStoreBackend& b, const std::string& location) {
  auto store = b.open(location);
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? *std::move(store) : nullptr;
}

TEST_P(VerdictStoreConformance, RoundTripByDigestAndJobIdAcrossReopen) {
  const std::string location = GetParam().new_location();
  {
    auto store = Open(GetParam(), location);
    ASSERT_NE(store, nullptr);
    ASSERT_TRUE(store->Put(Verdict('a', "job-1", v1::FAIL)).ok());
  }
  // Survives reopening (a restart).
  auto store = Open(GetParam(), location);
  ASSERT_NE(store, nullptr);
  auto by_digest = store->GetByDigest(Digest('a'));
  ASSERT_TRUE(by_digest.ok()) << by_digest.status();
  EXPECT_EQ(by_digest->report.verdict(), v1::FAIL);
  EXPECT_EQ(by_digest->job_id, "job-1");
  EXPECT_GT(by_digest->created_unix_seconds, 0) << "0 means now";
  auto by_job = store->GetByJobId("job-1");
  ASSERT_TRUE(by_job.ok());
  EXPECT_EQ(by_job->request_digest, Digest('a'));
}

TEST_P(VerdictStoreConformance, AbsentKeysAreNotFoundNamingTheKey) {
  auto store = Open(GetParam(), GetParam().new_location());
  ASSERT_NE(store, nullptr);
  const auto by_digest = store->GetByDigest(Digest('0'));
  EXPECT_EQ(by_digest.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(by_digest.status().message()), HasSubstr(Digest('0')));
  const auto by_job = store->GetByJobId("nope");
  EXPECT_EQ(by_job.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(by_job.status().message()), HasSubstr("nope"));
}

TEST_P(VerdictStoreConformance, ReportComesBackExactlyAsStored) {
  auto store = Open(GetParam(), GetParam().new_location());
  ASSERT_NE(store, nullptr);
  StoredVerdict v = Verdict('b', "", v1::ERROR);
  v.report.set_completion(v1::COMPLETION_TRANSIENT);
  auto* f = v.report.add_findings();
  f->set_code(v1::WORKER_TIMEOUT);
  f->set_message(std::string("a NUL \0 and UTF-8 \xc3\xa9 survive", 28));
  v.report.mutable_timing()->set_total_seconds(1.25);
  v.created_unix_seconds = 1700000000.5;
  ASSERT_TRUE(store->Put(v).ok());
  auto got = store->GetByDigest(Digest('b'));
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->report.SerializeAsString(), v.report.SerializeAsString());
  EXPECT_EQ(got->job_id, "");
  EXPECT_DOUBLE_EQ(got->created_unix_seconds, 1700000000.5);
}

TEST_P(VerdictStoreConformance, SignatureComesBackExactlyAsStored) {
  auto store = Open(GetParam(), GetParam().new_location());
  ASSERT_NE(store, nullptr);
  StoredVerdict v = Verdict('s', "job-s", v1::PASS);
  v.report_signature = std::string("\0\x01\xff signature bytes", 19);
  v.signing_key_id = "ed25519:0123456789abcdef";
  ASSERT_TRUE(store->Put(v).ok());
  for (const auto& got : {store->GetByDigest(Digest('s')), store->GetByJobId("job-s")}) {
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->report_signature, v.report_signature);
    EXPECT_EQ(got->signing_key_id, v.signing_key_id);
  }
  // Unsigned verdicts stay unsigned.
  ASSERT_TRUE(store->Put(Verdict('u', "", v1::PASS)).ok());
  auto unsigned_v = store->GetByDigest(Digest('u'));
  ASSERT_TRUE(unsigned_v.ok());
  EXPECT_EQ(unsigned_v->report_signature, "");
  EXPECT_EQ(unsigned_v->signing_key_id, "");
}

// One byte changed in a stored report (FAIL edited towards PASS) is never
// served as a verdict: reads are DATA_LOSS naming the digest, and the
// integrity check names it; other verdicts still read.
TEST_P(VerdictStoreConformance, AlteredStoredReportIsDataLossNamingTheDigest) {
  if (!GetParam().alter_stored_report) GTEST_SKIP() << "backend offers no way to alter a row";
  const std::string location = GetParam().new_location();
  {
    auto store = Open(GetParam(), location);
    ASSERT_NE(store, nullptr);
    StoredVerdict fail = Verdict('f', "job-f", v1::FAIL);
    fail.report.add_findings()->set_code(v1::LOSS_DIVERGED);
    ASSERT_TRUE(store->Put(fail).ok());
    ASSERT_TRUE(store->Put(Verdict('g', "job-g", v1::PASS)).ok());
    EXPECT_TRUE(store->CheckIntegrity().ok()) << store->CheckIntegrity();
  }
  ASSERT_TRUE(GetParam().alter_stored_report(location, Digest('f')).ok());
  auto store = Open(GetParam(), location);
  ASSERT_NE(store, nullptr);
  for (const auto& got : {store->GetByDigest(Digest('f')), store->GetByJobId("job-f")}) {
    EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss) << got.status();
    EXPECT_THAT(std::string(got.status().message()), HasSubstr(Digest('f')));
  }
  const absl::Status integrity = store->CheckIntegrity();
  EXPECT_EQ(integrity.code(), absl::StatusCode::kDataLoss) << integrity;
  EXPECT_THAT(std::string(integrity.message()), HasSubstr(Digest('f')));
  EXPECT_THAT(std::string(integrity.message()), ::testing::Not(HasSubstr(Digest('g'))));
  auto untouched = store->GetByJobId("job-g");
  ASSERT_TRUE(untouched.ok()) << untouched.status();
  EXPECT_EQ(untouched->report.verdict(), v1::PASS);
}

TEST_P(VerdictStoreConformance, PutReplacesTheVerdictOfADigest) {
  auto store = Open(GetParam(), GetParam().new_location());
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->Put(Verdict('c', "", v1::ERROR)).ok());
  ASSERT_TRUE(store->Put(Verdict('c', "", v1::PASS)).ok());
  auto got = store->GetByDigest(Digest('c'));
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->report.verdict(), v1::PASS);
}

TEST_P(VerdictStoreConformance, JobIdPointsAtItsLatestVerdict) {
  auto store = Open(GetParam(), GetParam().new_location());
  ASSERT_NE(store, nullptr);
  StoredVerdict first = Verdict('d', "train/run-42", v1::FAIL);
  first.created_unix_seconds = 1000;
  StoredVerdict second = Verdict('e', "train/run-42", v1::PASS);
  second.created_unix_seconds = 2000;
  ASSERT_TRUE(store->Put(first).ok());
  ASSERT_TRUE(store->Put(second).ok());
  auto got = store->GetByJobId("train/run-42");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->request_digest, Digest('e'));
  EXPECT_EQ(got->report.verdict(), v1::PASS);
  // The older digest keeps its own verdict.
  EXPECT_EQ(store->GetByDigest(Digest('d'))->report.verdict(), v1::FAIL);
}

TEST_P(VerdictStoreConformance, TwoJobIdsBoundToOneDigestBothReadBack) {
  const std::string location = GetParam().new_location();
  {
    auto store = Open(GetParam(), location);
    ASSERT_NE(store, nullptr);
    ASSERT_TRUE(store->Put(Verdict('f', "team/a", v1::PASS)).ok());
    ASSERT_TRUE(store->Bind("team/b", Digest('f')).ok());
    // A third id through Put (a verdict stored again under another job).
    ASSERT_TRUE(store->Put(Verdict('f', "team/c", v1::PASS)).ok());
  }
  auto store = Open(GetParam(), location);  // And after a restart.
  ASSERT_NE(store, nullptr);
  for (const char* job : {"team/a", "team/b", "team/c"}) {
    SCOPED_TRACE(job);
    auto got = store->GetByJobId(job);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->request_digest, Digest('f'));
    EXPECT_EQ(got->job_id, job);
    EXPECT_EQ(got->report.verdict(), v1::PASS);
    ASSERT_EQ(got->bindings.size(), 1u);
  }
  EXPECT_EQ(store->GetByDigest(Digest('f'))->job_id, "team/c");  // The latest bound.
}

TEST_P(VerdictStoreConformance, RebindingAJobIdKeepsItsHistory) {
  const std::string location = GetParam().new_location();
  {
    auto store = Open(GetParam(), location);
    ASSERT_NE(store, nullptr);
    ASSERT_TRUE(store->Put(Verdict('g', "train/c", v1::FAIL)).ok());
    ASSERT_TRUE(store->Put(Verdict('h', "train/c", v1::PASS)).ok());
    // Binding to the digest it already points at adds nothing.
    ASSERT_TRUE(store->Bind("train/c", Digest('h')).ok());
    ASSERT_TRUE(store->Put(Verdict('h', "train/c", v1::PASS)).ok());
  }
  auto store = Open(GetParam(), location);
  ASSERT_NE(store, nullptr);
  auto got = store->GetByJobId("train/c");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->request_digest, Digest('h'));
  EXPECT_EQ(got->report.verdict(), v1::PASS);
  ASSERT_EQ(got->bindings.size(), 2u);
  EXPECT_EQ(got->bindings[0].request_digest, Digest('g'));
  EXPECT_EQ(got->bindings[0].verdict, v1::FAIL);
  EXPECT_EQ(got->bindings[1].request_digest, Digest('h'));
  EXPECT_EQ(got->bindings[1].verdict, v1::PASS);
  EXPECT_LE(got->bindings[0].bound_unix_seconds, got->bindings[1].bound_unix_seconds);
  EXPECT_GT(got->bindings[0].bound_unix_seconds, 0);
  // The verdict it was rebound from is still there.
  EXPECT_EQ(store->GetByDigest(Digest('g'))->report.verdict(), v1::FAIL);
}

TEST_P(VerdictStoreConformance, BindingAnUnknownDigestIsNotFoundAndChangesNothing) {
  auto store = Open(GetParam(), GetParam().new_location());
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->Put(Verdict('i', "train/d", v1::PASS)).ok());
  const absl::Status s = store->Bind("train/d", Digest('j'));
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(s.message()), HasSubstr(Digest('j')));
  auto got = store->GetByJobId("train/d");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->request_digest, Digest('i'));
  EXPECT_EQ(got->bindings.size(), 1u);
}

TEST_P(VerdictStoreConformance, ConcurrentPutsAllLand) {
  auto store = Open(GetParam(), GetParam().new_location());
  ASSERT_NE(store, nullptr);
  constexpr int kThreads = 4, kEach = 25;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        StoredVerdict v;
        v.request_digest = absl::StrCat(std::string(60, 'f'), t, i < 10 ? "00" : "0", i);
        v.request_digest.resize(64, '0');
        v.job_id = absl::StrCat("job-", t, "-", i);
        v.report.set_verdict(v1::PASS);
        EXPECT_TRUE(store->Put(v).ok());
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) {
    for (int i = 0; i < kEach; ++i) {
      EXPECT_TRUE(store->GetByJobId(absl::StrCat("job-", t, "-", i)).ok()) << t << " " << i;
    }
  }
}

}  // namespace
}  // namespace preflight::store
