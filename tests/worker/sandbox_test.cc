// Each sandbox layer against a real attempt to do what it forbids, in a
// forked child (the sandbox is irreversible).
#include "service/worker/sandbox.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <functional>
#include <system_error>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace preflight::worker {
namespace {

// Runs `attempt` in a sandboxed child; returns the wait status.
int InSandbox(const std::function<int()>& attempt, SandboxPolicy policy = {}, bool enter = true) {
  const pid_t pid = fork();
  if (pid == 0) {
    if (enter && !EnterSandbox(policy, nullptr).ok()) _exit(99);
    _exit(attempt());
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return status;
}

bool KilledBySeccomp(int status) { return WIFSIGNALED(status) && WTERMSIG(status) == SIGSYS; }

TEST(Sandbox, AllowsOrdinaryWork) {
  const int s = InSandbox([] {
    void* p = malloc(1 << 20);
    return p != nullptr ? 0 : 1;
  });
  ASSERT_TRUE(WIFEXITED(s));
  EXPECT_EQ(WEXITSTATUS(s), 0);
}

TEST(Sandbox, SeccompKillsNetworkSockets) {
  EXPECT_TRUE(
      KilledBySeccomp(InSandbox([] { return socket(AF_INET, SOCK_STREAM, 0) >= 0 ? 0 : 1; })));
  EXPECT_TRUE(
      KilledBySeccomp(InSandbox([] { return socket(AF_INET6, SOCK_DGRAM, 0) >= 0 ? 0 : 1; })));
}

TEST(Sandbox, SeccompKillsExecAndFork) {
  EXPECT_TRUE(KilledBySeccomp(InSandbox([] {
    const char* argv[] = {"/bin/true", nullptr};
    execv(argv[0], const_cast<char* const*>(argv));
    return 1;
  })));
  // glibc's fork() is clone(SIGCHLD): no CLONE_THREAD, so it is a new process.
  EXPECT_TRUE(KilledBySeccomp(InSandbox([] { return fork() >= 0 ? 0 : 1; })));
}

TEST(Sandbox, SeccompKillsUnixDatagramSockets) {
  EXPECT_TRUE(KilledBySeccomp(
      InSandbox([] { return socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0) >= 0 ? 0 : 1; })));
  const int s = InSandbox([] {
    int sv[2];
    return socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0 ? 0 : 1;
  });
  ASSERT_TRUE(WIFEXITED(s));
  EXPECT_EQ(WEXITSTATUS(s), 0) << "a socketpair reaches nothing outside the job";
}

TEST(Sandbox, SeccompKillsMetadataAndHostWideCalls) {
  char path[] = "/tmp/preflight-sandbox-meta-XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  close(fd);
  const std::string file = path;
  // Landlock does not cover chmod/chown: a root job could open up any file.
  EXPECT_TRUE(KilledBySeccomp(InSandbox([&] { return chmod(file.c_str(), 0777) == 0 ? 0 : 1; })));
  EXPECT_TRUE(KilledBySeccomp(InSandbox([&] { return chown(file.c_str(), 0, 0) == 0 ? 0 : 1; })));
  // Wrong magic numbers: reboot(2) would refuse with EINVAL if it got that far.
  EXPECT_TRUE(KilledBySeccomp(
      InSandbox([] { return syscall(SYS_reboot, 0, 0, 0, nullptr) == 0 ? 0 : 1; })));
  EXPECT_TRUE(KilledBySeccomp(
      InSandbox([] { return syscall(SYS_perf_event_open, nullptr, 0, -1, -1, 0) >= 0 ? 0 : 1; })));
  struct stat st {};
  ASSERT_EQ(stat(file.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600) << "the file's mode is untouched";
  unlink(path);
}

TEST(Sandbox, SeccompKillsIoUring) {
  // io_uring would perform opens, sockets and connects the filter never sees.
  EXPECT_TRUE(KilledBySeccomp(InSandbox([] {
    char params[120] = {};  // struct io_uring_params
    return syscall(SYS_io_uring_setup, 4, params) >= 0 ? 0 : 1;
  })));
}

TEST(Sandbox, SignalsOnlyToItself) {
  // The parent stands in for the zygote, the server or another job.
  EXPECT_TRUE(KilledBySeccomp(InSandbox([] { return kill(getppid(), 0) == 0 ? 0 : 1; })));
  EXPECT_TRUE(KilledBySeccomp(
      InSandbox([] { return syscall(SYS_tgkill, getppid(), getppid(), 0) == 0 ? 0 : 1; })));
  int s = InSandbox([] { return kill(getpid(), 0) == 0 ? 0 : 1; });
  ASSERT_TRUE(WIFEXITED(s));
  EXPECT_EQ(WEXITSTATUS(s), 0) << "signalling itself stays allowed";
  s = InSandbox([] {
    abort();
    return 0;
  });
  ASSERT_TRUE(WIFSIGNALED(s));
  EXPECT_EQ(WTERMSIG(s), SIGABRT) << "abort() (tgkill to itself) still works";
}

int LandlockAbi() {
  return static_cast<int>(syscall(SYS_landlock_create_ruleset, nullptr, 0, 1 /*VERSION*/));
}

// The Landlock walls behind seccomp, probed with seccomp off.
TEST(Sandbox, LandlockRefusesTcpConnectWithoutSeccomp) {
  if (LandlockAbi() < 4) GTEST_SKIP() << "kernel Landlock ABI < 4 has no network rules";
  const int listener = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(listener, 1), 0);
  socklen_t len = sizeof(addr);
  getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len);
  SandboxPolicy policy;
  policy.seccomp = false;
  const int s = InSandbox(
      [&] {
        const int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) return 2;
        const int rc = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
        return rc != 0 && errno == EACCES ? 0 : 1;
      },
      policy);
  close(listener);
  ASSERT_TRUE(WIFEXITED(s));
  EXPECT_EQ(WEXITSTATUS(s), 0) << "connect to a listening loopback port must be refused";
}

