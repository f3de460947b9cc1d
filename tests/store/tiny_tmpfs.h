// A tmpfs of a few KiB mounted on a fresh directory, for tests of what the
// stores do on a full disk (ENOSPC, SQLITE_FULL). Mounting needs root (or
// CAP_SYS_ADMIN); where it is refused, `error()` says why and tests skip.
#pragma once

#include <stdlib.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace preflight::store {

class TinyTmpfs {
 public:
  explicit TinyTmpfs(size_t bytes) {
    char tmpl[] = "/tmp/preflight-full-disk-XXXXXX";
    dir_ = mkdtemp(tmpl);
    const std::string options = "size=" + std::to_string(bytes);
    if (mount("tmpfs", dir_.c_str(), "tmpfs", 0, options.c_str()) != 0) {
      error_ = std::string("mount tmpfs: ") + std::strerror(errno);
    }
  }
  ~TinyTmpfs() {
    if (error_.empty()) umount2(dir_.c_str(), MNT_DETACH);
    rmdir(dir_.c_str());
  }
  const std::string& dir() const { return dir_; }
  // Empty once mounted.
  const std::string& error() const { return error_; }

 private:
  std::string dir_;
  std::string error_;
};

}  // namespace preflight::store
