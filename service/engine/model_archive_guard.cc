#include "service/engine/model_archive_guard.h"

#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "service/engine/pickle_guard.h"
#include "service/engine/utf8.h"

namespace preflight::engine {
namespace {

constexpr uint32_t kEndOfDirectory = 0x06054b50;
constexpr uint32_t kZip64Locator = 0x07064b50;
constexpr uint32_t kZip64EndOfDirectory = 0x06064b50;
constexpr uint32_t kDirectoryEntry = 0x02014b50;
constexpr uint32_t kLocalHeader = 0x04034b50;
constexpr size_t kEndOfDirectoryBytes = 22;
constexpr size_t kMaxCommentBytes = 0xffff;

struct Entry {
  uint16_t method = 0;
  uint64_t compressed = 0;
  uint64_t size = 0;
  uint64_t local_offset = 0;
};

// Little-endian reads, bounds-checked: false past the end.
class Reader {
 public:
  explicit Reader(absl::string_view b) : b_(b) {}
  bool At(uint64_t pos) {
    if (pos > b_.size()) return false;
    pos_ = static_cast<size_t>(pos);
    return true;
  }
  size_t pos() const { return pos_; }
  template <typename T>
  bool Get(T* out) {
    if (b_.size() - pos_ < sizeof(T)) return false;
    uint64_t v = 0;
    for (size_t i = 0; i < sizeof(T); ++i) {
      v |= static_cast<uint64_t>(static_cast<unsigned char>(b_[pos_ + i])) << (8 * i);
    }
    *out = static_cast<T>(v);
    pos_ += sizeof(T);
    return true;
  }
  bool Skip(uint64_t n) {
    if (b_.size() - pos_ < n) return false;
    pos_ += static_cast<size_t>(n);
    return true;
  }
  bool Take(uint64_t n, absl::string_view* out) {
    if (b_.size() - pos_ < n) return false;
    *out = b_.substr(pos_, static_cast<size_t>(n));
    pos_ += static_cast<size_t>(n);
    return true;
  }