TEST(Sandbox, LandlockScopesSignalsWithoutSeccomp) {
  if (LandlockAbi() < 6) GTEST_SKIP() << "kernel Landlock ABI < 6 has no signal scoping";
  SandboxPolicy policy;
  policy.seccomp = false;
  const int s = InSandbox(
      [] {
        if (kill(getpid(), 0) != 0) return 2;
        return kill(getppid(), 0) != 0 && errno == EPERM ? 0 : 1;
      },
      policy);
  ASSERT_TRUE(WIFEXITED(s));
  EXPECT_EQ(WEXITSTATUS(s), 0) << "signals beyond the job must be refused";
}

TEST(Sandbox, LandlockRefusesFilesOutsideThePolicy) {
  char path[] = "/tmp/preflight-sandbox-test-XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  (void)write(fd, "ok", 2);
  close(fd);
  SandboxPolicy policy;
  policy.readable_files = {path};
  const std::string allowed = path;
  int s = InSandbox([&] { return open(allowed.c_str(), O_RDONLY) >= 0 ? 0 : 1; }, policy);
  ASSERT_TRUE(WIFEXITED(s));
  EXPECT_EQ(WEXITSTATUS(s), 0) << "the job's own input must stay readable";
  s = InSandbox([] { return open("/etc/passwd", O_RDONLY) < 0 && errno == EACCES ? 0 : 1; },
                policy);
  ASSERT_TRUE(WIFEXITED(s));
  EXPECT_EQ(WEXITSTATUS(s), 0) << "reading outside the inputs must be refused";
  s = InSandbox(
      [] { return open("/tmp/preflight-sandbox-new", O_WRONLY | O_CREAT, 0600) < 0 ? 0 : 1; },
      policy);
  ASSERT_TRUE(WIFEXITED(s));
  EXPECT_EQ(WEXITSTATUS(s), 0) << "creating files must be refused";
  unlink(path);
}

