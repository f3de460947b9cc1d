// Opens the service's stores from one `--store` spec, so the server knows the
// store interfaces and never a backend's type.
//
// Specs:
//   DIR                 a directory (created if absent): SQLite verdicts at
//                       DIR/verdicts.db, artifacts at DIR/blobs/<sha256>.
//                       An absent or empty DIR is a new store; a DIR that
//                       holds anything but has no verdicts.db, or a
//                       zero-length one, is FAILED_PRECONDITION naming the
//                       file (its verdicts were lost) unless `init_store`.
//   postgresql://USER[:PASSWORD]@HOST[:PORT]/DB (or postgres://...; any libpq
//                       connection URI): the fleet store, verdicts, blobs
//                       and leases in one PostgreSQL database shared by
//                       every replica; the schema is created or migrated at
//                       start. Unreachable at start: UNAVAILABLE naming the
//                       store (never the password).
//   SCHEME://...        any other scheme is INVALID_ARGUMENT naming the scheme.
// A new backend: implement VerdictStore in its own files and target, pass the
// conformance suite (tests/store/verdict_store_conformance.h), add its scheme
// here.
//
//   auto stores = OpenStore("/var/lib/preflight", max_upload_bytes);
//   if (!stores.ok()) ... // a start-up error, with the reason
//   PreflightCore core(config, stores->blobs.get(), stores->verdicts.get(), ...);
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "service/store/blob_ledger.h"
#include "service/store/blob_store.h"
#include "service/store/lease_store.h"
#include "service/store/verdict_store.h"

namespace preflight::store {

struct Stores {
  std::unique_ptr<VerdictStore> verdicts;
  std::unique_ptr<BlobStore> blobs;
  // Claims on running checks: shared by the fleet for PostgreSQL; for a
  // directory, SingleReplicaLeases (one process uses it).
  std::unique_ptr<LeaseStore> leases;
  // Who uses which blob (quotas, retention): DIR/blob_refs.db for a
  // directory, the blob_refs table for PostgreSQL.
  std::unique_ptr<BlobLedger> ledger;
  // The store as logs name it: the directory, or postgresql://USER@HOST:PORT/DB
  // (no password).
  std::string name;
};

// INVALID_ARGUMENT for an empty spec or an unknown scheme (the message names
// the scheme only: a URL may carry credentials); FAILED_PRECONDITION with the
// reason when the backend cannot be opened (unwritable, corrupt).
// `max_blob_bytes` caps each stored artifact. `init_store` (--init-store)
// creates a new, empty verdict store where a used one lost its file.
absl::StatusOr<Stores> OpenStore(const std::string& spec, int64_t max_blob_bytes,
                                 bool init_store = false);

}  // namespace preflight::store
