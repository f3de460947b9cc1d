#include "service/worker/sandbox.h"

#include <fcntl.h>
#include <link.h>
#include <linux/landlock.h>
#include <sched.h>
#include <seccomp.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"

#ifndef LANDLOCK_ACCESS_FS_TRUNCATE
#define LANDLOCK_ACCESS_FS_TRUNCATE (1ULL << 14)
#endif
// Newer than Debian bookworm's kernel headers (values from the kernel UAPI).
constexpr uint64_t kLandlockFsIoctlDev = 1ULL << 15;        // ABI 5.
constexpr uint64_t kLandlockNetBindTcp = 1ULL << 0;         // ABI 4.
constexpr uint64_t kLandlockNetConnectTcp = 1ULL << 1;      // ABI 4.
constexpr uint64_t kLandlockScopeAbstractUnix = 1ULL << 0;  // ABI 6.
constexpr uint64_t kLandlockScopeSignal = 1ULL << 1;        // ABI 6.

namespace preflight::worker {
namespace {

absl::Status Errno(const std::string& what) {
  return absl::InternalError(absl::StrCat("sandbox: ", what, ": ", std::strerror(errno)));
}

absl::Status SetLimit(int resource, int64_t value, const char* name, int64_t hard = -1) {
  rlimit rl{static_cast<rlim_t>(value), static_cast<rlim_t>(hard < 0 ? value : hard)};
  if (setrlimit(resource, &rl) != 0) return Errno(absl::StrCat("setrlimit ", name));
  return absl::OkStatus();
}

absl::Status CloseInheritedFds(int keep_fd) {
  const int lo = 3;
  auto close_range_sys = [](unsigned a, unsigned b) {
    return static_cast<int>(syscall(SYS_close_range, a, b, 0));
  };
  if (keep_fd < lo) return close_range_sys(lo, ~0U) == 0 ? absl::OkStatus() : Errno("close_range");
  if (keep_fd > lo && close_range_sys(lo, keep_fd - 1) != 0) return Errno("close_range");
  if (close_range_sys(keep_fd + 1, ~0U) != 0) return Errno("close_range");
  return absl::OkStatus();
}

int LandlockAbi() {
  const long abi =
      syscall(SYS_landlock_create_ruleset, nullptr, 0, LANDLOCK_CREATE_RULESET_VERSION);
  return abi < 0 ? 0 : static_cast<int>(abi);
}

absl::Status AddPathRule(int ruleset, const std::string& path, uint64_t access) {
  const int fd = open(path.c_str(), O_PATH | O_CLOEXEC);
  if (fd < 0) return absl::OkStatus();  // Absent paths need no rule.
  landlock_path_beneath_attr attr{};
  attr.parent_fd = fd;
  attr.allowed_access = access;
  const long rc = syscall(SYS_landlock_add_rule, ruleset, LANDLOCK_RULE_PATH_BENEATH, &attr, 0);
  const int err = errno;
  close(fd);
  if (rc != 0) {
    errno = err;
    return Errno(absl::StrCat("landlock rule for ", path));
  }
  return absl::OkStatus();
}

absl::Status ApplyLandlock(const SandboxPolicy& p, int abi) {
  uint64_t handled = (1ULL << 13) - 1;  // ABI 1: every filesystem right.
  if (abi >= 2) handled |= LANDLOCK_ACCESS_FS_REFER;
  if (abi >= 3) handled |= LANDLOCK_ACCESS_FS_TRUNCATE;
  if (abi >= 5) handled |= kLandlockFsIoctlDev;
  // The kernel's landlock_ruleset_attr grew by one u64 per feature; pass the
  // prefix this kernel understands.
  struct {
    uint64_t handled_access_fs;
    uint64_t handled_access_net;
    uint64_t scoped;
  } attr{handled, 0, 0};
  size_t attr_size = sizeof(uint64_t);
  if (abi >= 4) {
    // No TCP bind or connect at all (a second wall behind seccomp's socket
    // rule, which io_uring or a filter gap could sidestep).
    attr.handled_access_net = kLandlockNetBindTcp | kLandlockNetConnectTcp;
    attr_size = 2 * sizeof(uint64_t);
  }
  if (abi >= 6) {
    // No signals to, and no abstract Unix sockets of, processes outside this
    // job: the server, the zygote, other jobs.
    attr.scoped = kLandlockScopeAbstractUnix | kLandlockScopeSignal;
    attr_size = 3 * sizeof(uint64_t);
  }
  const int ruleset = static_cast<int>(syscall(SYS_landlock_create_ruleset, &attr, attr_size, 0));
  if (ruleset < 0) return Errno("landlock_create_ruleset");
  const uint64_t read_file = LANDLOCK_ACCESS_FS_READ_FILE;
  const uint64_t read_dir =
      LANDLOCK_ACCESS_FS_READ_FILE | LANDLOCK_ACCESS_FS_READ_DIR | LANDLOCK_ACCESS_FS_EXECUTE;
  absl::Status s;
  for (const auto& f : p.readable_files) {
    if (s.ok()) s = AddPathRule(ruleset, f, read_file);
  }
  for (const auto& d : p.readable_dirs) {
    if (s.ok()) s = AddPathRule(ruleset, d, read_dir);
  }
  const uint64_t device = read_file | LANDLOCK_ACCESS_FS_WRITE_FILE |
                          (abi >= 5 ? kLandlockFsIoctlDev : 0);  // The GPU driver's ioctls.
  for (const auto& f : p.device_files) {
    if (s.ok()) s = AddPathRule(ruleset, f, device);
  }
  if (s.ok() && syscall(SYS_landlock_restrict_self, ruleset, 0) != 0) {
    s = Errno("landlock_restrict_self");
  }
  close(ruleset);
  return s;
}

absl::Status ApplySeccomp() {
  scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
  if (ctx == nullptr) return absl::InternalError("sandbox: seccomp_init failed");
  const uint32_t die = SCMP_ACT_KILL_PROCESS;
  int rc = 0;
  auto deny = [&](int nr) {
    if (rc == 0) rc = seccomp_rule_add(ctx, die, nr, 0);
  };
  for (int nr :
       {SCMP_SYS(execve), SCMP_SYS(execveat), SCMP_SYS(ptrace), SCMP_SYS(process_vm_readv),
        SCMP_SYS(process_vm_writev), SCMP_SYS(fork), SCMP_SYS(vfork), SCMP_SYS(connect),
        SCMP_SYS(bind), SCMP_SYS(listen), SCMP_SYS(accept), SCMP_SYS(accept4), SCMP_SYS(mount),
        SCMP_SYS(umount2), SCMP_SYS(setns), SCMP_SYS(unshare), SCMP_SYS(bpf), SCMP_SYS(keyctl),
        SCMP_SYS(add_key), SCMP_SYS(request_key), SCMP_SYS(chroot), SCMP_SYS(pivot_root),
        SCMP_SYS(init_module), SCMP_SYS(finit_module), SCMP_SYS(kexec_load),
        // io_uring performs opens, connects and sockets without the
        // syscalls this filter inspects.
        SCMP_SYS(io_uring_setup), SCMP_SYS(io_uring_enter), SCMP_SYS(io_uring_register),
        // Signals and fds of other processes by pidfd.
        SCMP_SYS(pidfd_send_signal), SCMP_SYS(pidfd_getfd),
        // File metadata: Landlock does not cover it, and a server
        // run as root would let a job chmod or chown any file.
        SCMP_SYS(chmod), SCMP_SYS(fchmod), SCMP_SYS(fchmodat), SCMP_SYS(chown), SCMP_SYS(fchown),
        SCMP_SYS(lchown), SCMP_SYS(fchownat), SCMP_SYS(setxattr), SCMP_SYS(lsetxattr),
        SCMP_SYS(fsetxattr), SCMP_SYS(removexattr), SCMP_SYS(lremovexattr), SCMP_SYS(fremovexattr),
        // Host-wide state a root job could change; kernel attack
        // surface no check needs.
        SCMP_SYS(reboot), SCMP_SYS(swapon), SCMP_SYS(swapoff), SCMP_SYS(settimeofday),
        SCMP_SYS(clock_settime), SCMP_SYS(clock_adjtime), SCMP_SYS(adjtimex), SCMP_SYS(sethostname),
        SCMP_SYS(setdomainname), SCMP_SYS(acct), SCMP_SYS(quotactl), SCMP_SYS(iopl),
        SCMP_SYS(ioperm), SCMP_SYS(perf_event_open), SCMP_SYS(userfaultfd)}) {
    deny(nr);
  }
  // Signals only to itself (abort() and thread cancellation use tgkill on
  // their own pid): never to the zygote, the server or another job, which
  // run as the same user. Landlock's signal scope adds tkill on kernels with
  // ABI 6. The pid argument is an int: compare its low 32 bits.
  const auto self = static_cast<scmp_datum_t>(static_cast<uint32_t>(getpid()));
  for (int nr :
       {SCMP_SYS(kill), SCMP_SYS(tgkill), SCMP_SYS(rt_sigqueueinfo), SCMP_SYS(rt_tgsigqueueinfo)}) {
    if (rc == 0) rc = seccomp_rule_add(ctx, die, nr, 1, SCMP_A0_32(SCMP_CMP_NE, self));
  }
  // Sockets: only AF_UNIX (LibTorch never needs more; nothing needs it here),
  // and no datagram ones: connect is killed above, but sendto on a datagram
  // socket reaches any named socket the user may write (syslog, journald).
  if (rc == 0) {
    rc = seccomp_rule_add(ctx, die, SCMP_SYS(socket), 1,
                          SCMP_A0(SCMP_CMP_NE, static_cast<scmp_datum_t>(AF_UNIX)));
  }
  if (rc == 0) {
    // The type may carry SOCK_CLOEXEC/SOCK_NONBLOCK above its low 4 bits.
    rc = seccomp_rule_add(ctx, die, SCMP_SYS(socket), 2,
                          SCMP_A0(SCMP_CMP_EQ, static_cast<scmp_datum_t>(AF_UNIX)),
                          SCMP_A1(SCMP_CMP_MASKED_EQ, 0xf, SOCK_DGRAM));
  }
  // New processes: clone without CLONE_THREAD (threads stay allowed).
  if (rc == 0) {
    rc = seccomp_rule_add(ctx, die, SCMP_SYS(clone), 1,
                          SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_THREAD, 0));
  }
  // clone3 passes its flags in memory seccomp cannot read: make glibc fall
  // back to clone, which the rule above inspects.
  if (rc == 0) rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
  if (rc == 0) rc = seccomp_load(ctx);
  seccomp_release(ctx);
  if (rc != 0) return absl::InternalError(absl::StrCat("sandbox: seccomp: ", std::strerror(-rc)));
  return absl::OkStatus();
}

}  // namespace

