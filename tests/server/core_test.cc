// PreflightCore with a fake job runner: request validation (the status code
// and the field named), caching, and admission control.
#include "service/server/core.h"

#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <prometheus/registry.h>

#include "absl/time/clock.h"
#include "service/store/blob_retention.h"
#include "service/store/sha256.h"
#include "service/store/store_factory.h"

namespace preflight::server {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

class FakeRunner : public worker::JobRunner {
 public:
  v1::WorkerResult Run(v1::WorkerJob job, worker::JobInputs inputs,
                       const worker::AbandonedFn& abandoned) override {
    ++runs;
    inputs_were_open = inputs.model.valid() && inputs.batch.valid();
    v1::WorkerResult r;
    r.set_id(job.id());
    {
      // Held jobs wait for Release() or, as WorkerPool does, for every
      // caller to give up (polled with a bounded wait, like the pool).
      std::unique_lock<std::mutex> lock(mu);
      while (hold) {
        cv.wait_for(lock, std::chrono::milliseconds(5));
        if (!hold) break;
        lock.unlock();
        const bool gone = abandoned && abandoned();
        lock.lock();
        if (gone) {
          ++cancelled;
          r.set_exit_reason("cancelled");
          r.mutable_report()->set_completion(v1::COMPLETION_TRANSIENT);
          return r;
        }
      }
    }
    r.mutable_report()->set_verdict(next_verdict);
    r.set_exit_reason(next_exit_reason);
    // As the worker layer marks them: a job that did not finish is transient.
    r.mutable_report()->set_completion(next_exit_reason.empty() ? v1::COMPLETION_FINAL
                                                                : v1::COMPLETION_TRANSIENT);
    if (next_verdict == v1::FAIL) {
      auto* f = r.mutable_report()->add_findings();
      f->set_code(v1::LOSS_FLAT);
      f->set_severity(v1::Finding::FAIL);
    }
    return r;
  }
  std::string engine_version() const override { return "test"; }
  void Release() {
    std::lock_guard<std::mutex> lock(mu);
    hold = false;
    cv.notify_all();
  }
  std::atomic<int> runs{0};
  std::atomic<int> cancelled{0};
  std::atomic<bool> inputs_were_open{false};
  v1::Verdict next_verdict = v1::PASS;
  std::string next_exit_reason;
  std::mutex mu;
  std::condition_variable cv;
  bool hold = false;
};

class CoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/preflight-core-test-XXXXXX";
    const std::string dir = mkdtemp(tmpl);
    auto stores = store::OpenStore(dir, 1 << 20);
    ASSERT_TRUE(stores.ok()) << stores.status();
    blobs_ = std::move(stores->blobs);
    verdicts_ = std::move(stores->verdicts);
    ledger_ = std::move(stores->ledger);
    CoreConfig c;
    c.job_slots = 1;
    c.queue_size = 1;
    c.max_inline_bytes = 1024;
    metrics_ = std::make_unique<ServiceMetrics>(registry_);
    core_ =
        std::make_unique<PreflightCore>(c, blobs_.get(), verdicts_.get(), &runner_, metrics_.get());
  }
  // A valid request distinct per seed (a different cache key).
  v1::CheckRequest WithSeed(uint64_t seed) {
    v1::CheckRequest r = Valid();
    r.mutable_config()->set_seed(seed);
    return r;
  }

  v1::CheckRequest Valid() {
    v1::CheckRequest r;
    // The core only looks at the zip header; the fake runner at nothing.
    r.mutable_model()->set_inline_(
        std::string("PK\x03\x04"
                    "model-bytes",
                    15));
    r.mutable_batch()->set_inline_(
        std::string("PK\x03\x04"
                    "batch-bytes",
                    15));
    return r;
  }
  absl::Time Deadline() { return absl::Now() + absl::Seconds(30); }

  // Value of one series in the injected registry (-1 when absent).
  double Metric(const std::string& name, const std::map<std::string, std::string>& labels) {
    for (const auto& family : registry_.Collect()) {
      if (family.name != name) continue;
      for (const auto& m : family.metric) {
        std::map<std::string, std::string> got;
        for (const auto& l : m.label) got[l.name] = l.value;
        if (got != labels) continue;
        if (family.type == prometheus::MetricType::Counter) return m.counter.value;
        if (family.type == prometheus::MetricType::Gauge) return m.gauge.value;
        if (family.type == prometheus::MetricType::Histogram) {
          return static_cast<double>(m.histogram.sample_count);
        }
      }
    }
    return -1;
  }

  prometheus::Registry registry_;
  std::unique_ptr<ServiceMetrics> metrics_;
  FakeRunner runner_;
  std::unique_ptr<store::BlobStore> blobs_;
  std::unique_ptr<store::VerdictStore> verdicts_;
  std::unique_ptr<store::BlobLedger> ledger_;
  std::unique_ptr<PreflightCore> core_;
};