 private:
  absl::string_view b_;
  size_t pos_ = 0;
};

absl::Status Invalid(const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("the model archive (zip) ", what));
}

// The end-of-directory record, searched backwards as zip readers (miniz,
// LibTorch's) do, so this pass reads the same directory they will.
std::optional<size_t> FindEndOfDirectory(absl::string_view b) {
  if (b.size() < kEndOfDirectoryBytes) return std::nullopt;
  const size_t last = b.size() - kEndOfDirectoryBytes;
  const size_t first = last > kMaxCommentBytes ? last - kMaxCommentBytes : 0;
  for (size_t i = last + 1; i-- > first;) {
    Reader r(b);
    uint32_t sig = 0;
    if (r.At(i) && r.Get(&sig) && sig == kEndOfDirectory) return i;
  }
  return std::nullopt;
}

// A directory entry's zip64 extra field replaces the 32-bit fields that
// hold 0xffffffff, in this order.
bool ApplyZip64(absl::string_view extra, uint32_t size32, uint32_t compressed32, uint32_t offset32,
                Entry* e) {
  Reader r(extra);
  while (r.pos() + 4 <= extra.size()) {
    uint16_t id = 0, len = 0;
    if (!r.Get(&id) || !r.Get(&len)) return false;
    absl::string_view field;
    if (!r.Take(len, &field)) return false;
    if (id != 0x0001) continue;
    Reader f(field);
    if (size32 == 0xffffffff && !f.Get(&e->size)) return false;
    if (compressed32 == 0xffffffff && !f.Get(&e->compressed)) return false;
    if (offset32 == 0xffffffff && !f.Get(&e->local_offset)) return false;
    return true;
  }
  return size32 != 0xffffffff && compressed32 != 0xffffffff && offset32 != 0xffffffff;
}

struct Directory {
  std::string top;                       // The folder every record sits in.
  std::map<std::string, Entry> entries;  // By name below `top`.
};

absl::Status ReadDirectory(absl::string_view b, size_t eocd, Directory* dir) {
  Reader r(b);
  uint16_t disk = 0, cd_disk = 0, here16 = 0, total16 = 0, comment = 0;
  uint32_t cd_size32 = 0, cd_offset32 = 0;
  if (!r.At(eocd + 4) || !r.Get(&disk) || !r.Get(&cd_disk) || !r.Get(&here16) || !r.Get(&total16) ||
      !r.Get(&cd_size32) || !r.Get(&cd_offset32) || !r.Get(&comment)) {
    return Invalid("has a truncated end-of-directory record");
  }
  uint64_t total = total16, cd_size = cd_size32, cd_offset = cd_offset32;
  if (total16 == 0xffff || cd_size32 == 0xffffffff || cd_offset32 == 0xffffffff) {
    // Zip64: the locator sits right before the end-of-directory record.
    uint32_t sig = 0, locator_disk = 0, disks = 0;
    uint64_t record = 0;
    if (eocd < 20 || !r.At(eocd - 20) || !r.Get(&sig) || sig != kZip64Locator ||
        !r.Get(&locator_disk) || !r.Get(&record) || !r.Get(&disks)) {
      return Invalid("declares zip64 sizes without a zip64 locator");
    }
    uint64_t record_size = 0, here = 0;
    uint16_t made = 0, needed = 0;
    uint32_t d1 = 0, d2 = 0;
    if (!r.At(record) || !r.Get(&sig) || sig != kZip64EndOfDirectory || !r.Get(&record_size) ||
        !r.Get(&made) || !r.Get(&needed) || !r.Get(&d1) || !r.Get(&d2) || !r.Get(&here) ||
        !r.Get(&total) || !r.Get(&cd_size) || !r.Get(&cd_offset)) {
      return Invalid("has a zip64 locator pointing outside the file");
    }
  }
  if (total > kMaxArchiveRecords) {
    return Invalid(absl::StrCat("declares ", total, " records; a model may hold at most ",
                                kMaxArchiveRecords));
  }
  if (cd_offset > b.size() || cd_size > b.size() - cd_offset) {
    return Invalid(absl::StrCat("has its directory (", cd_size, " bytes at ", cd_offset,
                                ") outside the file's ", b.size(), " bytes"));
  }
  if (!r.At(cd_offset)) return Invalid("has its directory outside the file");
  for (uint64_t i = 0; i < total; ++i) {
    uint32_t sig = 0, crc = 0, compressed32 = 0, size32 = 0, external = 0, offset32 = 0;
    uint16_t made = 0, needed = 0, flags = 0, method = 0, time = 0, date = 0, name_len = 0,
             extra_len = 0, comment_len = 0, start_disk = 0, internal = 0;
    if (!r.Get(&sig) || sig != kDirectoryEntry || !r.Get(&made) || !r.Get(&needed) ||
        !r.Get(&flags) || !r.Get(&method) || !r.Get(&time) || !r.Get(&date) || !r.Get(&crc) ||
        !r.Get(&compressed32) || !r.Get(&size32) || !r.Get(&name_len) || !r.Get(&extra_len) ||
        !r.Get(&comment_len) || !r.Get(&start_disk) || !r.Get(&internal) || !r.Get(&external) ||
        !r.Get(&offset32)) {
      return Invalid(absl::StrCat("has a truncated directory entry (", i, " of ", total, ")"));
    }
    absl::string_view name, extra;
    if (!r.Take(name_len, &name) || !r.Take(extra_len, &extra) || !r.Skip(comment_len)) {
      return Invalid(absl::StrCat("has a truncated directory entry (", i, " of ", total, ")"));
    }
    Entry e;
    e.method = method;
    e.compressed = compressed32;
    e.size = size32;
    e.local_offset = offset32;
    if (!ApplyZip64(extra, size32, compressed32, offset32, &e)) {
      return Invalid(absl::StrCat("has a malformed zip64 field in the entry for '",
                                  TruncateUtf8(std::string(name), 80, "..."), "'"));
    }
    const size_t slash = name.find('/');
    const absl::string_view top = slash == absl::string_view::npos ? "" : name.substr(0, slash);
    if (i == 0) dir->top = std::string(top);
    // LibTorch names records relative to the first record's folder.
    if (slash == absl::string_view::npos || top != dir->top) continue;
    // Two records of one name: which one a reader picks is up to the reader.
    if (!dir->entries.emplace(std::string(name.substr(slash + 1)), e).second) {
      return Invalid(absl::StrCat("holds two records named '",
                                  TruncateUtf8(std::string(name), 80, "..."), "'"));
    }
  }
  return absl::OkStatus();
}

// The bytes of a stored (uncompressed) record.
absl::Status StoredBytes(absl::string_view b, const std::string& name, const Entry& e,
                         absl::string_view* out) {
  if (e.method != 0) {
    return Invalid(absl::StrCat("holds ", name, " compressed (method ", e.method,
                                "); torch.jit.save stores it uncompressed"));
  }
  if (e.compressed != e.size) {
    return Invalid(absl::StrCat("declares ", name, " stored with ", e.compressed,
                                " bytes but sized ", e.size));
  }
  Reader r(b);
  uint32_t sig = 0, crc = 0, compressed = 0, size = 0;
  uint16_t version = 0, flags = 0, method = 0, time = 0, date = 0, name_len = 0, extra_len = 0;
  if (!r.At(e.local_offset) || !r.Get(&sig) || sig != kLocalHeader || !r.Get(&version) ||
      !r.Get(&flags) || !r.Get(&method) || !r.Get(&time) || !r.Get(&date) || !r.Get(&crc) ||
      !r.Get(&compressed) || !r.Get(&size) || !r.Get(&name_len) || !r.Get(&extra_len) ||
      !r.Skip(name_len) || !r.Skip(extra_len)) {
    return Invalid(
        absl::StrCat("points ", name, " at ", e.local_offset, ", where no record header is"));
  }
  if (!r.Take(e.size, out)) {
    return Invalid(absl::StrCat("declares ", name, " of ", e.size, " bytes, past the file's end"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckModelArchive(absl::string_view bytes) {
  const std::optional<size_t> eocd = FindEndOfDirectory(bytes);
  if (!eocd) return absl::OkStatus();  // Not a zip: the loaders say what it is.
  Directory dir;
  if (absl::Status s = ReadDirectory(bytes, *eocd, &dir); !s.ok()) return s;
  // The pickles TorchScript's loader unpickles, and the folder their
  // storages' records are in.
  for (const auto& [pickle, storages] :
       {std::pair<std::string, std::string>{"data.pkl", "data/"},
        std::pair<std::string, std::string>{"constants.pkl", "constants/"}}) {
    auto it = dir.entries.find(pickle);
    if (it == dir.entries.end()) continue;
    absl::string_view data;
    if (absl::Status s = StoredBytes(bytes, pickle, it->second, &data); !s.ok()) return s;
    // The pickle pass names storage records "data/<key>".
    auto record_size = [&, folder = storages](const std::string& name) -> std::optional<uint64_t> {
      if (!absl::StartsWith(name, "data/")) return std::nullopt;
      auto r = dir.entries.find(absl::StrCat(folder, name.substr(5)));
      if (r == dir.entries.end()) return std::nullopt;
      return r->second.size;
    };
    if (absl::Status s = CheckPickle(data, record_size, absl::StrCat("the model's ", pickle));
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

}  // namespace preflight::engine
