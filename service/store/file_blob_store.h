// Content-addressed artifact storage on the local filesystem: the blob
// backend of a directory store (store_factory.h).
//
// Blobs live at DIR/<sha256>; a blob is written to a temporary file and
// renamed into place only once complete, so a crash never leaves a partial
// blob under a valid name. Thread-safe.
//
//   auto store = FileBlobStore::Open("/var/lib/preflight/blobs", max_bytes);
//   auto w = (*store)->NewWriter();
//   w->Append(chunk); ...
//   auto digest = w->Commit();  // {sha256, size, already_present}
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "service/store/blob_store.h"

namespace preflight::store {

class FileBlobStore : public BlobStore {
 public:
  // Creates DIR if needed; FAILED_PRECONDITION if it is not a writable
  // directory. Removes the temp files of uploads that never completed (their
  // writer was killed): nothing else would.
  static absl::StatusOr<std::unique_ptr<FileBlobStore>> Open(const std::string& dir,
                                                             int64_t max_blob_bytes);

  std::unique_ptr<BlobWriter> NewWriter() override;
  absl::StatusOr<BlobInfo> Put(absl::string_view bytes) override;
  absl::StatusOr<bool> Has(const std::string& sha256) const override;
  absl::StatusOr<util::UniqueFd> OpenForRead(const std::string& sha256) const override;
  absl::StatusOr<std::string> ReadHead(const std::string& sha256, size_t n) const override;
  int64_t max_blob_bytes() const override { return max_blob_bytes_; }
  absl::Status Remove(const std::string& sha256) override;
  absl::StatusOr<int64_t> SizeOf(const std::string& sha256) const override;

  // Path of a stored blob (whether or not it exists). For the store itself
  // and its tests: nothing outside service/store passes it on.
  std::string PathOf(const std::string& sha256) const;
  // How many abandoned temp files Open removed.
  int stale_temps_removed() const { return stale_temps_removed_; }

 private:
  FileBlobStore(std::string dir, int64_t max_blob_bytes)
      : dir_(std::move(dir)), max_blob_bytes_(max_blob_bytes) {}
  bool Exists(const std::string& sha256) const;
  std::string dir_;
  int64_t max_blob_bytes_;
  int stale_temps_removed_ = 0;
};

}  // namespace preflight::store
