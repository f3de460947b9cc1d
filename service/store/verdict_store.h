// Durable verdicts: one report per request digest, and job ids bound to
// digests. Bindings are data, never overwritten: any number of job ids may
// point at one digest, and rebinding a job id (a fixed model re-checked
// under the same id) appends to its history; the latest binding is the one
// a gate reads.
//
// The interface every backend implements (sqlite_verdict_store.h, embedded;
// pg_verdict_store.h, shared by a fleet) and the only verdict-store type the server and its
// tests see: they get one from store_factory.h. Every backend passes the
// conformance suite in tests/store/verdict_store_conformance.h.
//
// Contract, for every implementation: thread-safe; a Put that returned OK is
// durable (survives a crash of the process); the report comes back
// byte-for-byte as stored, with its signature; a stored report that no
// longer matches what was stored (edited in the database, a flipped bit) is
// never returned: reading it is DATA_LOSS naming its request digest.
//
//   auto stores = OpenStore("/var/lib/preflight");
//   (*stores).verdicts->Put({digest, job_id, report});
//   (*stores).verdicts->Bind("train/run-43", digest);   // a second job, same check
//   auto v = (*stores).verdicts->GetByJobId("train/run-42");
//   v->bindings  // every digest run-42 pointed at, oldest first
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "preflight/v1/report.pb.h"

namespace preflight::store {

// One binding of a job id to a request digest.
struct JobBinding {
  std::string request_digest;
  double bound_unix_seconds = 0;
  v1::Verdict verdict = v1::VERDICT_UNSPECIFIED;  // Of that digest's stored report.
};

struct StoredVerdict {
  // Hex SHA-256 of the request (PreflightCore's cache key).
  std::string request_digest;
  // Put: the job id to bind (may be empty). GetByJobId: the id asked for;
  // GetByDigest: the job id most recently bound to this digest, if any.
  std::string job_id;
  v1::Report report;
  double created_unix_seconds = 0;
  // The server's Ed25519 signature over the serialized report and the id of
  // its key (crypto/signature.h); empty when the server signs nothing.
  // Stored and returned as given.
  std::string report_signature;
  std::string signing_key_id;
  // GetByJobId only: every binding of the job id, oldest first; the last one
  // is the verdict returned. More than one means the id was rebound.
  std::vector<JobBinding> bindings;
};

class VerdictStore {
 public:
  virtual ~VerdictStore() = default;
  // Stores (or replaces) the verdict for a digest and, when a job id is
  // given, binds it as Bind does, atomically with the verdict.
  // `created_unix_seconds` <= 0 means now.
  virtual absl::Status Put(const StoredVerdict& verdict) = 0;
  // Points a job id at the stored verdict of `digest`. A binding that
  // changes the job id's digest is appended to its history; binding it to
  // the digest it already points at changes nothing. Other job ids bound to
  // the same digest are untouched. NOT_FOUND when no verdict is stored for
  // the digest.
  virtual absl::Status Bind(const std::string& job_id, const std::string& digest) = 0;
  // NOT_FOUND when absent.
  virtual absl::StatusOr<StoredVerdict> GetByDigest(const std::string& digest) = 0;
  // The verdict of the job id's latest binding, with its binding history;
  // NOT_FOUND when the id was never bound.
  virtual absl::StatusOr<StoredVerdict> GetByJobId(const std::string& job_id) = 0;
  // Verifies every stored report against the digest recorded when it was
  // stored: OK, or DATA_LOSS naming the request digests whose reports no
  // longer match. The server runs it at start and reports the result.
  // UNIMPLEMENTED for a backend that keeps no such digests.
  virtual absl::Status CheckIntegrity() {
    return absl::UnimplementedError("this verdict store keeps no report digests");
  }
};

}  // namespace preflight::store