// A tenant's Check artifacts are charged to it; one that would pass its quota
// is RESOURCE_EXHAUSTED naming the field before anything runs, the new inline
// bytes are not left behind, and another tenant is unaffected.
TEST_F(CoreTest, AnArtifactOverTheTenantsQuotaIsRefusedBeforeAnythingRuns) {
  store::RetentionOptions o;
  o.default_quota_bytes = 40;  // The model and batch of Valid() are 15 bytes each.
  store::BlobRetention retention(o, ledger_.get(), blobs_.get(), [] { return absl::Now(); });
  core_->set_retention(&retention);
  ASSERT_TRUE(core_->Check(Valid(), Deadline(), nullptr, "tenant-a").ok());
  EXPECT_EQ(retention.UsageBytes("tenant-a").value_or(-1), 30);
  ASSERT_TRUE(core_->Check(Valid(), Deadline(), nullptr, "tenant-a").ok()) << "held: not charged";
  EXPECT_EQ(retention.UsageBytes("tenant-a").value_or(-1), 30);
  const int runs = runner_.runs.load();
  v1::CheckRequest bigger = Valid();
  const std::string batch(std::string("PK\x03\x04", 4) + std::string(16, 'n'));
  bigger.mutable_batch()->set_inline_(batch);
  auto refused = core_->Check(bigger, Deadline(), nullptr, "tenant-a");
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
  EXPECT_THAT(std::string(refused.status().message()),
              AllOf(HasSubstr("batch"), HasSubstr("tenant-a"), HasSubstr("30 of 40")));
  EXPECT_EQ(runner_.runs.load(), runs) << "nothing ran";
  EXPECT_FALSE(blobs_->Has(store::Sha256Hex(batch)).value_or(true)) << "its new bytes went again";
  EXPECT_EQ(Metric("preflight_quota_refusals_total", {}), 1);
  EXPECT_TRUE(core_->Check(bigger, Deadline(), nullptr, "tenant-b").ok());
  // Without --tokens every caller is one tenant, "anonymous".
  ASSERT_TRUE(core_->Check(Valid(), Deadline()).ok());
  EXPECT_EQ(retention.UsageBytes("anonymous").value_or(-1), 30);
  core_->set_retention(nullptr);  // `retention` goes before the core
}

