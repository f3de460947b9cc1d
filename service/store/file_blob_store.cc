#include "service/store/file_blob_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "service/store/sha256.h"

namespace preflight::store {
namespace {

std::atomic<uint64_t> g_temp_counter{0};
constexpr char kTempPrefix[] = ".tmp-";

// A failed filesystem call of the blob store in `dir`. A full disk or quota is
// the store's capacity, RESOURCE_EXHAUSTED naming the store, not a fault.
absl::Status IoError(const std::string& dir, const char* what, int err) {
  if (err == ENOSPC || err == EDQUOT) {
    return absl::ResourceExhaustedError(absl::StrCat("blob store ", dir, " is full: ", what, ": ",
                                                     std::strerror(err),
                                                     "; free space in the store's filesystem"));
  }
  return absl::InternalError(
      absl::StrCat("blob store ", dir, ": ", what, ": ", std::strerror(err)));
}

class FileBlobWriter : public BlobWriter {
 public:
  FileBlobWriter(const FileBlobStore* store, std::string dir)
      : store_(store), dir_(std::move(dir)) {
    temp_ = absl::StrCat(dir_, "/", kTempPrefix, getpid(), "-", g_temp_counter.fetch_add(1));
    fd_ = open(temp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
    open_errno_ = errno;
    // Held until the writer is gone, with its process if that is killed:
    // how RemoveStaleTemps tells a live upload from an abandoned one.
    if (fd_ >= 0) flock(fd_, LOCK_EX);
  }
  ~FileBlobWriter() override {
    if (fd_ >= 0) close(fd_);
    if (!committed_) unlink(temp_.c_str());
  }

  absl::Status Append(absl::string_view data) override {
    if (fd_ < 0) return IoError(dir_, "cannot create a temp file", open_errno_);
    if (size_ + static_cast<int64_t>(data.size()) > store_->max_blob_bytes()) {
      return absl::ResourceExhaustedError(absl::StrCat("artifact exceeds the server's limit of ",
                                                       store_->max_blob_bytes(), " bytes"));
    }
    hash_.Update(data);
    size_ += static_cast<int64_t>(data.size());
    while (!data.empty()) {
      const ssize_t n = write(fd_, data.data(), data.size());
      if (n < 0) {
        if (errno == EINTR) continue;
        return IoError(dir_, "write", errno);
      }
      data.remove_prefix(static_cast<size_t>(n));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<BlobInfo> Commit() override {
    if (fd_ < 0) return IoError(dir_, "cannot create a temp file", open_errno_);
    BlobInfo info;
    info.sha256 = hash_.HexDigest();
    info.size = size_;
    const std::string final_path = store_->PathOf(info.sha256);
    // Content-addressed: the stored blob already holds these bytes, so this
    // copy needs no sync (the destructor removes it).
    info.already_present = store_->Has(info.sha256).value_or(false);
    if (info.already_present) return info;
    if (fsync(fd_) != 0 || close(fd_) != 0) {
      const int err = errno;
      fd_ = -1;
      return IoError(dir_, "sync", err);
    }
    fd_ = -1;
    if (rename(temp_.c_str(), final_path.c_str()) != 0) {
      return IoError(dir_, "rename", errno);
    }
    committed_ = true;
    return info;
  }

 private:
  const FileBlobStore* store_;
  std::string dir_;
  std::string temp_;
  int fd_ = -1;
  int open_errno_ = 0;
  int64_t size_ = 0;
  bool committed_ = false;
  Sha256 hash_;
};

// Removes the temp files of writers that are gone (a killed upload, a crash
// mid-write): nobody holds their lock. A live writer's file stays. Returns how
// many were removed.
int RemoveStaleTemps(const std::string& dir) {
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return 0;
  int removed = 0;
  while (const dirent* e = readdir(d)) {
    const std::string name = e->d_name;
    if (name.rfind(kTempPrefix, 0) != 0) continue;
    const std::string path = absl::StrCat(dir, "/", name);
    const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) continue;
    if (flock(fd, LOCK_EX | LOCK_NB) == 0 && unlink(path.c_str()) == 0) ++removed;
    close(fd);
  }
  closedir(d);
  return removed;
}

}  // namespace

absl::StatusOr<std::unique_ptr<FileBlobStore>> FileBlobStore::Open(const std::string& dir,
                                                                   int64_t max_blob_bytes) {
  if (mkdir(dir.c_str(), 0750) != 0 && errno != EEXIST) {
    return absl::FailedPreconditionError(
        absl::StrCat("blob store: cannot create ", dir, ": ", std::strerror(errno)));
  }
  if (access(dir.c_str(), W_OK | X_OK) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("blob store: ", dir, " is not a writable directory"));
  }
  auto store = std::unique_ptr<FileBlobStore>(new FileBlobStore(dir, max_blob_bytes));
  store->stale_temps_removed_ = RemoveStaleTemps(dir);
  return store;
}

std::unique_ptr<BlobWriter> FileBlobStore::NewWriter() {
  return std::make_unique<FileBlobWriter>(this, dir_);
}

absl::StatusOr<BlobInfo> FileBlobStore::Put(absl::string_view bytes) {
  // A repeat of a stored artifact (every repeated inline Check) writes
  // nothing: same sha256, same bytes. It then works on a full disk too.
  const std::string sha256 = Sha256Hex(bytes);
  if (Exists(sha256)) return BlobInfo{sha256, static_cast<int64_t>(bytes.size()), true};
  auto w = NewWriter();
  if (absl::Status s = w->Append(bytes); !s.ok()) return s;
  return w->Commit();
}

bool FileBlobStore::Exists(const std::string& sha256) const {
  struct stat st;
  return IsSha256Hex(sha256) && stat(PathOf(sha256).c_str(), &st) == 0;
}

absl::StatusOr<bool> FileBlobStore::Has(const std::string& sha256) const { return Exists(sha256); }

absl::StatusOr<util::UniqueFd> FileBlobStore::OpenForRead(const std::string& sha256) const {
  if (!IsSha256Hex(sha256)) return absl::InvalidArgumentError("blob: not a sha256");
  util::UniqueFd fd(open(PathOf(sha256).c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat("blob ", sha256, " is absent"));
    return absl::InternalError(absl::StrCat("blob ", sha256, ": ", std::strerror(errno)));
  }
  return fd;
}

absl::StatusOr<std::string> FileBlobStore::ReadHead(const std::string& sha256, size_t n) const {
  auto fd = OpenForRead(sha256);
  if (!fd.ok()) return fd.status();
  std::string head(n, '\0');
  const ssize_t got = pread(fd->get(), head.data(), n, 0);
  head.resize(got > 0 ? static_cast<size_t>(got) : 0);
  return head;
}

absl::StatusOr<int64_t> FileBlobStore::SizeOf(const std::string& sha256) const {
  struct stat st;
  if (!IsSha256Hex(sha256) || stat(PathOf(sha256).c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat("blob ", sha256, " is absent"));
  }
  return static_cast<int64_t>(st.st_size);
}

absl::Status FileBlobStore::Remove(const std::string& sha256) {
  if (!IsSha256Hex(sha256)) return absl::InvalidArgumentError("blob: not a sha256");
  // An open descriptor (a running job's) keeps the unlinked file readable.
  if (unlink(PathOf(sha256).c_str()) != 0 && errno != ENOENT) {
    return IoError(dir_, "unlink", errno);
  }
  return absl::OkStatus();
}

std::string FileBlobStore::PathOf(const std::string& sha256) const {
  return absl::StrCat(dir_, "/", sha256);
}

}  // namespace preflight::store
