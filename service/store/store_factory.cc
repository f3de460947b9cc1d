#include "service/store/store_factory.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "service/store/sqlite_verdict_store.h"

namespace preflight::store {
namespace {

// "postgresql" for "postgresql://u:p@h/db"; "" when the spec is a path.
std::string SchemeOf(const std::string& spec) {
  const size_t sep = spec.find("://");
  if (sep == std::string::npos || sep == 0) return "";
  for (size_t i = 0; i < sep; ++i) {
    const char c = spec[i];
    const bool ok = absl::ascii_isalpha(c) ||
                    (i > 0 && (absl::ascii_isdigit(c) || c == '+' || c == '-' || c == '.'));
    if (!ok) return "";  // A path that happens to contain "://".
  }
  return absl::AsciiStrToLower(spec.substr(0, sep));
}

absl::StatusOr<Stores> OpenDirectory(const std::string& dir, int64_t max_blob_bytes) {
  if (mkdir(dir.c_str(), 0750) != 0 && errno != EEXIST) {
    return absl::FailedPreconditionError(
        absl::StrCat("store: cannot create ", dir, ": ", std::strerror(errno)));
  }
  Stores stores;
  auto verdicts = SqliteVerdictStore::Open(dir + "/verdicts.db");
  if (!verdicts.ok()) return verdicts.status();
  stores.verdicts = *std::move(verdicts);
  auto blobs = BlobStore::Open(dir + "/blobs", max_blob_bytes);
  if (!blobs.ok()) return blobs.status();
  stores.blobs = *std::move(blobs);
  return stores;
}

}  // namespace

absl::StatusOr<Stores> OpenStore(const std::string& spec, int64_t max_blob_bytes) {
  if (spec.empty()) return absl::InvalidArgumentError("store: must not be empty");
  const std::string scheme = SchemeOf(spec);
  if (scheme.empty()) return OpenDirectory(spec, max_blob_bytes);
  return absl::InvalidArgumentError(
      absl::StrCat("store: no '", scheme, "' backend in this build (", scheme,
                   "://... is not supported yet); pass a directory for the embedded store (SQLite "
                   "verdicts + blob files)"));
}

}  // namespace preflight::store
