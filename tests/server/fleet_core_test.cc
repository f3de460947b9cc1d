// Two PreflightCores ("replicas") on one real PostgreSQL store (started by
// tests/store/pg_cluster.sh), each with its own fake job runner: identical
// requests run once while the holder is alive, however long it runs, and a
// dead holder's check is taken over once its lease expires.
#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <prometheus/registry.h>

#include "absl/time/clock.h"
#include "service/server/core.h"
#include "service/store/store_factory.h"
#include "tests/store/pg_test_cluster.h"

namespace preflight::server {
namespace {

class HeldRunner : public worker::JobRunner {
 public:
  v1::WorkerResult Run(v1::WorkerJob job, worker::JobInputs, const worker::AbandonedFn&) override {
    ++runs;
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [this] { return !hold; });
    v1::WorkerResult r;
    r.set_id(job.id());
    r.mutable_report()->set_verdict(v1::PASS);
    r.mutable_report()->set_completion(v1::COMPLETION_FINAL);
    return r;
  }
  std::string engine_version() const override { return "test"; }
  void Release() {
    std::lock_guard<std::mutex> lock(mu);
    hold = false;
    cv.notify_all();
  }
  std::atomic<int> runs{0};
  std::mutex mu;
  std::condition_variable cv;
  bool hold = false;
};

// One replica: its own stores (own connections, own lease owner id) on the
// shared database, its own runner and metrics.
struct Replica {
  Replica(const std::string& spec, absl::Duration ttl) {
    auto s = store::OpenStore(spec, 1 << 20);
    EXPECT_TRUE(s.ok()) << s.status();
    if (!s.ok()) return;
    stores = *std::move(s);
    metrics = std::make_unique<ServiceMetrics>(registry);
    CoreConfig c;
    c.job_slots = 1;
    c.queue_size = 1;
    c.lease_ttl = ttl;
    core = std::make_unique<PreflightCore>(c, stores.blobs.get(), stores.verdicts.get(), &runner,
                                           metrics.get(), /*signer=*/nullptr, stores.leases.get());
  }
  // Observations of one store operation, or the value of a counter.
  double Metric(const std::string& name, const std::map<std::string, std::string>& labels) {
    for (const auto& family : registry.Collect()) {
      if (family.name != name) continue;
      for (const auto& m : family.metric) {
        std::map<std::string, std::string> got;
        for (const auto& l : m.label) got[l.name] = l.value;
        if (got != labels) continue;
        if (family.type == prometheus::MetricType::Counter) return m.counter.value;
        if (family.type == prometheus::MetricType::Histogram) {
          return static_cast<double>(m.histogram.sample_count);
        }
      }
    }
    return -1;
  }
  double Claims() { return Metric("preflight_store_operation_seconds", {{"op", "claim"}}); }

  prometheus::Registry registry;
  store::Stores stores;
  std::unique_ptr<ServiceMetrics> metrics;
  HeldRunner runner;
  std::unique_ptr<PreflightCore> core;
};

v1::CheckRequest Request(uint64_t seed) {
  v1::CheckRequest r;
  r.mutable_model()->set_inline_(
      std::string("PK\x03\x04"
                  "model",
                  9));
  r.mutable_batch()->set_inline_(
      std::string("PK\x03\x04"
                  "batch",
                  9));
  r.mutable_config()->set_seed(seed);
  return r;
}

absl::Time Deadline() { return absl::Now() + absl::Seconds(60); }

// Polls `cond` (bounded): the tests wait on events, never on fixed sleeps.
bool WaitFor(const std::function<bool()>& cond) {
  const absl::Time until = absl::Now() + absl::Seconds(30);
  while (!cond()) {
    if (absl::Now() > until) return false;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return true;
}

class FleetCoreTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto c = store::PgTestCluster::Create();
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = c->release();
  }
  static void TearDownTestSuite() { delete cluster_; }
  std::string NewDatabase() {
    auto url = cluster_->NewDatabase();
    EXPECT_TRUE(url.ok()) << url.status();
    return url.ok() ? *url : "";
  }
  static store::PgTestCluster* cluster_;
};
store::PgTestCluster* FleetCoreTest::cluster_ = nullptr;

