// The pool's start-up contract with its zygote.
#include "service/worker/worker_pool.h"

#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <functional>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/time/clock.h"

namespace preflight::worker {
namespace {

using ::testing::HasSubstr;

TEST(WorkerPool, RefusesAWorkerWhoseSandboxProbeFailed) {
  WorkerPoolConfig config;
  config.worker_binary = PREFLIGHT_FAKE_WORKER;
  config.start_timeout = absl::Seconds(30);
  auto pool = WorkerPool::Start(config);
  ASSERT_FALSE(pool.ok());
  EXPECT_EQ(pool.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(pool.status().message(), HasSubstr("cannot be applied on this host"));
  EXPECT_THAT(pool.status().message(), HasSubstr("landlock_restrict_self"));
}

TEST(WorkerPool, RealWorkerPassesItsProbe) {
  WorkerPoolConfig config;
  config.worker_binary = PREFLIGHT_WORKER_BINARY;
  auto pool = WorkerPool::Start(config);
  ASSERT_TRUE(pool.ok()) << pool.status();
  EXPECT_GT((*pool)->zygote_pid(), 0);
}

// A temporary file holding `content`, opened read-only and unlinked: the
// descriptor is all the worker gets.
util::UniqueFd FileWith(const std::string& content) {
  char path[] = "/tmp/preflight-pool-test-XXXXXX";
  util::UniqueFd fd(mkstemp(path));
  EXPECT_TRUE(fd.valid());
  EXPECT_EQ(write(fd.get(), content.data(), content.size()), static_cast<ssize_t>(content.size()));
  unlink(path);
  return fd;
}

std::unique_ptr<WorkerPool> FakePool(const char* mode) {
  setenv("PREFLIGHT_FAKE_WORKER_MODE", mode, 1);
  WorkerPoolConfig config;
  config.worker_binary = PREFLIGHT_FAKE_WORKER;
  auto pool = WorkerPool::Start(config);
  unsetenv("PREFLIGHT_FAKE_WORKER_MODE");
  EXPECT_TRUE(pool.ok()) << pool.status();
  return pool.ok() ? *std::move(pool) : nullptr;
}

TEST(WorkerPool, JobReachesTheWorkerWithItsInputDescriptors) {
  auto pool = FakePool("echo");
  ASSERT_NE(pool, nullptr);
  v1::WorkerJob job;
  job.mutable_config()->set_timeout_seconds(5);
  const v1::WorkerResult r =
      pool->Run(job, {FileWith("model bytes"), FileWith("batch bytes")}, nullptr);
  ASSERT_EQ(r.report().findings_size(), 1);
  EXPECT_EQ(r.report().findings(0).message(), "model bytes|batch bytes");
}

TEST(WorkerPool, JobWithoutItsInputsNeverReachesTheWorker) {
  auto pool = FakePool("echo");
  ASSERT_NE(pool, nullptr);
  const v1::WorkerResult r = pool->Run(v1::WorkerJob(), {}, nullptr);
  ASSERT_EQ(r.report().findings_size(), 1);
  EXPECT_EQ(r.report().findings(0).code(), v1::WORKER_CRASHED);
  EXPECT_THAT(r.report().findings(0).message(), HasSubstr("inputs are not open"));
  EXPECT_EQ(r.report().completion(), v1::COMPLETION_TRANSIENT);
}

TEST(WorkerPool, AbandonedJobIsCancelledInTheWorker) {
  auto pool = FakePool("hold");
  ASSERT_NE(pool, nullptr);
  v1::WorkerJob job;
  job.mutable_config()->set_timeout_seconds(5);  // Backstop 35 s bounds a failure.
  std::atomic<int> asked{0};
  const absl::Time start = absl::Now();
  const v1::WorkerResult r =
      pool->Run(job, {FileWith("m"), FileWith("b")}, [&] { return ++asked >= 2; });
  EXPECT_EQ(r.exit_reason(), "cancelled");
  EXPECT_GE(asked.load(), 2);
  EXPECT_LT(absl::Now() - start, absl::Seconds(30)) << "answered by the cancel, not the backstop";
}

bool Eventually(const std::function<bool()>& cond, absl::Duration within) {
  const absl::Time end = absl::Now() + within;
  while (!cond()) {
    if (absl::Now() > end) return false;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return true;
}

// Gone: no such process, or a zombie nobody has reaped yet.
bool ProcessGone(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return true;
  const size_t paren = line.rfind(')');
  return paren != std::string::npos && paren + 2 < line.size() && line[paren + 2] == 'Z';
}

// Issue 15: a SIGSTOPped zygote used to go unnoticed (its checks waited for
// the backstop, timeout + 30 s, then INTERNAL_ERROR). The heartbeat finds it
// within its timeout, kills it, fails its job as WORKER_CRASHED and starts a
// replacement that runs the next job.
TEST(WorkerPool, StoppedZygoteIsKilledAndReplacedWithinTheHeartbeat) {
  // Set throughout: the replacement zygote reads it too.
  setenv("PREFLIGHT_FAKE_WORKER_MODE", "hold", 1);
  WorkerPoolConfig config;
  config.worker_binary = PREFLIGHT_FAKE_WORKER;
  config.heartbeat_timeout = absl::Seconds(1);
  std::atomic<int> downs{0}, ups{0};
  config.on_down = [&] {
    EXPECT_EQ(ups.load(), downs.load()) << "down twice without a restart";
    ++downs;
  };
  config.on_restart = [&] { ++ups; };
  auto started = WorkerPool::Start(config);
  ASSERT_TRUE(started.ok()) << started.status();
  std::unique_ptr<WorkerPool> pool = *std::move(started);
  const int first = pool->zygote_pid();

  // A live zygote answers the pings: three timeouts pass without a restart.
  absl::SleepFor(absl::Seconds(3));
  EXPECT_EQ(pool->zygote_restarts(), 0);
  EXPECT_EQ(pool->zygote_pid(), first);

  v1::WorkerJob job;
  job.mutable_config()->set_timeout_seconds(60);  // Backstop 90 s: far past the bound.
  v1::WorkerResult r;
  std::thread caller([&] { r = pool->Run(job, {FileWith("m"), FileWith("b")}, nullptr); });
  absl::SleepFor(absl::Milliseconds(200));  // The job reaches the (holding) zygote.
  ASSERT_EQ(kill(first, SIGSTOP), 0);
  const absl::Time stopped = absl::Now();
  caller.join();
  const absl::Duration waited = absl::Now() - stopped;
  // Found once it has been silent for the timeout: its last answer came at
  // most one ping interval (0.2 s) before the stop.
  EXPECT_GE(waited, absl::Milliseconds(700));
  EXPECT_LT(waited, absl::Seconds(4)) << "not found by the heartbeat";
  EXPECT_EQ(r.report().verdict(), v1::ERROR);
  ASSERT_EQ(r.report().findings_size(), 1);
  EXPECT_EQ(r.report().findings(0).code(), v1::WORKER_CRASHED);
  EXPECT_THAT(r.report().findings(0).message(), HasSubstr("stopped answering"));
  EXPECT_EQ(r.report().completion(), v1::COMPLETION_TRANSIENT);

  ASSERT_TRUE(Eventually([&] { return ups.load() == 1; }, absl::Seconds(30)));
  EXPECT_EQ(downs.load(), 1);
  EXPECT_EQ(pool->zygote_restarts(), 1);
  EXPECT_NE(pool->zygote_pid(), first);
  EXPECT_TRUE(ProcessGone(first)) << "the stopped zygote was not killed";

  // The replacement serves the next job (answered by its cancel).
  std::atomic<int> asked{0};
  const v1::WorkerResult next =
      pool->Run(job, {FileWith("m"), FileWith("b")}, [&] { return ++asked >= 2; });
  EXPECT_EQ(next.exit_reason(), "cancelled");
  pool.reset();
  unsetenv("PREFLIGHT_FAKE_WORKER_MODE");
  EXPECT_EQ(downs.load(), 1);
}

TEST(WorkerPool, MissingBinaryIsAClearError) {
  WorkerPoolConfig config;
  config.worker_binary = "/nonexistent/preflight-worker";
  auto pool = WorkerPool::Start(config);
  ASSERT_FALSE(pool.ok());
  EXPECT_THAT(pool.status().message(), HasSubstr("is not executable"));
}

}  // namespace
}  // namespace preflight::worker
