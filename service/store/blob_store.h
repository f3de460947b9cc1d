// Content-addressed artifact storage on the local filesystem.
//
// Blobs live at DIR/<sha256>; a blob is written to a temporary file and
// renamed into place only once complete, so a crash never leaves a partial
// blob under a valid name. Thread-safe.
//
//   auto store = BlobStore::Open("/var/lib/preflight/blobs");
//   auto w = (*store)->NewWriter();
//   w->Append(chunk); ...
//   auto digest = w->Commit();  // {sha256, size, already_present}
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "service/util/unique_fd.h"

namespace preflight::store {

struct BlobInfo {
  std::string sha256;
  int64_t size = 0;
  bool already_present = false;
};

class BlobWriter {
 public:
  virtual ~BlobWriter() = default;
  // RESOURCE_EXHAUSTED once the blob would exceed the store's max size.
  virtual absl::Status Append(absl::string_view data) = 0;
  virtual absl::StatusOr<BlobInfo> Commit() = 0;
};

class BlobStore {
 public:
  // Creates DIR if needed; FAILED_PRECONDITION if it is not a writable
  // directory. Removes the temp files of uploads that never completed (their
  // writer was killed): nothing else would.
  static absl::StatusOr<std::unique_ptr<BlobStore>> Open(const std::string& dir,
                                                         int64_t max_blob_bytes);

  std::unique_ptr<BlobWriter> NewWriter();
  // Stores `bytes` unless a blob of their sha256 is already stored, in which
  // case nothing is written (already_present).
  absl::StatusOr<BlobInfo> Put(absl::string_view bytes);
  bool Has(const std::string& sha256) const;
  // A stored blob opened read-only (close-on-exec): how its bytes reach a
  // job, which never learns where the store is. NOT_FOUND when absent.
  absl::StatusOr<util::UniqueFd> OpenForRead(const std::string& sha256) const;
  // Up to `n` leading bytes of a stored blob ("" when absent or unreadable).
  std::string ReadHead(const std::string& sha256, size_t n) const;
  // Path of a stored blob (whether or not it exists). For the store itself
  // and its tests: nothing outside service/store passes it on.
  std::string PathOf(const std::string& sha256) const;
  int64_t max_blob_bytes() const { return max_blob_bytes_; }
  // How many abandoned temp files Open removed.
  int stale_temps_removed() const { return stale_temps_removed_; }

 private:
  BlobStore(std::string dir, int64_t max_blob_bytes)
      : dir_(std::move(dir)), max_blob_bytes_(max_blob_bytes) {}
  std::string dir_;
  int64_t max_blob_bytes_;
  int stale_temps_removed_ = 0;
};

}  // namespace preflight::store
