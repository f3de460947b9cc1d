// The pool's start-up contract with its zygote.
#include "service/worker/worker_pool.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

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

TEST(WorkerPool, MissingBinaryIsAClearError) {
  WorkerPoolConfig config;
  config.worker_binary = "/nonexistent/preflight-worker";
  auto pool = WorkerPool::Start(config);
  ASSERT_FALSE(pool.ok());
  EXPECT_THAT(pool.status().message(), HasSubstr("is not executable"));
}

}  // namespace
}  // namespace preflight::worker
