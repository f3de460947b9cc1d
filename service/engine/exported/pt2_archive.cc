#include "service/engine/exported/pt2_archive.h"

#include <set>
#include <sstream>
#include <vector>

#include <caffe2/serialize/inline_container.h>
#include <torch/torch.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "service/engine/torch_error.h"

namespace preflight::engine::internal::exported {
namespace {

using nlohmann::json;

// Deeper JSON nesting than the serializer ever writes (a graph node is about
// 8 levels, a higher-order op's subgraph adds about 10) is refused before
// parsing, so no recursive walk can run out of stack.
constexpr int kMaxJsonDepth = 200;
constexpr int64_t kMaxDims = 64;
constexpr int64_t kMaxDimSize = int64_t{1} << 40;

// A record name that could point outside the archive's folder if extracted,
// or that is not a plain relative path.
bool UnsafePath(const std::string& name) {
  if (name.empty() || name.front() == '/' || absl::StrContains(name, '\\') ||
      absl::StrContains(name, ':')) {
    return true;
  }
  for (size_t start = 0; start <= name.size();) {
    size_t end = name.find('/', start);
    if (end == std::string::npos) end = name.size();
    const std::string_view part(name.data() + start, end - start);
    if (part == ".." || part == ".") return true;
    start = end + 1;
  }
  return false;
}

absl::Status CheckJsonDepth(std::string_view text, const std::string& what) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char ch = text[i];
    if (in_string) {
      if (ch == '\\') {
        ++i;
      } else if (ch == '"') {
        in_string = false;
      }
    } else if (ch == '"') {
      in_string = true;
    } else if (ch == '[' || ch == '{') {
      if (++depth > kMaxJsonDepth) {
        return absl::InvalidArgumentError(
            absl::StrCat(what, " nests deeper than ", kMaxJsonDepth, " levels"));
      }
    } else if (ch == ']' || ch == '}') {
      --depth;
    }
  }
  return absl::OkStatus();
}

class Reader {
 public:
  explicit Reader(const std::string& bytes) : in_(bytes) {}

  absl::Status Open() {
    try {
      reader_ = std::make_unique<caffe2::serialize::PyTorchStreamReader>(&in_);
      records_ = reader_->getAllRecords();
    } catch (const std::exception& e) {
      return absl::InvalidArgumentError(
          absl::StrCat("not a readable .pt2 zip archive: ", TorchErrorStatus(e).message()));
    }
    if (records_.size() > kMaxRecords) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the archive holds ", records_.size(), " records; at most ", kMaxRecords, " allowed"));
    }
    for (const auto& r : records_) {
      names_.insert(r);
      if (UnsafePath(r)) {
        return absl::InvalidArgumentError(
            absl::StrCat("the archive holds a record with an unsafe path: '", r, "'"));
      }
    }
    return absl::OkStatus();
  }

  const std::vector<std::string>& records() const { return records_; }

  bool Has(const std::string& name) const { return names_.count(name) > 0; }

  absl::StatusOr<size_t> DeclaredSize(const std::string& name) {
    try {
      return reader_->getRecordSize(name);
    } catch (const std::exception& e) {
      return absl::InvalidArgumentError(
          absl::StrCat("record '", name, "': ", TorchErrorStatus(e).message()));
    }
  }

  // The record's bytes, after checking its declared (uncompressed) size
  // against `limit` and the running total.
  absl::StatusOr<std::pair<at::DataPtr, size_t>> Read(const std::string& name, uint64_t limit) {
    try {
      const size_t size = reader_->getRecordSize(name);
      if (size > limit) {
        return absl::InvalidArgumentError(absl::StrCat("record '", name, "' declares ", size,
                                                       " bytes; at most ", limit, " allowed"));
      }
      if (total_ + size > kMaxTotalBytes) {
        return absl::InvalidArgumentError(absl::StrCat("the archive's records declare more than ",
                                                       kMaxTotalBytes, " bytes in all (at '", name,
                                                       "')"));
      }
      total_ += size;
      auto [data, n] = reader_->getRecord(name);
      if (n != size) {
        return absl::InvalidArgumentError(
            absl::StrCat("record '", name, "' declares ", size, " bytes but holds ", n));
      }
      return std::make_pair(std::move(data), n);
    } catch (const std::exception& e) {
      return absl::InvalidArgumentError(
          absl::StrCat("reading record '", name, "': ", TorchErrorStatus(e).message()));
    }
  }

  absl::StatusOr<json> ReadJson(const std::string& name) {
    auto r = Read(name, kMaxJsonBytes);
    if (!r.ok()) return r.status();
    const std::string_view text(static_cast<const char*>(r->first.get()), r->second);
    if (absl::Status s = CheckJsonDepth(text, name); !s.ok()) return s;
    json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) {
      return absl::InvalidArgumentError(absl::StrCat("record '", name, "' is not valid JSON"));
    }
    return j;
  }

 private:
  std::istringstream in_;
  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> reader_;
  std::vector<std::string> records_;
  std::set<std::string> names_;
  uint64_t total_ = 0;
};

