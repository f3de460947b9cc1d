// Test-only TorchScript operators that stand in for a model that has reached
// native code (through a memory-safety bug in an op or in the loader, as the
// zoo's `hostile_segfault` shows exist). TorchScript itself has no operator
// that forks, execs or opens a network socket (every one of LibTorch 2.15's
// 4415 op schemas and 20 custom classes was checked), so these are the only
// way to drive those sandbox layers from a real model file.
//
// Linked ONLY into `preflight-worker-hostile` (tests/CMakeLists.txt): the same
// zygote as production plus these registrations. Each op does the forbidden
// thing for real; if the sandbox lets it through, the op returns its input
// unchanged, the check runs to a verdict, and the e2e test fails.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>

#include <ATen/core/Tensor.h>
#include <torch/library.h>

namespace {

// A network socket, then a connect to a local port: the first step of any
// exfiltration. seccomp kills the process at socket(AF_INET).
at::Tensor InetSocket(const at::Tensor& x) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd >= 0) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(9);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    (void)connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    close(fd);
  }
  return x;
}

// A fork bomb, capped at 256 processes so a broken sandbox cannot take the
// test machine down: the children wait to be killed with the job's process
// group. seccomp kills the process at the first fork.
at::Tensor ForkBomb(const at::Tensor& x) {
  for (int i = 0; i < 256; ++i) {
    const pid_t pid = fork();
    if (pid == 0) {
      for (;;) pause();
    }
    if (pid < 0) break;
  }
  return x;
}

// Runs a shell that would leave a file behind. seccomp kills at execve.
at::Tensor ExecShell(const at::Tensor& x) {
  execl("/bin/sh", "sh", "-c", "echo pwned > /tmp/preflight-hostile-exec", nullptr);
  return x;
}

// A native abort (an assertion in a C library, a double free detected by
// malloc): the job dies with SIGABRT.
at::Tensor Abort(const at::Tensor& x) {
  std::abort();
  return x;
}

// Kills its parent, the zygote (and with it every other running job). The
// server would restart it; the sandbox must not let it happen at all.
at::Tensor KillZygote(const at::Tensor& x) {
  kill(getppid(), SIGKILL);
  return x;
}

// Sets up an io_uring, through which opens, sockets and connects would run
// without the syscalls seccomp inspects.
at::Tensor IoUring(const at::Tensor& x) {
  char params[120] = {};  // struct io_uring_params
  const long fd = syscall(SYS_io_uring_setup, 4, params);
  if (fd >= 0) close(static_cast<int>(fd));
  return x;
}

}  // namespace

TORCH_LIBRARY(preflight_hostile, m) {
  m.def("kill_zygote(Tensor x) -> Tensor", &KillZygote);
  m.def("io_uring(Tensor x) -> Tensor", &IoUring);
  m.def("inet_socket(Tensor x) -> Tensor", &InetSocket);
  m.def("fork_bomb(Tensor x) -> Tensor", &ForkBomb);
  m.def("exec_shell(Tensor x) -> Tensor", &ExecShell);
  m.def("abort(Tensor x) -> Tensor", &Abort);
}