TEST_F(CoreTest, MalformedRequestsNameTheField) {
  struct Case {
    std::string name;
    std::function<void(v1::CheckRequest*)> mutate;
    absl::StatusCode code;
    std::string field;
  } cases[] = {
      {"missing model", [](auto* r) { r->clear_model(); }, absl::StatusCode::kInvalidArgument,
       "model: is required"},
      {"missing batch", [](auto* r) { r->clear_batch(); }, absl::StatusCode::kInvalidArgument,
       "batch: is required"},
      {"empty inline", [](auto* r) { r->mutable_model()->set_inline_(""); },
       absl::StatusCode::kInvalidArgument, "model.inline: is empty"},
      {"unknown loss", [](auto* r) { r->mutable_config()->set_loss("hinge"); },
       absl::StatusCode::kInvalidArgument, "config.loss"},
      {"negative lr", [](auto* r) { r->mutable_config()->set_lr(-1); },
       absl::StatusCode::kInvalidArgument, "config.lr"},
      {"garbage digest", [](auto* r) { r->mutable_batch()->set_sha256("zz"); },
       absl::StatusCode::kInvalidArgument, "batch.sha256"},
      {"unknown digest", [](auto* r) { r->mutable_model()->set_sha256(std::string(64, 'e')); },
       absl::StatusCode::kNotFound, "model.sha256"},
      {"inline too large", [](auto* r) { r->mutable_model()->set_inline_(std::string(2000, 'x')); },
       absl::StatusCode::kResourceExhausted, "model.inline"},
      {"garbage model bytes", [](auto* r) { r->mutable_model()->set_inline_("not a zip"); },
       absl::StatusCode::kInvalidArgument, "model.inline: not a TorchScript"},
      {"garbage batch bytes", [](auto* r) { r->mutable_batch()->set_inline_("\x80\x02}q"); },
       absl::StatusCode::kInvalidArgument, "batch.inline: not a TorchScript or torch.save"},
      {"bad job id", [](auto* r) { r->set_job_id("has space"); },
       absl::StatusCode::kInvalidArgument, "job_id"},
      {"timeout over cap", [](auto* r) { r->mutable_config()->set_timeout_seconds(99999); },
       absl::StatusCode::kInvalidArgument, "config.timeout_seconds"},
  };
  for (const auto& tc : cases) {
    SCOPED_TRACE(tc.name);
    v1::CheckRequest r = Valid();
    tc.mutate(&r);
    auto resp = core_->Check(r, Deadline());
    ASSERT_FALSE(resp.ok());
    EXPECT_EQ(resp.status().code(), tc.code);
    EXPECT_THAT(std::string(resp.status().message()), HasSubstr(tc.field));
  }
  EXPECT_EQ(runner_.runs.load(), 0);
}

// 512 intra-op threads passed validation and the job then exited without a
// report: a job may use no more threads than CPUs it may run on.
TEST_F(CoreTest, ThreadsAboveTheJobsCpusAreRefusedNamingTheBound) {
  CoreConfig c;
  c.job_cpus = 4;
  PreflightCore core(c, blobs_.get(), verdicts_.get(), &runner_, metrics_.get());
  v1::CheckRequest r = Valid();
  r.mutable_config()->set_intra_op_threads(512);
  auto refused = core.Check(r, Deadline());
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(refused.status().message()),
              HasSubstr("config.intra_op_threads: at most 4 on this server"));
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("got 512"));
  EXPECT_EQ(runner_.runs.load(), 0);
  r.mutable_config()->set_intra_op_threads(4);  // The bound itself runs.
  auto ran = core.Check(r, Deadline());
  ASSERT_TRUE(ran.ok()) << ran.status();
  EXPECT_EQ(runner_.runs.load(), 1);
}

TEST_F(CoreTest, UploadedGarbageIsRefusedByItsDigestField) {
  auto garbage = blobs_->Put("an uploaded text file, not a model");
  ASSERT_TRUE(garbage.ok());
  v1::CheckRequest r = Valid();
  r.mutable_model()->set_sha256(garbage->sha256);
  auto resp = core_->Check(r, Deadline());
  ASSERT_FALSE(resp.ok());
  EXPECT_EQ(resp.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(resp.status().message()),
              HasSubstr("model.sha256 (uploaded artifact): not a TorchScript"));
  EXPECT_THAT(std::string(resp.status().message()), HasSubstr("61 6e 20 75"));  // "an u"
  EXPECT_EQ(runner_.runs.load(), 0);
}

TEST_F(CoreTest, RepeatIsCacheHitAndJobIdPointsAtIt) {
  v1::CheckRequest r = Valid();
  r.set_job_id("a");
  auto first = core_->Check(r, Deadline());
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_FALSE(first->cached());
  r.set_job_id("b");
  auto second = core_->Check(r, Deadline());
  ASSERT_TRUE(second.ok());
  EXPECT_TRUE(second->cached());
  EXPECT_EQ(second->request_digest(), first->request_digest());
  EXPECT_EQ(runner_.runs.load(), 1);
  v1::GetVerdictRequest g;
  g.set_job_id("b");
  auto v = core_->GetVerdict(g);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->request_digest(), first->request_digest());
  // A different config is a different request.
  r.mutable_config()->set_seed(7);
  auto third = core_->Check(r, Deadline());
  ASSERT_TRUE(third.ok());
  EXPECT_NE(third->request_digest(), first->request_digest());
}