absl::StatusOr<int64_t> AsInt(const json& sym, const std::string& what) {
  if (sym.is_object() && sym.contains("as_int") && sym["as_int"].is_number_integer()) {
    return sym["as_int"].get<int64_t>();
  }
  return absl::InvalidArgumentError(absl::StrCat(what, " is not a concrete integer"));
}

// One entry of a payload config (data/weights or data/constants), checked
// before any tensor byte is read.
struct EntryMeta {
  std::string fqn;
  std::string record;  // "data/weights/weight_0".
  c10::ScalarType dtype = c10::kFloat;
  std::vector<int64_t> sizes, strides;
  int64_t offset = 0;
  bool empty = false;
  uint64_t needed = 0;  // Bytes of storage the sizes/strides/offset address.
  bool requires_grad = false;
};

absl::StatusOr<EntryMeta> ReadEntry(const Reader& reader, const std::string& dir,
                                    const std::string& fqn, const json& entry) {
  const std::string where = absl::StrCat(dir, " entry '", fqn, "'");
  if (!entry.is_object() || !entry.contains("path_name") || !entry["path_name"].is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(where, " has no path_name"));
  }
  if (entry.value("use_pickle", false)) {
    return absl::UnimplementedError(
        absl::StrCat(where,
                     " is a pickled tensor subclass (use_pickle); only plain tensors "
                     "are loaded"));
  }
  const std::string path = entry["path_name"].get<std::string>();
  if (UnsafePath(path) || absl::StrContains(path, '/')) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, " has an unsafe path_name '", path, "' (must be a plain file name)"));
  }
  if (!entry.contains("tensor_meta") || !entry["tensor_meta"].is_object()) {
    return absl::UnimplementedError(
        absl::StrCat(where, " is not a tensor (custom objects are not loaded)"));
  }
  const json& meta = entry["tensor_meta"];
  if (meta.value("layout", 7) != 7) {
    return absl::UnimplementedError(absl::StrCat(where, " has a non-strided layout ",
                                                 meta.value("layout", 0), "; only dense tensors"));
  }
  if (!meta.contains("dtype") || !meta["dtype"].is_number_integer()) {
    return absl::InvalidArgumentError(absl::StrCat(where, " has no dtype"));
  }
  EntryMeta e;
  e.fqn = fqn;
  e.record = absl::StrCat(dir, "/", path);
  auto dtype = SerializedScalarType(meta["dtype"].get<int64_t>());
  if (!dtype.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", dtype.status().message()));
  }
  e.dtype = *dtype;
  const json& sizes_j = meta.value("sizes", json::array());
  const json& strides_j = meta.value("strides", json::array());
  if (!sizes_j.is_array() || !strides_j.is_array() || sizes_j.size() != strides_j.size() ||
      static_cast<int64_t>(sizes_j.size()) > kMaxDims) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, " has malformed sizes/strides (arrays of equal length <= ", kMaxDims, " expected)"));
  }
  // Index of the last element addressed, in unsigned __int128 so no declared
  // shape can overflow it.
  unsigned __int128 extent = 0;
  for (size_t d = 0; d < sizes_j.size(); ++d) {
    auto s = AsInt(sizes_j[d], absl::StrCat(where, " size ", d));
    auto st = AsInt(strides_j[d], absl::StrCat(where, " stride ", d));
    if (!s.ok()) return s.status();
    if (!st.ok()) return st.status();
    if (*s < 0 || *s > kMaxDimSize || *st < 0 || *st > kMaxDimSize) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, " declares size ", *s, " stride ", *st, " at dim ", d));
    }
    if (*s == 0) e.empty = true;
    extent += static_cast<unsigned __int128>(*s > 0 ? *s - 1 : 0) * *st;
    e.sizes.push_back(*s);
    e.strides.push_back(*st);
  }
  if (meta.contains("storage_offset")) {
    auto o = AsInt(meta["storage_offset"], absl::StrCat(where, " storage_offset"));
    if (!o.ok()) return o.status();
    e.offset = *o;
  }
  if (e.offset < 0 || e.offset > kMaxDimSize) {
    return absl::InvalidArgumentError(absl::StrCat(where, " declares storage_offset ", e.offset));
  }
  const unsigned __int128 needed =
      e.empty ? 0
              : (static_cast<unsigned __int128>(e.offset) + extent + 1) * c10::elementSize(e.dtype);
  if (needed > kMaxTensorBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, " declares more than ", kMaxTensorBytes, " bytes of storage"));
  }
  e.needed = static_cast<uint64_t>(needed);
  e.requires_grad = meta.value("requires_grad", false);
  if (!reader.Has(e.record)) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, " names record '", e.record, "', which the archive does not hold"));
  }
  return e;
}

