#include "service/worker/child_process.h"

#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <stdexcept>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace preflight::worker {
namespace {

using ::testing::HasSubstr;

v1::CheckConfig Config() {
  v1::CheckConfig c;
  c.set_timeout_seconds(1);
  return c;
}

TEST(RunInChild, ReturnsPayload) {
  const std::string big(3 << 20, 'x');  // Larger than a pipe buffer.
  auto o = RunInChild([&] { return big; }, absl::Seconds(30));
  ASSERT_EQ(o.status, ChildStatus::kOk) << o.error;
  EXPECT_EQ(o.payload, big);
}

TEST(RunInChild, BodyMayCloseEveryDescriptorButItsResultFd) {
  // What a sandbox does before the result is sent.
  const ChildOutcome o = RunInChild(
      [](int result_fd) {
        for (int fd = 0; fd < 1024; ++fd) {
          if (fd != result_fd) close(fd);
        }
        return std::string("still delivered");
      },
      absl::Seconds(30));
  ASSERT_EQ(o.status, ChildStatus::kOk) << o.error;
  EXPECT_EQ(o.payload, "still delivered");
}

TEST(UsableCpus, AtLeastOneAndAtMostTheMachine) {
  EXPECT_GE(UsableCpus(), 1);
  EXPECT_LE(UsableCpus(), static_cast<int>(sysconf(_SC_NPROCESSORS_CONF)));
}

TEST(RunInChild, KillsAtDeadline) {
  auto o = RunInChild(
      [] {
        for (;;) pause();
        return std::string();
      },
      absl::Milliseconds(300));
  EXPECT_EQ(o.status, ChildStatus::kTimeout);
  const v1::Report r = ReportFromOutcome(o, Config());
  EXPECT_EQ(r.verdict(), v1::ERROR);
  ASSERT_EQ(r.findings_size(), 1);
  EXPECT_EQ(r.findings(0).code(), v1::WORKER_TIMEOUT);
}

TEST(RunInChild, KillsGrandchildrenWithTheGroup) {
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  auto o = RunInChild(
      [&] {
        if (fork() == 0) {  // A grandchild that would outlive a plain kill.
          for (;;) pause();
        }
        for (;;) pause();
        return std::string();
      },
      absl::Milliseconds(300));
  close(fds[1]);
  EXPECT_EQ(o.status, ChildStatus::kTimeout);
  // Every process holding the pipe's write end is gone: read sees EOF.
  char c;
  EXPECT_EQ(read(fds[0], &c, 1), 0);
  close(fds[0]);
}

TEST(RunInChild, ReportsCrashSignal) {
  auto o = RunInChild(
      [] {
        raise(SIGSEGV);
        return std::string("unreachable");
      },
      absl::Seconds(30));
  EXPECT_EQ(o.status, ChildStatus::kSignaled);
  EXPECT_EQ(o.signal, SIGSEGV);
  const v1::Report r = ReportFromOutcome(o, Config());
  ASSERT_EQ(r.findings_size(), 1);
  EXPECT_EQ(r.findings(0).code(), v1::WORKER_CRASHED);
  EXPECT_THAT(r.findings(0).message(), HasSubstr("SIGSEGV"));
}

TEST(RunInChild, ReportsAbort) {
  auto o = RunInChild(
      [] {
        std::abort();
        return std::string();
      },
      absl::Seconds(30));
  EXPECT_EQ(o.status, ChildStatus::kSignaled);
  EXPECT_EQ(o.signal, SIGABRT);
}

TEST(RunInChild, ReportsExceptionMessage) {
  auto o = RunInChild([]() -> std::string { throw std::runtime_error("engine broke"); },
                      absl::Seconds(30));
  EXPECT_EQ(o.status, ChildStatus::kExited);
  EXPECT_EQ(o.error, "engine broke");
  const v1::Report r = ReportFromOutcome(o, Config());
  EXPECT_EQ(r.findings(0).code(), v1::WORKER_CRASHED);
  EXPECT_THAT(r.findings(0).message(), HasSubstr("engine broke"));
}

TEST(RunInChild, ExitWithoutPayloadIsCrash) {
  auto o = RunInChild(
      [] {
        _exit(5);
        return std::string();
      },
      absl::Seconds(30));
  EXPECT_EQ(o.status, ChildStatus::kExited);
  EXPECT_EQ(o.exit_code, 5);
}

TEST(ReportFromOutcome, PassesThroughTheChildsReport) {
  v1::Report child;
  child.set_verdict(v1::WARN);
  ChildOutcome o;
  o.status = ChildStatus::kOk;
  o.payload = child.SerializeAsString();
  o.seconds = 1.5;
  const v1::Report r = ReportFromOutcome(o, Config());
  EXPECT_EQ(r.verdict(), v1::WARN);
  EXPECT_DOUBLE_EQ(r.timing().worker_seconds(), 1.5);
}

TEST(ReportFromOutcome, UndecodablePayloadIsInternalError) {
  ChildOutcome o;
  o.status = ChildStatus::kOk;
  o.payload = "\xff\xff\xff not a proto";
  const v1::Report r = ReportFromOutcome(o, Config());
  EXPECT_EQ(r.verdict(), v1::ERROR);
  EXPECT_EQ(r.findings(0).code(), v1::INTERNAL_ERROR);
}

}  // namespace
}  // namespace preflight::worker
