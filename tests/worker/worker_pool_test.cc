// The pool's start-up contract with its zygote.
#include "service/worker/worker_pool.h"

#include <stdlib.h>
#include <unistd.h>

#include <atomic>

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

TEST(WorkerPool, MissingBinaryIsAClearError) {
  WorkerPoolConfig config;
  config.worker_binary = "/nonexistent/preflight-worker";
  auto pool = WorkerPool::Start(config);
  ASSERT_FALSE(pool.ok());
  EXPECT_THAT(pool.status().message(), HasSubstr("is not executable"));
}

}  // namespace
}  // namespace preflight::worker