// Spins until `cond` holds or `limit` passes: a check that never reaches the
// awaited state fails the test instead of hanging it.
bool Eventually(const std::function<bool()>& cond, absl::Duration limit = absl::Seconds(30)) {
  const absl::Time end = absl::Now() + limit;
  while (!cond()) {
    if (absl::Now() > end) return false;
    std::this_thread::yield();
  }
  return true;
}

TEST_F(CoreTest, FullSlotsAndQueueAreResourceExhaustedImmediately) {
  runner_.hold = true;
  std::thread running([&] { (void)core_->Check(WithSeed(1), Deadline()); });
  const bool started = Eventually([&] { return core_->running() >= 1; });
  std::thread queued([&] { (void)core_->Check(WithSeed(2), Deadline()); });
  const bool waiting = started && Eventually([&] { return core_->queued() >= 1; });
  if (!waiting) {
    runner_.Release();
    running.join();
    queued.join();
    FAIL() << "the first check never " << (started ? "queued the second" : "started");
  }
  const absl::Time start = absl::Now();
  auto third = core_->Check(WithSeed(3), Deadline());
  EXPECT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(third.status().message()), HasSubstr("retry"));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));  // Immediate, not after a slot frees.
  runner_.Release();
  running.join();
  queued.join();
  EXPECT_EQ(runner_.runs.load(), 2);
}

TEST_F(CoreTest, IdenticalConcurrentRequestsRunOnce) {
  runner_.hold = true;
  v1::CheckRequest r = Valid();
  absl::StatusOr<v1::CheckResponse> a, b;
  std::thread first([&] { a = core_->Check(r, Deadline()); });
  if (!Eventually([&] { return core_->running() >= 1; })) {
    runner_.Release();
    first.join();
    FAIL() << "the first check never started: " << a.status();
  }
  std::thread second([&] { b = core_->Check(r, Deadline()); });
  absl::SleepFor(absl::Milliseconds(50));  // Let the second one reach the wait.
  runner_.Release();
  first.join();
  second.join();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(runner_.runs.load(), 1);
  EXPECT_EQ(a->request_digest(), b->request_digest());
  EXPECT_NE(a->cached(), b->cached());
}

TEST_F(CoreTest, JobGetsItsInputsAsOpenDescriptors) {
  ASSERT_TRUE(core_->Check(Valid(), Deadline()).ok());
  EXPECT_TRUE(runner_.inputs_were_open.load());
}

// A caller whose RPC was cancelled (the flag stands in for gRPC's
// IsCancelled): its running job is killed and its slot freed; nothing is
// stored for it.
TEST_F(CoreTest, CallerThatGivesUpFreesItsRunningSlot) {
  runner_.hold = true;
  std::atomic<bool> gone{false};
  v1::CheckRequest r = Valid();
  r.set_job_id("gave-up");
  absl::StatusOr<v1::CheckResponse> a;
  std::thread caller([&] { a = core_->Check(r, Deadline(), [&] { return gone.load(); }); });
  if (!Eventually([&] { return core_->running() >= 1; })) {
    runner_.Release();
    caller.join();
    FAIL() << "the check never started";
  }
  gone = true;
  caller.join();  // Returns once the runner saw the job abandoned.
  EXPECT_EQ(a.status().code(), absl::StatusCode::kCancelled);
  EXPECT_THAT(std::string(a.status().message()), HasSubstr("while its check ran"));
  EXPECT_EQ(runner_.cancelled.load(), 1);
  EXPECT_EQ(core_->running(), 0);
  v1::GetVerdictRequest g;
  g.set_job_id("gave-up");
  EXPECT_EQ(core_->GetVerdict(g).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Metric("preflight_worker_exits_total", {{"reason", "cancelled"}}), 1);
  // The slot is free for the next check, and the same request runs afresh.
  runner_.Release();
  auto again = core_->Check(r, Deadline());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE(again->cached());
  EXPECT_EQ(runner_.runs.load(), 2);
}