TEST(Sandbox, DeviceFilesAreWritableAndNothingElse) {
  char dir[] = "/tmp/preflight-sandbox-dev-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const std::string gpu = std::string(dir) + "/nvidia0";
  const std::string other = std::string(dir) + "/sda";
  for (const auto& f : {gpu, other}) close(open(f.c_str(), O_WRONLY | O_CREAT, 0600));
  SandboxPolicy policy;
  policy.device_files = {gpu};
  int s = InSandbox([&] { return open(gpu.c_str(), O_RDWR) >= 0 ? 0 : 1; }, policy);
  ASSERT_TRUE(WIFEXITED(s));
  EXPECT_EQ(WEXITSTATUS(s), 0) << "a listed device node opens read-write";
  s = InSandbox([&] { return open(other.c_str(), O_RDONLY) < 0 && errno == EACCES ? 0 : 1; },
                policy);
  ASSERT_TRUE(WIFEXITED(s));
  EXPECT_EQ(WEXITSTATUS(s), 0) << "its neighbour stays unreadable";
  unlink(gpu.c_str());
  unlink(other.c_str());
  rmdir(dir);
}

// The task limit is per user: a service running as a non-root user whose
// other processes already have many threads must still start job threads.
TEST(Sandbox, JobThreadsStartWhenTheUserAlreadyRunsManyTasks) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to become an unprivileged user";
  const int s = InSandbox(
      [] {
        // Only this child becomes `nobody` (fork below happens before the sandbox).
        if (setgid(65534) != 0 || setuid(65534) != 0) return 3;
        for (int i = 0; i < 150; ++i) {  // The server's and other jobs' tasks.
          const pid_t pid = fork();
          if (pid == 0) {
            // Gone on their own: the sandboxed test may not signal them.
            close(STDOUT_FILENO);
            close(STDERR_FILENO);
            alarm(10);
            pause();
            _exit(0);
          }
          if (pid < 0) return 4;
        }
        int rc = 0;
        if (!EnterSandbox(SandboxPolicy{}, nullptr).ok()) {
          rc = 5;
        } else {
          try {
            std::thread([] {}).join();
          } catch (const std::system_error&) {
            rc = 6;  // EAGAIN from the user's task limit.
          }
        }
        return rc;
      },
      SandboxPolicy{}, /*enter=*/false);
  ASSERT_TRUE(WIFEXITED(s)) << "signal " << WTERMSIG(s);
  EXPECT_EQ(WEXITSTATUS(s), 0);
}

TEST(Sandbox, AddressSpaceLimitRefusesHugeAllocations) {
  SandboxPolicy policy;
  policy.address_space_bytes = int64_t{1} << 30;
  const int s = InSandbox([] { return malloc(size_t{4} << 30) == nullptr ? 0 : 1; }, policy);
  ASSERT_TRUE(WIFEXITED(s));
  EXPECT_EQ(WEXITSTATUS(s), 0);
}

// 64 KiB a frame, never a tail call: 1000 levels need ~64 MiB of stack.
int Recurse(int depth) {
  volatile char frame[64 << 10];
  frame[0] = static_cast<char>(depth);
  if (depth == 0) return frame[0];
  return Recurse(depth - 1) + frame[0];
}

TEST(Sandbox, StackLimitEndsRunawayRecursionWithSigsegv) {
  SandboxPolicy policy;
  policy.stack_bytes = 1 << 20;
  const int s = InSandbox([] { return Recurse(1000) == 12345 ? 2 : 0; }, policy);
  ASSERT_TRUE(WIFSIGNALED(s)) << "exited with " << WEXITSTATUS(s);
  EXPECT_EQ(WTERMSIG(s), SIGSEGV);
}

TEST(Sandbox, CpuLimitSendsSigxcpuBeforeSigkill) {
  SandboxPolicy policy;
  policy.cpu_seconds = 1;
  const int s = InSandbox(
      [] {
        volatile uint64_t n = 0;
        for (;;) n = n + 1;
        return 0;
      },
      policy);
  ASSERT_TRUE(WIFSIGNALED(s));
  EXPECT_EQ(WTERMSIG(s), SIGXCPU) << "SIGXCPU is reported as a timeout, SIGKILL as a crash";
}

}  // namespace
}  // namespace preflight::worker
