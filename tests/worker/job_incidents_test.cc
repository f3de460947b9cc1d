// The recorder in a real child: nothing before it is armed; after, a file
// open the sandbox (Landlock) refuses and failed allocations are recorded by
// errno and call, not by message.
#include "service/worker/job_incidents.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <new>
#include <stdexcept>

#include <gtest/gtest.h>

#include "service/worker/child_process.h"
#include "service/worker/sandbox.h"

namespace preflight::worker {
namespace {

v1::JobRecord InChild(const std::function<void(int result_fd)>& body) {
  const ChildOutcome o = RunInChild(
      [&](int result_fd) {
        body(result_fd);
        v1::JobRecord record;
        TakeIncidents(&record);
        return record.SerializeAsString();
      },
      absl::Seconds(30));
  EXPECT_EQ(o.status, ChildStatus::kOk) << o.error;
  v1::JobRecord record;
  EXPECT_TRUE(record.ParseFromString(o.payload));
  return record;
}

void* volatile g_sink;

// Enters the job sandbox but for seccomp (the probes below are plain file
// opens); Landlock's ABI, 0 when the kernel has none or entering failed.
int EnterLandlockOnly(int result_fd) {
  SandboxPolicy policy;
  policy.readable_dirs = LoadedLibraryDirs();
  policy.keep_fd = result_fd;
  policy.seccomp = false;
  int abi = 0;
  const absl::Status s = EnterSandbox(policy, &abi);
  EXPECT_TRUE(s.ok()) << s;
  return s.ok() ? abi : 0;
}

TEST(JobIncidents, NothingIsRecordedBeforeArming) {
  const v1::JobRecord r = InChild([](int) {
    void* p = nullptr;
    EXPECT_EQ(posix_memalign(&p, 64, size_t{1} << 60), ENOMEM);
    EXPECT_LT(open("/nonexistent/preflight", O_RDONLY), 0);
  });
  EXPECT_EQ(r.incidents_size(), 0);
}

TEST(JobIncidents, FailedAllocationsAreRecordedWithTheirSize) {
  const v1::JobRecord r = InChild([](int) {
    ArmIncidentRecording();
    void* p = nullptr;
    EXPECT_EQ(posix_memalign(&p, 64, size_t{1} << 60), ENOMEM);
    volatile size_t huge = size_t{1} << 60;
    try {
      g_sink = ::operator new(huge);
    } catch (const std::bad_alloc&) {
    }
  });
  ASSERT_EQ(r.incidents_size(), 2);
  EXPECT_EQ(r.incidents(0).kind(), v1::JobIncident::ALLOCATION_FAILED);
  EXPECT_EQ(r.incidents(0).call(), "posix_memalign");
  EXPECT_EQ(r.incidents(0).bytes(), int64_t{1} << 60);
  EXPECT_EQ(r.incidents(0).errno_value(), ENOMEM);
  EXPECT_FALSE(r.incidents(0).raised()) << "the caller only looked at the return value";
  EXPECT_EQ(r.incidents(1).kind(), v1::JobIncident::ALLOCATION_FAILED);
  EXPECT_EQ(r.incidents(1).call(), "operator new");
  EXPECT_TRUE(r.incidents(1).raised()) << "operator new threw std::bad_alloc";
}

TEST(JobIncidents, OpensTheSandboxRefusesAreRecordedOthersAreNot) {
  const v1::JobRecord r = InChild([](int result_fd) {
    if (EnterLandlockOnly(result_fd) == 0) GTEST_SKIP() << "no Landlock on this kernel";
    ArmIncidentRecording();
    EXPECT_LT(open("/nonexistent/preflight", O_RDONLY), 0);  // ENOENT: not the sandbox.
    const int fd = open("/etc/passwd", O_RDONLY);
    EXPECT_LT(fd, 0);
    EXPECT_EQ(errno, EACCES) << "errno is preserved for the caller";
    // A refusal the code tolerates, then one that stops it with a throw.
    EXPECT_EQ(fopen("/etc/hostname", "r"), nullptr);
    try {
      if (openat(AT_FDCWD, "/tmp/preflight-planted", O_WRONLY | O_CREAT, 0600) < 0) {
        throw std::runtime_error("cannot open");
      }
    } catch (const std::runtime_error&) {
    }
    // A throw after a successful call marks nothing.
    void* p = nullptr;
    EXPECT_EQ(posix_memalign(&p, 64, 64), 0);
    try {
      throw std::runtime_error("unrelated");
    } catch (const std::runtime_error&) {
    }
  });
  ASSERT_EQ(r.incidents_size(), 3);
  EXPECT_EQ(r.incidents(0).kind(), v1::JobIncident::FILE_ACCESS_DENIED);
  EXPECT_EQ(r.incidents(0).path(), "/etc/passwd");
  EXPECT_EQ(r.incidents(0).errno_value(), EACCES);
  EXPECT_EQ(r.incidents(1).path(), "/etc/hostname");
  EXPECT_EQ(r.incidents(1).call(), "fopen");
  EXPECT_EQ(r.incidents(2).path(), "/tmp/preflight-planted");
  EXPECT_EQ(r.incidents(2).call(), "openat");
  EXPECT_FALSE(r.incidents(0).raised());
  EXPECT_FALSE(r.incidents(1).raised());
  EXPECT_TRUE(r.incidents(2).raised());
  EXPECT_FALSE(r.incidents(0).write());
  EXPECT_FALSE(r.incidents(1).write());
  EXPECT_TRUE(r.incidents(2).write()) << "O_WRONLY | O_CREAT";
}

// How a refused open's intent is read: any open that could change a file.
TEST(JobIncidents, RefusedOpensSayWhetherTheyAskedToWrite) {
  const v1::JobRecord r = InChild([](int result_fd) {
    if (EnterLandlockOnly(result_fd) == 0) GTEST_SKIP() << "no Landlock on this kernel";
    ArmIncidentRecording();
    EXPECT_LT(open("/etc/passwd", O_RDWR), 0);
    EXPECT_LT(open("/etc/passwd", O_RDONLY | O_TRUNC), 0);
    EXPECT_EQ(fopen("/tmp/preflight-planted", "wb"), nullptr);
    EXPECT_EQ(fopen("/etc/passwd", "r+"), nullptr);
    EXPECT_EQ(fopen("/etc/passwd", "rb"), nullptr);
  });
  ASSERT_EQ(r.incidents_size(), 5);
  EXPECT_TRUE(r.incidents(0).write()) << "O_RDWR";
  EXPECT_TRUE(r.incidents(1).write()) << "O_TRUNC";
  EXPECT_TRUE(r.incidents(2).write()) << "fopen wb";
  EXPECT_TRUE(r.incidents(3).write()) << "fopen r+";
  EXPECT_FALSE(r.incidents(4).write()) << "fopen rb";
}

TEST(JobIncidents, ExtraIncidentsAreCountedNotKept) {
  const v1::JobRecord r = InChild([](int) {
    ArmIncidentRecording();
    for (int i = 0; i < 40; ++i) {
      void* p = nullptr;
      (void)posix_memalign(&p, 64, size_t{1} << 60);
    }
  });
  EXPECT_EQ(r.incidents_size(), 32);
  EXPECT_EQ(r.incidents_dropped(), 8);
}

}  // namespace
}  // namespace preflight::worker