std::string Describe(const EntryMeta& e) {
  return absl::StrCat(c10::toString(e.dtype), " sizes ", c10::str(c10::IntArrayRef(e.sizes)),
                      " strides ", c10::str(c10::IntArrayRef(e.strides)), " offset ", e.offset);
}

// Every entry's metadata is checked first; then each record's declared size
// must be exactly the storage its tensors address (the largest, when
// several name one record), so no record is read that the metadata does not
// account for, a zip bomb included.
absl::Status ReadPayload(Reader& reader, const std::string& dir, const std::string& config,
                         const torch::Device& device, std::map<std::string, StoredTensor>* out) {
  const std::string name = absl::StrCat(dir, "/", config);
  if (!reader.Has(name)) return absl::OkStatus();  // No weights (or no constants) at all.
  auto j = reader.ReadJson(name);
  if (!j.ok()) return j.status();
  if (!j->is_object() || !j->contains("config") || !(*j)["config"].is_object()) {
    return absl::InvalidArgumentError(absl::StrCat("record '", name, "' has no config object"));
  }
  std::vector<EntryMeta> entries;
  std::map<std::string, const EntryMeta*> largest;
  for (const auto& [fqn, entry] : (*j)["config"].items()) {
    auto e = ReadEntry(reader, dir, fqn, entry);
    if (!e.ok()) return e.status();
    entries.push_back(*std::move(e));
  }
  for (const auto& e : entries) {
    const EntryMeta*& l = largest[e.record];
    if (l == nullptr || e.needed > l->needed) l = &e;
  }
  std::map<std::string, std::pair<at::DataPtr, size_t>> data;
  for (const auto& [record, e] : largest) {
    absl::StatusOr<size_t> declared = reader.DeclaredSize(record);
    if (!declared.ok()) return declared.status();
    if (*declared != e->needed) {
      return absl::InvalidArgumentError(absl::StrCat(dir, " entry '", e->fqn, "': record '", record,
                                                     "' holds ", *declared, " bytes, but its ",
                                                     Describe(*e), " address ", e->needed));
    }
    auto d = reader.Read(record, kMaxTensorBytes);
    if (!d.ok()) return d.status();
    data.emplace(record, *std::move(d));
  }
  for (const auto& e : entries) {
    const auto& [ptr, n] = data.at(e.record);
    const size_t elem = c10::elementSize(e.dtype);
    if (n % elem != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(dir, " entry '", e.fqn, "': record '", e.record, "' holds ", n,
                       " bytes, not a whole number of ", c10::toString(e.dtype), " elements"));
    }
    StoredTensor t;
    t.requires_grad = e.requires_grad;
    try {
      const auto options = torch::TensorOptions().dtype(e.dtype);
      torch::Tensor view =
          e.empty ? torch::empty(e.sizes, options)
                  : torch::from_blob(ptr.get(), {static_cast<int64_t>(n / elem)}, options)
                        .as_strided(e.sizes, e.strides, e.offset);
      // A copy: the record's buffer dies with the reader.
      t.tensor = view.to(device, /*non_blocking=*/false, /*copy=*/true);
    } catch (const std::exception& ex) {
      return absl::InvalidArgumentError(
          absl::StrCat(dir, " entry '", e.fqn, "': ", TorchErrorStatus(ex).message()));
    }
    out->emplace(e.fqn, std::move(t));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<c10::ScalarType> SerializedScalarType(int64_t v) {
  switch (v) {
    case 1: return c10::kByte;
    case 2: return c10::kChar;
    case 3: return c10::kShort;
    case 4: return c10::kInt;
    case 5: return c10::kLong;
    case 6: return c10::kHalf;
    case 7: return c10::kFloat;
    case 8: return c10::kDouble;
    case 9: return c10::kComplexHalf;
    case 10: return c10::kComplexFloat;
    case 11: return c10::kComplexDouble;
    case 12: return c10::kBool;
    case 13: return c10::kBFloat16;
    case 28: return c10::kUInt16;
    case 34: return c10::kUInt32;
    case 35: return c10::kUInt64;
    default: return absl::InvalidArgumentError(absl::StrCat("unknown serialized dtype ", v));
  }
}

absl::StatusOr<Pt2Archive> ReadPt2Archive(const std::string& bytes, const torch::Device& device) {
  Reader reader(bytes);
  if (absl::Status s = reader.Open(); !s.ok()) return s;
  if (reader.Has("byteorder")) {
    auto b = reader.Read("byteorder", 64);
    if (!b.ok()) return b.status();
    const std::string order(static_cast<const char*>(b->first.get()), b->second);
    if (order != "little") {
      return absl::UnimplementedError(
          absl::StrCat("the archive's byteorder is '", order, "'; only little-endian"));
    }
  }
  std::vector<std::string> models;
  for (const auto& r : reader.records()) {
    if (absl::StartsWith(r, "models/") && absl::EndsWith(r, ".json") &&
        r.find('/', 7) == std::string::npos) {
      models.push_back(r);
    }
  }
  if (models.empty()) {
    return absl::InvalidArgumentError("the archive holds no models/<name>.json program");
  }
  if (models.size() > 1) {
    return absl::UnimplementedError(
        absl::StrCat("the archive holds ", models.size(), " programs; exactly one is supported"));
  }
  Pt2Archive out;
  out.model_name = models[0].substr(7, models[0].size() - 7 - 5);
  auto program = reader.ReadJson(models[0]);
  if (!program.ok()) return program.status();
  out.program = *std::move(program);
  if (absl::Status s =
          ReadPayload(reader, "data/weights", absl::StrCat(out.model_name, "_weights_config.json"),
                      device, &out.weights);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = ReadPayload(reader, "data/constants",
                                   absl::StrCat(out.model_name, "_constants_config.json"), device,
                                   &out.constants);
      !s.ok()) {
    return s;
  }
  return out;
}

}  // namespace preflight::engine::internal::exported
