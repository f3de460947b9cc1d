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
//   SCHEME://...        a backend by URL scheme. None is built in yet: every
//                       scheme (postgresql:// comes in a later issue) is
//                       INVALID_ARGUMENT naming the scheme.
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
#include "service/store/blob_store.h"
#include "service/store/verdict_store.h"

namespace preflight::store {

struct Stores {
  std::unique_ptr<VerdictStore> verdicts;
  std::unique_ptr<BlobStore> blobs;
};

// INVALID_ARGUMENT for an empty spec or an unknown scheme (the message names
// the scheme only: a URL may carry credentials); FAILED_PRECONDITION with the
// reason when the backend cannot be opened (unwritable, corrupt).
// `max_blob_bytes` caps each stored artifact. `init_store` (--init-store)
// creates a new, empty verdict store where a used one lost its file.
absl::StatusOr<Stores> OpenStore(const std::string& spec, int64_t max_blob_bytes,
                                 bool init_store = false);

}  // namespace preflight::store