TEST_F(CoreTest, QueuedCallerThatGivesUpLeavesTheQueue) {
  runner_.hold = true;
  std::thread running([&] { (void)core_->Check(WithSeed(1), Deadline()); });
  const bool started = Eventually([&] { return core_->running() >= 1; });
  std::atomic<bool> gone{false};
  absl::StatusOr<v1::CheckResponse> cancelled, expired;
  std::thread queued(
      [&] { cancelled = core_->Check(WithSeed(2), Deadline(), [&] { return gone.load(); }); });
  const bool waiting = started && Eventually([&] { return core_->queued() >= 1; });
  if (waiting) {
    gone = true;
    queued.join();
    // A deadline that passes in the queue leaves it the same way.
    expired = core_->Check(WithSeed(3), absl::Now() + absl::Milliseconds(100));
  }
  runner_.Release();
  running.join();
  if (!waiting) {
    queued.join();
    FAIL() << "the second check never queued";
  }
  EXPECT_EQ(cancelled.status().code(), absl::StatusCode::kCancelled);
  EXPECT_THAT(std::string(cancelled.status().message()), HasSubstr("while it was queued"));
  EXPECT_EQ(expired.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(std::string(expired.status().message()), HasSubstr("while it was queued"));
  EXPECT_EQ(core_->queued(), 0);
  EXPECT_EQ(runner_.runs.load(), 1) << "neither queued check ran";
}

TEST_F(CoreTest, JobRunsOnWhileACoalescedCallerStillWaits) {
  runner_.hold = true;
  const v1::CheckRequest r = Valid();
  std::atomic<bool> a_gone{false}, b_gone{false};
  std::atomic<bool> b_waiting{false};
  absl::StatusOr<v1::CheckResponse> a, b;
  std::atomic<bool> a_returned{false};
  std::thread leader([&] {
    a = core_->Check(r, Deadline(), [&] { return a_gone.load(); });
    a_returned = true;
  });
  const bool started = Eventually([&] { return core_->running() >= 1; });
  // The follower's own question is asked only while it waits.
  std::thread follower([&] {
    b = core_->Check(r, Deadline(), [&] {
      b_waiting = true;
      return b_gone.load();
    });
  });
  const bool joined = started && Eventually([&] { return b_waiting.load(); });
  bool left_alone = false;
  if (joined) {
    a_gone = true;
    // The first caller returns by itself; the job runs on for the follower.
    left_alone = Eventually([&] { return a_returned.load(); });
    absl::SleepFor(absl::Milliseconds(200));  // Several of the runner's polls.
    EXPECT_EQ(runner_.cancelled.load(), 0) << "killed while a coalesced caller waited";
    EXPECT_EQ(core_->running(), 1);
    b_gone = true;
  }
  if (!joined || !left_alone) runner_.Release();
  leader.join();
  follower.join();
  ASSERT_TRUE(joined && left_alone) << "the follower never waited, or the first caller never left";
  EXPECT_EQ(runner_.cancelled.load(), 1) << "killed once the last caller left";
  EXPECT_EQ(a.status().code(), absl::StatusCode::kCancelled);
  EXPECT_THAT(std::string(a.status().message()), HasSubstr("while its check ran"));
  EXPECT_EQ(b.status().code(), absl::StatusCode::kCancelled);
  EXPECT_THAT(std::string(b.status().message()), HasSubstr("an identical check was running"));
  EXPECT_EQ(core_->running(), 0) << "the last caller returned before its slot was free";
}

// Issue 15: an identical request with a 60 s deadline failed with
// DEADLINE_EXCEEDED at 2.7 s because the first caller had 3 s. Each caller
// keeps its own deadline: the first gets DEADLINE_EXCEEDED alone, when its
// deadline passes (not when the check ends), and the check runs on to give
// the follower its verdict, once.
TEST_F(CoreTest, CoalescedCallersKeepTheirOwnDeadlines) {
  runner_.hold = true;
  const v1::CheckRequest r = Valid();
  absl::StatusOr<v1::CheckResponse> a, b;
  absl::Time a_returned_at;
  const absl::Time a_deadline = absl::Now() + absl::Milliseconds(400);
  std::thread leader([&] {
    a = core_->Check(r, a_deadline);
    a_returned_at = absl::Now();
  });
  const bool started = Eventually([&] { return core_->running() >= 1; });
  std::thread follower([&] { b = core_->Check(r, absl::Now() + absl::Seconds(60)); });
  // Past the first caller's deadline, with the check still running.
  absl::SleepFor(
      std::max(absl::Milliseconds(1), a_deadline + absl::Milliseconds(600) - absl::Now()));
  const int cancelled_while_held = runner_.cancelled.load();
  const int running_while_held = core_->running();
  const absl::Time released = absl::Now();
  runner_.Release();
  leader.join();
  follower.join();
  ASSERT_TRUE(started);
  EXPECT_EQ(a.status().code(), absl::StatusCode::kDeadlineExceeded) << a.status();
  EXPECT_LT(a_returned_at, released) << "the first caller waited for the check past its deadline";
  EXPECT_EQ(cancelled_while_held, 0) << "the check was killed with a caller still waiting";
  EXPECT_EQ(running_while_held, 1);
  ASSERT_TRUE(b.ok()) << "the follower failed with the first caller's deadline: " << b.status();
  EXPECT_EQ(b->report().verdict(), v1::PASS);
  EXPECT_EQ(runner_.runs.load(), 1);
  // It was stored, and answers the next identical request.
  auto c = core_->Check(r, Deadline());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->cached());
  EXPECT_EQ(runner_.runs.load(), 1);
}

