#include "service/store/store_factory.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "service/store/file_blob_store.h"
#include "service/store/pg_blob_ledger.h"
#include "service/store/pg_blob_store.h"
#include "service/store/pg_database.h"
#include "service/store/pg_lease_store.h"
#include "service/store/pg_verdict_store.h"
#include "service/store/sqlite_blob_ledger.h"
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

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

// A directory that was used as a store but has lost its verdict file (deleted,
// or truncated to zero bytes) must not silently become an empty store: the
// verdicts the gates rely on would be gone without a word. Evidence of use is
// what only a store writes (blobs/, SQLite's side files); other files (a log,
// lost+found) are not, so an absent or otherwise empty directory is a fresh
// store. `init_store` creates a new verdict file anyway.
absl::Status CheckVerdictFile(const std::string& dir, const std::string& db, bool init_store) {
  if (init_store) return absl::OkStatus();
  const std::string hint =
      "; restore it from a backup, or start with --init-store to begin a new, empty verdict "
      "store";
  struct stat st;
  if (stat(db.c_str(), &st) == 0) {
    if (st.st_size > 0) return absl::OkStatus();
    return absl::FailedPreconditionError(
        absl::StrCat("store: ", db, " is empty (zero bytes): its verdicts are lost", hint));
  }
  for (const std::string used :
       {dir + "/blobs", dir + "/blob_refs.db", db + "-wal", db + "-shm", db + "-journal"}) {
    if (Exists(used)) {
      return absl::FailedPreconditionError(absl::StrCat("store: ", db, " is missing, but ", dir,
                                                        " holds a used store (", used, ")", hint));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Stores> OpenDirectory(const std::string& dir, int64_t max_blob_bytes,
                                     bool init_store) {
  if (mkdir(dir.c_str(), 0750) != 0 && errno != EEXIST) {
    return absl::FailedPreconditionError(
        absl::StrCat("store: cannot create ", dir, ": ", std::strerror(errno)));
  }
  const std::string db = dir + "/verdicts.db";
  if (absl::Status s = CheckVerdictFile(dir, db, init_store); !s.ok()) return s;
  Stores stores;
  auto verdicts = SqliteVerdictStore::Open(db);
  if (!verdicts.ok()) return verdicts.status();
  stores.verdicts = *std::move(verdicts);
  auto blobs = FileBlobStore::Open(dir + "/blobs", max_blob_bytes);
  if (!blobs.ok()) return blobs.status();
  stores.blobs = *std::move(blobs);
  auto ledger = SqliteBlobLedger::Open(dir + "/blob_refs.db");
  if (!ledger.ok()) return ledger.status();
  stores.ledger = *std::move(ledger);
  stores.leases = std::make_unique<SingleReplicaLeases>();
  stores.name = dir;
  return stores;
}

absl::StatusOr<Stores> OpenPostgres(const std::string& url, int64_t max_blob_bytes) {
  auto db = PgDatabase::Open(url);
  if (!db.ok()) return db.status();
  Stores stores;
  stores.verdicts = std::make_unique<PgVerdictStore>(*db);
  stores.blobs = std::make_unique<PgBlobStore>(*db, max_blob_bytes);
  stores.leases = std::make_unique<PgLeaseStore>(*db, PgLeaseStore::NewOwnerId());
  stores.ledger = std::make_unique<PgBlobLedger>(*db);
  stores.name = (*db)->name();
  return stores;
}

}  // namespace

absl::StatusOr<Stores> OpenStore(const std::string& spec, int64_t max_blob_bytes, bool init_store) {
  if (spec.empty()) return absl::InvalidArgumentError("store: must not be empty");
  const std::string scheme = SchemeOf(spec);
  if (scheme.empty()) return OpenDirectory(spec, max_blob_bytes, init_store);
  if (scheme == "postgresql" || scheme == "postgres") return OpenPostgres(spec, max_blob_bytes);
  return absl::InvalidArgumentError(
      absl::StrCat("store: no '", scheme, "' backend in this build (", scheme,
                   "://... is not supported); pass a directory for the embedded store (SQLite "
                   "verdicts + blob files) or a postgresql:// URL for the fleet store"));
}

}  // namespace preflight::store
