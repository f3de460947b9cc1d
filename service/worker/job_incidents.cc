#include "service/worker/job_incidents.h"

#include <cxxabi.h>
#include <dlfcn.h>
#include <fcntl.h>

#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <new>
#include <typeinfo>

namespace preflight::worker {
namespace {

constexpr int kCapacity = 32;
constexpr size_t kPathBytes = 256;

struct Slot {
  v1::JobIncident::Kind kind;
  int errno_value;
  int64_t bytes;
  const char* call;  // A string literal.
  bool write;
  char path[kPathBytes];
};

std::atomic<bool> g_armed{false};
std::atomic<int> g_next{0};
Slot g_slots[kCapacity];
std::atomic<int> g_committed[kCapacity];
std::atomic<int> g_raised[kCapacity];
// The incident of this thread's most recent interposed call, or -1 when that
// call succeeded: what a throw right now would be a consequence of.
thread_local int t_last_failure = -1;

void NoteSuccess() {
  if (g_armed.load(std::memory_order_relaxed)) t_last_failure = -1;
}

void Record(v1::JobIncident::Kind kind, int err, int64_t bytes, const char* call, const char* path,
            bool write = false) {
  if (!g_armed.load(std::memory_order_relaxed)) return;
  const int i = g_next.fetch_add(1, std::memory_order_relaxed);
  t_last_failure = i < kCapacity ? i : -1;
  if (i >= kCapacity) return;  // Counted as dropped by TakeIncidents.
  Slot& s = g_slots[i];
  s.kind = kind;
  s.errno_value = err;
  s.bytes = bytes;
  s.call = call;
  s.write = write;
  s.path[0] = '\0';
  if (path != nullptr) {
    std::strncpy(s.path, path, kPathBytes - 1);
    s.path[kPathBytes - 1] = '\0';
  }
  g_committed[i].store(1, std::memory_order_release);
}

// After EACCES/EPERM from an open: the sandbox (Landlock) refused the path.
void NoteOpen(int result, const char* call, const char* path, bool write) {
  if (result >= 0) {
    NoteSuccess();
    return;
  }
  const int err = errno;
  if (err == EACCES || err == EPERM) {
    Record(v1::JobIncident::FILE_ACCESS_DENIED, err, 0, call, path, write);
  } else {
    NoteSuccess();  // Not the sandbox's doing (ENOENT, ...).
  }
  errno = err;
}

template <typename Fn>
Fn Next(const char* name) {
  return reinterpret_cast<Fn>(dlsym(RTLD_NEXT, name));
}

bool NeedsMode(int flags) { return (flags & O_CREAT) != 0 || (flags & O_TMPFILE) == O_TMPFILE; }

bool OpensForWrite(int flags) {
  return (flags & O_ACCMODE) != O_RDONLY || (flags & (O_CREAT | O_TRUNC)) != 0 ||
         (flags & O_TMPFILE) == O_TMPFILE;
}

bool FopenForWrite(const char* how) {
  return how != nullptr && std::strpbrk(how, "wa+") != nullptr;
}

void NewHandler() {
  Record(v1::JobIncident::ALLOCATION_FAILED, ENOMEM, 0, "operator new", nullptr);
  std::set_new_handler(nullptr);  // The next failure throws without recording twice.
  throw std::bad_alloc();
}

}  // namespace

void ArmIncidentRecording() {
  std::set_new_handler(&NewHandler);
  g_armed.store(true, std::memory_order_release);
}

void RecordAllocationFailure(int64_t bytes, const char* call, bool raised) {
  Record(v1::JobIncident::ALLOCATION_FAILED, ENOMEM, bytes, call, nullptr);
  if (raised && t_last_failure >= 0) g_raised[t_last_failure].store(1, std::memory_order_relaxed);
}

void NoteThrow() {
  if (!g_armed.load(std::memory_order_relaxed) || t_last_failure < 0) return;
  g_raised[t_last_failure].store(1, std::memory_order_relaxed);
}

void TakeIncidents(v1::JobRecord* record) {
  const int n = g_next.load(std::memory_order_acquire);
  for (int i = 0; i < n && i < kCapacity; ++i) {
    if (g_committed[i].load(std::memory_order_acquire) == 0) continue;
    const Slot& s = g_slots[i];
    v1::JobIncident* incident = record->add_incidents();
    incident->set_kind(s.kind);
    incident->set_errno_value(s.errno_value);
    incident->set_bytes(s.bytes);
    incident->set_call(s.call);
    incident->set_path(s.path);
    if (s.kind == v1::JobIncident::FILE_ACCESS_DENIED) incident->set_write(s.write);
    incident->set_raised(g_raised[i].load(std::memory_order_relaxed) != 0);
  }
  record->set_incidents_dropped(n > kCapacity ? n - kCapacity : 0);
}

}  // namespace preflight::worker