TEST_F(CoreTest, OnlyFinalReportsAreReused) {
  // A transient report (the job timed out) is stored but runs again.
  runner_.next_verdict = v1::ERROR;
  runner_.next_exit_reason = "timeout";
  ASSERT_TRUE(core_->Check(Valid(), Deadline()).ok());
  runner_.next_verdict = v1::PASS;
  runner_.next_exit_reason = "";
  auto second = core_->Check(Valid(), Deadline());
  ASSERT_TRUE(second.ok());
  EXPECT_FALSE(second->cached());
  auto third = core_->Check(Valid(), Deadline());
  ASSERT_TRUE(third.ok());
  EXPECT_TRUE(third->cached()) << "the final PASS is reused";
  EXPECT_EQ(runner_.runs.load(), 2);
}

TEST_F(CoreTest, MetricsFollowEachOutcome) {
  EXPECT_EQ(Metric("preflight_job_slots", {{"state", "idle"}}), 1);
  // A miss that runs, then a hit.
  ASSERT_TRUE(core_->Check(Valid(), Deadline()).ok());
  ASSERT_TRUE(core_->Check(Valid(), Deadline()).ok());
  EXPECT_EQ(Metric("preflight_cache_requests_total", {{"result", "miss"}}), 1);
  EXPECT_EQ(Metric("preflight_cache_requests_total", {{"result", "hit"}}), 1);
  EXPECT_EQ(Metric("preflight_checks_total", {{"verdict", "PASS"}}), 1);
  EXPECT_EQ(Metric("preflight_check_duration_seconds", {{"phase", "total"}}), 1);
  EXPECT_EQ(Metric("preflight_check_duration_seconds", {{"phase", "queue"}}), 1);
  EXPECT_EQ(Metric("preflight_job_slots", {{"state", "busy"}}), 0);
  EXPECT_EQ(Metric("preflight_queue_depth", {}), 0);
  // Rejected requests never count as checks.
  v1::CheckRequest bad = Valid();
  bad.clear_model();
  ASSERT_FALSE(core_->Check(bad, Deadline()).ok());
  EXPECT_EQ(Metric("preflight_checks_total", {{"verdict", "PASS"}}), 1);
  EXPECT_EQ(Metric("preflight_worker_exits_total", {{"reason", "timeout"}}), 0);

  // A FAIL verdict with its finding, then a job killed at its deadline.
  runner_.next_verdict = v1::FAIL;
  v1::CheckRequest fail = Valid();
  fail.mutable_config()->set_seed(1);
  ASSERT_TRUE(core_->Check(fail, Deadline()).ok());
  EXPECT_EQ(Metric("preflight_checks_total", {{"verdict", "FAIL"}}), 1);
  EXPECT_EQ(Metric("preflight_findings_total", {{"code", "LOSS_FLAT"}}), 1);
  runner_.next_verdict = v1::ERROR;
  runner_.next_exit_reason = "timeout";
  v1::CheckRequest timeout = Valid();
  timeout.mutable_config()->set_seed(2);
  ASSERT_TRUE(core_->Check(timeout, Deadline()).ok());
  EXPECT_EQ(Metric("preflight_worker_exits_total", {{"reason", "timeout"}}), 1);
  EXPECT_EQ(Metric("preflight_checks_total", {{"verdict", "ERROR"}}), 1);
  EXPECT_EQ(Metric("preflight_cache_requests_total", {{"result", "miss"}}), 3);
}

