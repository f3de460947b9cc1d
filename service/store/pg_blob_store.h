// The fleet blob store: artifacts in PostgreSQL, so an artifact uploaded to
// one replica is checkable on every other. A blob is a row in `blobs` plus
// its bytes as 1 MiB `blob_chunks` rows, all written in one transaction: a
// writer that dies (its connection closes) leaves nothing, and a blob is
// visible only once complete. Thread-safe.
//
// OpenForRead copies the blob into a sealed memory file (memfd), because a
// job takes its artifacts as descriptors and never talks to the database.
//
//   PgBlobStore blobs(db, max_blob_bytes);
//   auto info = blobs.Put(bytes);
//   auto fd = blobs.OpenForRead(info->sha256);
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "service/store/blob_store.h"
#include "service/store/pg_database.h"

namespace preflight::store {

class PgBlobStore : public BlobStore {
 public:
  PgBlobStore(std::shared_ptr<PgDatabase> db, int64_t max_blob_bytes)
      : db_(std::move(db)), max_blob_bytes_(max_blob_bytes) {}

  std::unique_ptr<BlobWriter> NewWriter() override;
  absl::StatusOr<BlobInfo> Put(absl::string_view bytes) override;
  absl::StatusOr<bool> Has(const std::string& sha256) const override;
  absl::StatusOr<util::UniqueFd> OpenForRead(const std::string& sha256) const override;
  absl::StatusOr<std::string> ReadHead(const std::string& sha256, size_t n) const override;
  int64_t max_blob_bytes() const override { return max_blob_bytes_; }
  absl::Status Remove(const std::string& sha256) override;
  absl::StatusOr<int64_t> SizeOf(const std::string& sha256) const override;

  // Bytes per chunk row.
  static constexpr size_t kChunkBytes = 1 << 20;

 private:
  std::shared_ptr<PgDatabase> db_;
  int64_t max_blob_bytes_;
};

}  // namespace preflight::store
