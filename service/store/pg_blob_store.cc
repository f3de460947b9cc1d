#include "service/store/pg_blob_store.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "service/store/sha256.h"

namespace preflight::store {
namespace {

// A key no sha256 can be, unique per writer: its chunks are invisible to
// every other connection until the commit renames them.
std::string UploadKey() {
  static std::atomic<uint64_t> counter{0};
  static const uint64_t salt = std::random_device{}();
  return absl::StrFormat("upload-%d-%016x-%d", getpid(), salt, counter.fetch_add(1));
}

class PgBlobWriter : public BlobWriter {
 public:
  PgBlobWriter(PgDatabase* db, int64_t max_bytes) : db_(db), max_bytes_(max_bytes) {}

  // Without Commit, the transaction is rolled back when the connection goes
  // back to the pool (PgDatabase::Return), or dies with it.
  ~PgBlobWriter() override = default;

  absl::Status Append(absl::string_view data) override {
    if (!failed_.ok()) return failed_;
    if (size_ + static_cast<int64_t>(data.size()) > max_bytes_) {
      return absl::ResourceExhaustedError(
          absl::StrCat("artifact exceeds the server's limit of ", max_bytes_, " bytes"));
    }
    hash_.Update(data);
    size_ += static_cast<int64_t>(data.size());
    while (!data.empty()) {
      const size_t take = std::min(data.size(), PgBlobStore::kChunkBytes - pending_.size());
      pending_.append(data.data(), take);
      data.remove_prefix(take);
      if (pending_.size() == PgBlobStore::kChunkBytes) {
        if (absl::Status s = Flush(); !s.ok()) return Fail(s);
      }
    }
    return absl::OkStatus();
  }

  absl::StatusOr<BlobInfo> Commit() override {
    if (!failed_.ok()) return failed_;
    BlobInfo info;
    info.sha256 = hash_.HexDigest();
    info.size = size_;
    if (!pending_.empty() || chunks_ == 0) {
      if (absl::Status s = Flush(); !s.ok()) return Fail(s);
    }
    // Taken before the chunks are renamed: a concurrent writer of the same
    // bytes waits here for the first one's commit, then finds its row.
    auto row = conn_->Exec(
        "INSERT INTO blobs (sha256, size, chunks, created_unix_seconds) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (sha256) DO NOTHING",
        {info.sha256, absl::StrCat(size_), absl::StrCat(chunks_),
         absl::StrFormat("%.17g", absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch()))});
    if (!row.ok()) return Fail(row.status());
    if (row->affected() == 0) {
      // Content-addressed: the stored blob holds these bytes already.
      info.already_present = true;
      conn_->Exec("ROLLBACK").IgnoreError();
      conn_.reset();
      return info;
    }
    if (auto r = conn_->Exec("UPDATE blob_chunks SET blob_key = $1 WHERE blob_key = $2",
                             {info.sha256, key_});
        !r.ok()) {
      return Fail(r.status());
    }
    if (auto r = conn_->Exec("COMMIT"); !r.ok()) return Fail(r.status());
    conn_.reset();
    return info;
  }

 private:
  absl::Status Fail(absl::Status s) {
    failed_ = s;
    conn_.reset();  // Rolled back (or already gone with the connection).
    return s;
  }

  absl::Status Flush() {
    if (!conn_) {
      auto c = db_->Connect();
      if (!c.ok()) return c.status();
      conn_ = std::make_unique<PgDatabase::Conn>(*std::move(c));
      if (auto r = conn_->Exec("BEGIN"); !r.ok()) return r.status();
      key_ = UploadKey();
    }
    auto r = conn_->Exec("INSERT INTO blob_chunks (blob_key, seq, data) VALUES ($1, $2, $3)",
                         {key_, absl::StrCat(chunks_), PgParam::Bytes(pending_)});
    if (!r.ok()) return r.status();
    ++chunks_;
    pending_.clear();
    return absl::OkStatus();
  }

  PgDatabase* db_;
  int64_t max_bytes_;
  std::unique_ptr<PgDatabase::Conn> conn_;  // Holds the upload's open transaction.
  std::string key_;
  std::string pending_;
  int chunks_ = 0;
  int64_t size_ = 0;
  absl::Status failed_;
  Sha256 hash_;
};

}  // namespace

std::unique_ptr<BlobWriter> PgBlobStore::NewWriter() {
  return std::make_unique<PgBlobWriter>(db_.get(), max_blob_bytes_);
}

absl::StatusOr<BlobInfo> PgBlobStore::Put(absl::string_view bytes) {
  // A repeat of a stored artifact (every repeated inline Check) writes nothing.
  const std::string sha256 = Sha256Hex(bytes);
  auto has = Has(sha256);
  if (!has.ok()) return has.status();
  if (*has) return BlobInfo{sha256, static_cast<int64_t>(bytes.size()), true};
  auto w = NewWriter();
  if (absl::Status s = w->Append(bytes); !s.ok()) return s;
  return w->Commit();
}