// The interposers. Each forwards to the next definition (libc's) and notes a
// refusal; errno is preserved for the caller.
using preflight::worker::FopenForWrite;
using preflight::worker::NeedsMode;
using preflight::worker::Next;
using preflight::worker::NoteOpen;
using preflight::worker::OpensForWrite;

// The optional mode argument of the open family: present only when the
// flags create a file. A macro because va_start must run in the variadic
// function itself.
#define PREFLIGHT_READ_MODE(flags, mode)         \
  mode_t mode = 0;                               \
  if (NeedsMode(flags)) {                        \
    va_list ap;                                  \
    va_start(ap, flags);                         \
    mode = static_cast<mode_t>(va_arg(ap, int)); \
    va_end(ap);                                  \
  }

extern "C" {

int open(const char* path, int flags, ...) {
  static auto real = Next<int (*)(const char*, int, ...)>("open");
  PREFLIGHT_READ_MODE(flags, mode);
  const int fd = real(path, flags, mode);
  NoteOpen(fd, "open", path, OpensForWrite(flags));
  return fd;
}

int open64(const char* path, int flags, ...) {
  static auto real = Next<int (*)(const char*, int, ...)>("open64");
  PREFLIGHT_READ_MODE(flags, mode);
  const int fd = real(path, flags, mode);
  NoteOpen(fd, "open64", path, OpensForWrite(flags));
  return fd;
}

int openat(int dirfd, const char* path, int flags, ...) {
  static auto real = Next<int (*)(int, const char*, int, ...)>("openat");
  PREFLIGHT_READ_MODE(flags, mode);
  const int fd = real(dirfd, path, flags, mode);
  NoteOpen(fd, "openat", path, OpensForWrite(flags));
  return fd;
}

int openat64(int dirfd, const char* path, int flags, ...) {
  static auto real = Next<int (*)(int, const char*, int, ...)>("openat64");
  PREFLIGHT_READ_MODE(flags, mode);
  const int fd = real(dirfd, path, flags, mode);
  NoteOpen(fd, "openat64", path, OpensForWrite(flags));
  return fd;
}

FILE* fopen(const char* path, const char* how) {
  static auto real = Next<FILE* (*)(const char*, const char*)>("fopen");
  FILE* f = real(path, how);
  NoteOpen(f != nullptr ? 0 : -1, "fopen", path, FopenForWrite(how));
  return f;
}

FILE* fopen64(const char* path, const char* how) {
  static auto real = Next<FILE* (*)(const char*, const char*)>("fopen64");
  FILE* f = real(path, how);
  NoteOpen(f != nullptr ? 0 : -1, "fopen64", path, FopenForWrite(how));
  return f;
}

int posix_memalign(void** out, size_t alignment, size_t size) noexcept {
  static auto real = Next<int (*)(void**, size_t, size_t)>("posix_memalign");
  const int err = real(out, alignment, size);
  if (err == ENOMEM) {
    preflight::worker::RecordAllocationFailure(static_cast<int64_t>(size), "posix_memalign",
                                               /*raised=*/false);
  } else {
    preflight::worker::NoteSuccess();
  }
  return err;
}

}  // extern "C"

// Every C++ throw (LibTorch's TORCH_CHECK, std::bad_alloc) passes here first:
// a throw right after a refused call marks that call as what stopped the code.
namespace __cxxabiv1 {
extern "C" void __cxa_throw(void* thrown, std::type_info* type, void (*destroy)(void*)) {
  using Throw = void (*)(void*, std::type_info*, void (*)(void*));
  static auto real = Next<Throw>("__cxa_throw");
  preflight::worker::NoteThrow();
  real(thrown, type, destroy);
  __builtin_unreachable();
}
}  // namespace __cxxabiv1
