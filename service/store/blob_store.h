// Content-addressed artifact storage: the interface every blob backend
// implements (file_blob_store.h: files in a directory; pg_blob_store.h: rows
// in PostgreSQL, shared by a fleet). The server sees only this type; it gets
// one from store_factory.h.
//
// Contract, for every implementation: thread-safe; a blob is visible under
// its sha256 only once complete (a crash never leaves a partial blob under a
// valid name); a Put or Commit that returned OK is durable. A backend that
// cannot be reached answers UNAVAILABLE naming the store; a full one
// RESOURCE_EXHAUSTED naming the store.
//
//   auto w = blobs->NewWriter();
//   w->Append(chunk); ...
//   auto info = w->Commit();  // {sha256, size, already_present}
//   auto fd = blobs->OpenForRead(info->sha256);  // how the bytes reach a job
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
  // A writer dropped without Commit leaves nothing behind.
  virtual ~BlobWriter() = default;
  // RESOURCE_EXHAUSTED once the blob would exceed the store's max size.
  virtual absl::Status Append(absl::string_view data) = 0;
  virtual absl::StatusOr<BlobInfo> Commit() = 0;
};

class BlobStore {
 public:
  virtual ~BlobStore() = default;

  virtual std::unique_ptr<BlobWriter> NewWriter() = 0;
  // Stores `bytes` unless a blob of their sha256 is already stored, in which
  // case nothing is written (already_present).
  virtual absl::StatusOr<BlobInfo> Put(absl::string_view bytes) = 0;
  // Whether a complete blob of this sha256 is stored (false for a string that
  // is not a sha256); an error only when the store cannot be asked.
  virtual absl::StatusOr<bool> Has(const std::string& sha256) const = 0;
  // A stored blob opened read-only (close-on-exec), positioned at 0: how its
  // bytes reach a job, which never learns where the store is. NOT_FOUND when
  // absent.
  virtual absl::StatusOr<util::UniqueFd> OpenForRead(const std::string& sha256) const = 0;
  // The size of a stored blob, bytes; NOT_FOUND when absent.
  virtual absl::StatusOr<int64_t> SizeOf(const std::string& sha256) const = 0;
  // Up to `n` leading bytes of a stored blob; NOT_FOUND when absent.
  virtual absl::StatusOr<std::string> ReadHead(const std::string& sha256, size_t n) const = 0;
  // The cap on one blob, bytes.
  virtual int64_t max_blob_bytes() const = 0;
  // Deletes a stored blob; OK when it is absent. Only the retention sweep
  // (blob_retention.h) calls it, for a blob no tenant references. A reader
  // that already opened the blob keeps reading it (the file store unlinks;
  // the PostgreSQL store deletes in one transaction, and OpenForRead reads
  // the blob into its own memory before returning).
  virtual absl::Status Remove(const std::string& sha256) = 0;
};

}  // namespace preflight::store