TEST_F(FleetCoreTest, ALiveHolderRunsTheCheckOnceHoweverLongItTakes) {
  ASSERT_NE(cluster_, nullptr);
  const std::string url = NewDatabase();
  const absl::Duration ttl = absl::Milliseconds(600);
  Replica a(url, ttl), b(url, ttl);
  ASSERT_TRUE(a.core && b.core);
  a.runner.hold = true;
  absl::StatusOr<v1::CheckResponse> on_a, on_b;
  std::thread ta([&] { on_a = a.core->Check(Request(1), Deadline()); });
  if (!WaitFor([&] { return a.runner.runs == 1; })) {
    a.runner.Release();
    ta.join();
    FAIL() << "A never ran the check: " << on_a.status();
  }
  std::thread tb([&] { on_b = b.core->Check(Request(1), Deadline()); });
  // B polls the lease every TTL/4: twelve polls span three TTLs, so A's
  // lease outlived its TTL three times over only by being renewed.
  ASSERT_TRUE(WaitFor([&] { return b.Claims() >= 12; }));
  EXPECT_EQ(b.runner.runs, 0) << "ran while the holder was alive";
  a.runner.Release();
  ta.join();
  tb.join();
  ASSERT_TRUE(on_a.ok()) << on_a.status();
  ASSERT_TRUE(on_b.ok()) << on_b.status();
  EXPECT_FALSE(on_a->cached());
  EXPECT_TRUE(on_b->cached());
  EXPECT_EQ(on_b->request_digest(), on_a->request_digest());
  EXPECT_EQ(on_b->report().SerializeAsString(), on_a->report().SerializeAsString());
  EXPECT_EQ(a.runner.runs + b.runner.runs, 1);
  EXPECT_EQ(b.Metric("preflight_lease_takeovers_total", {}), 0);
  EXPECT_EQ(b.Metric("preflight_cache_requests_total", {{"result", "hit"}}), 1);
  // Finished: the lease is gone, and a repeat anywhere is a plain cache hit.
  auto again = b.core->Check(Request(1), Deadline());
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->cached());
}

TEST_F(FleetCoreTest, ADeadHoldersCheckIsTakenOverOnceItsLeaseExpires) {
  ASSERT_NE(cluster_, nullptr);
  const std::string url = NewDatabase();
  const absl::Duration ttl = absl::Seconds(1);
  // The request's digest, from a replica of its own (the digest does not
  // depend on the store).
  std::string digest;
  {
    Replica probe(NewDatabase(), ttl);
    ASSERT_TRUE(probe.core);
    auto r = probe.core->Check(Request(2), Deadline());
    ASSERT_TRUE(r.ok()) << r.status();
    digest = r->request_digest();
  }
  // A replica that claimed it and died: nobody renews its lease.
  Replica dead(url, ttl);
  ASSERT_TRUE(dead.stores.leases);
  const absl::Time claimed = absl::Now();
  auto claim = dead.stores.leases->TryClaim(digest, ttl);
  ASSERT_TRUE(claim.ok() && claim->granted);
  Replica b(url, ttl);
  ASSERT_TRUE(b.core);
  auto r = b.core->Check(Request(2), Deadline());
  const absl::Duration waited = absl::Now() - claimed;
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->request_digest(), digest);
  EXPECT_FALSE(r->cached()) << "B ran it itself";
  EXPECT_EQ(b.runner.runs, 1);
  EXPECT_EQ(b.Metric("preflight_lease_takeovers_total", {}), 1);
  EXPECT_GE(waited, ttl) << "taken over before the lease expired";
}

}  // namespace
}  // namespace preflight::server