absl::StatusOr<bool> PgBlobStore::Has(const std::string& sha256) const {
  if (!IsSha256Hex(sha256)) return false;
  bool found = false;
  absl::Status s = db_->Run([&](PgDatabase::Conn& c) -> absl::Status {
    auto r = c.Exec("SELECT 1 FROM blobs WHERE sha256 = $1", {sha256});
    if (!r.ok()) return r.status();
    found = r->rows() == 1;
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return found;
}

absl::StatusOr<util::UniqueFd> PgBlobStore::OpenForRead(const std::string& sha256) const {
  if (!IsSha256Hex(sha256)) return absl::InvalidArgumentError("blob: not a sha256");
  util::UniqueFd out;
  absl::Status s = db_->Run([&](PgDatabase::Conn& c) -> absl::Status {
    auto meta = c.Exec("SELECT size, chunks FROM blobs WHERE sha256 = $1", {sha256});
    if (!meta.ok()) return meta.status();
    if (meta->rows() == 0) return absl::NotFoundError(absl::StrCat("blob ", sha256, " is absent"));
    const int64_t size = meta->Int(0, 0);
    const int chunks = static_cast<int>(meta->Int(0, 1));
    util::UniqueFd fd(memfd_create("preflight-blob", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    if (!fd.valid()) {
      return absl::ResourceExhaustedError(
          absl::StrCat("blob ", sha256, ": memfd_create: ", std::strerror(errno)));
    }
    int64_t written = 0;
    // One chunk per query: memory stays at one chunk whatever the blob's size.
    for (int seq = 0; seq < chunks; ++seq) {
      auto r = c.Exec("SELECT data FROM blob_chunks WHERE blob_key = $1 AND seq = $2",
                      {sha256, absl::StrCat(seq)}, /*binary_result=*/true);
      if (!r.ok()) return r.status();
      if (r->rows() != 1) {
        return absl::DataLossError(absl::StrCat("blob ", sha256, " lost chunk ", seq));
      }
      absl::string_view data = r->Get(0, 0);
      while (!data.empty()) {
        const ssize_t n = write(fd.get(), data.data(), data.size());
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
          return absl::ResourceExhaustedError(
              absl::StrCat("blob ", sha256, ": write to memory: ", std::strerror(errno)));
        }
        written += n;
        data.remove_prefix(static_cast<size_t>(n));
      }
    }
    if (written != size) {
      return absl::DataLossError(
          absl::StrCat("blob ", sha256, " holds ", written, " bytes, not ", size));
    }
    // Sealed: the job reads exactly the stored bytes.
    fcntl(fd.get(), F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL);
    lseek(fd.get(), 0, SEEK_SET);
    out = std::move(fd);
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return out;
}

absl::StatusOr<std::string> PgBlobStore::ReadHead(const std::string& sha256, size_t n) const {
  std::string head;
  absl::Status s = db_->Run([&](PgDatabase::Conn& c) -> absl::Status {
    auto r = c.Exec(
        "SELECT substring(c.data FROM 1 FOR $2) FROM blobs b JOIN blob_chunks c "
        "ON c.blob_key = b.sha256 AND c.seq = 0 WHERE b.sha256 = $1",
        {sha256, absl::StrCat(n)}, /*binary_result=*/true);
    if (!r.ok()) return r.status();
    if (r->rows() == 0) return absl::NotFoundError(absl::StrCat("blob ", sha256, " is absent"));
    head = std::string(r->Get(0, 0));
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return head;
}

absl::StatusOr<int64_t> PgBlobStore::SizeOf(const std::string& sha256) const {
  if (!IsSha256Hex(sha256)) return absl::NotFoundError(absl::StrCat("blob ", sha256, " is absent"));
  int64_t size = -1;
  absl::Status s = db_->Run([&](PgDatabase::Conn& c) -> absl::Status {
    auto r = c.Exec("SELECT size FROM blobs WHERE sha256 = $1", {sha256});
    if (!r.ok()) return r.status();
    if (r->rows() == 0) return absl::NotFoundError(absl::StrCat("blob ", sha256, " is absent"));
    size = r->Int(0, 0);
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return size;
}

absl::Status PgBlobStore::Remove(const std::string& sha256) {
  if (!IsSha256Hex(sha256)) return absl::InvalidArgumentError("blob: not a sha256");
  return db_->Run([&](PgDatabase::Conn& c) -> absl::Status {
    if (auto r = c.Exec("BEGIN"); !r.ok()) return r.status();
    for (const char* sql :
         {"DELETE FROM blobs WHERE sha256 = $1", "DELETE FROM blob_chunks WHERE blob_key = $1"}) {
      if (auto r = c.Exec(sql, {sha256}); !r.ok()) {
        c.Exec("ROLLBACK").IgnoreError();
        return r.status();
      }
    }
    if (auto r = c.Exec("COMMIT"); !r.ok()) return r.status();
    return absl::OkStatus();
  });
}

}  // namespace preflight::store