absl::Status EnterSandbox(const SandboxPolicy& p, int* landlock_abi) {
  if (absl::Status s = CloseInheritedFds(p.keep_fd); !s.ok()) return s;
  // stdio to /dev/null: the server's log may be a regular file, which
  // RLIMIT_FSIZE=0 would turn into SIGXFSZ on the first warning, and a model
  // must not write into the server's logs. Results and errors travel on the
  // result pipe; LibTorch warnings are collected into the report.
  const int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (devnull >= 0) {
    dup2(devnull, STDIN_FILENO);
    dup2(devnull, STDOUT_FILENO);
    dup2(devnull, STDERR_FILENO);
    close(devnull);
  }
  if (p.address_space_bytes > 0) {
    if (auto s = SetLimit(RLIMIT_AS, p.address_space_bytes, "AS"); !s.ok()) return s;
  }
  if (p.cpu_seconds > 0) {
    // Soft below hard: the kernel sends SIGXCPU (reported as a timeout) at
    // the soft limit; SIGKILL at the hard one only if that was ignored.
    if (auto s = SetLimit(RLIMIT_CPU, p.cpu_seconds, "CPU", p.cpu_seconds + 2); !s.ok()) {
      return s;
    }
  }
  if (auto s = SetLimit(RLIMIT_FSIZE, 0, "FSIZE"); !s.ok()) return s;
  if (auto s = SetLimit(RLIMIT_NOFILE, p.open_files, "NOFILE"); !s.ok()) return s;
  // A fixed main-thread stack, whatever the server was started with: runaway
  // native recursion (a deeply nested TorchScript source) ends in SIGSEGV at
  // the same depth on every host instead of eating the address space.
  if (p.stack_bytes > 0) {
    if (auto s = SetLimit(RLIMIT_STACK, p.stack_bytes, "STACK"); !s.ok()) return s;
  }
  if (auto s = SetLimit(RLIMIT_CORE, 0, "CORE"); !s.ok()) return s;
  // RLIMIT_NPROC counts every thread of the user, the server's and other
  // jobs' included, so a tight value would starve a legitimate job when the
  // service runs as a non-root user; it only bounds thread floods (seccomp's
  // clone rule stops new processes; root ignores the limit).
  if (p.max_user_tasks > 0) {
    if (auto s = SetLimit(RLIMIT_NPROC, p.max_user_tasks, "NPROC"); !s.ok()) return s;
  }
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return Errno("no_new_privs");
  const int abi = LandlockAbi();
  if (landlock_abi != nullptr) *landlock_abi = abi;
  if (abi > 0) {
    if (auto s = ApplyLandlock(p, abi); !s.ok()) return s;
  }
  return p.seccomp ? ApplySeccomp() : absl::OkStatus();
}

std::vector<std::string> LoadedLibraryDirs() {
  std::set<std::string> dirs;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* data) {
        std::string path = info->dlpi_name != nullptr ? info->dlpi_name : "";
        const size_t slash = path.rfind('/');
        if (!path.empty() && path[0] == '/' && slash != std::string::npos && slash > 0) {
          static_cast<std::set<std::string>*>(data)->insert(path.substr(0, slash));
        }
        return 0;
      },
      &dirs);
  return std::vector<std::string>(dirs.begin(), dirs.end());
}

}  // namespace preflight::worker