TEST_F(CoreTest, DrainingRefusesNewChecks) {
  core_->StartDraining();
  auto r = core_->Check(Valid(), Deadline());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(CoreTest, GetVerdictValidatesKeys) {
  v1::GetVerdictRequest g;
  EXPECT_EQ(core_->GetVerdict(g).status().code(), absl::StatusCode::kInvalidArgument);
  g.set_request_digest("nothex");
  EXPECT_THAT(std::string(core_->GetVerdict(g).status().message()), HasSubstr("request_digest"));
  g.set_request_digest(std::string(64, '0'));
  EXPECT_EQ(core_->GetVerdict(g).status().code(), absl::StatusCode::kNotFound);
}

// A fresh Ed25519 private key in PEM form.
std::string NewSigningKeyPem() {
  EVP_PKEY* key = EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519");
  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio_PrivateKey(bio, key, nullptr, nullptr, 0, nullptr, nullptr);
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio, &data);
  std::string pem(data, static_cast<size_t>(n));
  BIO_free(bio);
  EVP_PKEY_free(key);
  return pem;
}

TEST_F(CoreTest, SigningCoreSignsAsItStoresAndReRunsUnsignedVerdicts) {
  v1::CheckRequest req = Valid();
  req.set_job_id("tenant-a/run-1");
  auto unsigned_r = core_->Check(req, Deadline());
  ASSERT_TRUE(unsigned_r.ok()) << unsigned_r.status();
  EXPECT_EQ(unsigned_r->report_signature(), "");
  EXPECT_EQ(unsigned_r->signing_key_id(), "");

  const std::string pem = NewSigningKeyPem();
  auto signer = crypto::Ed25519Signer::FromPem(pem, "k.pem");
  auto verifier = crypto::Ed25519Verifier::FromPem(pem, "k.pem");
  ASSERT_TRUE(signer.ok() && verifier.ok());
  CoreConfig c;
  c.max_inline_bytes = 1024;
  PreflightCore signing(c, blobs_.get(), verdicts_.get(), &runner_, metrics_.get(), signer->get());
  // The stored verdict is unsigned: it is run again, so it comes back signed.
  auto first = signing.Check(req, Deadline());
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(runner_.runs, 2);
  EXPECT_FALSE(first->cached());
  EXPECT_EQ(first->signing_key_id(), (*signer)->key_id());
  EXPECT_TRUE(crypto::VerifyVerdict(**verifier, first->report().SerializeAsString(),
                                    first->report_signature(), first->signing_key_id())
                  .ok());
  // Now a repeat is a cache hit carrying the stored signature; GetVerdict too.
  auto again = signing.Check(req, Deadline());
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->cached());
  EXPECT_EQ(runner_.runs, 2);
  EXPECT_EQ(again->report_signature(), first->report_signature());
  v1::GetVerdictRequest g;
  g.set_job_id("tenant-a/run-1");
  auto read = signing.GetVerdict(g);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->report_signature(), first->report_signature());
  EXPECT_EQ(read->signing_key_id(), (*signer)->key_id());
  EXPECT_TRUE(crypto::VerifyVerdict(**verifier, read->report().SerializeAsString(),
                                    read->report_signature(), read->signing_key_id())
                  .ok());
}

}  // namespace
}  // namespace preflight::server
