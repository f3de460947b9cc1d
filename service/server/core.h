// The service's logic, free of gRPC types: request validation, artifact
// resolution, the verdict cache, admission control and job execution. The
// gRPC adapter (server.h) only translates.
//
//   PreflightCore core(config, blobs, verdicts, runner);
//   absl::StatusOr<v1::CheckResponse> r = core.Check(request, deadline);
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "preflight/v1/preflight.pb.h"
#include "service/crypto/signature.h"
#include "service/server/metrics.h"
#include "service/store/blob_retention.h"
#include "service/store/blob_store.h"
#include "service/store/lease_store.h"
#include "service/store/verdict_store.h"
#include "service/worker/worker_pool.h"

namespace preflight::server {

struct CoreConfig {
  int job_slots = 2;                    // Checks running at once.
  int queue_size = 16;                  // Checks waiting for a slot; beyond: RESOURCE_EXHAUSTED.
  int64_t max_inline_bytes = 16 << 20;  // Per inline artifact.
  int64_t job_memory_bytes = int64_t{8} << 30;  // RLIMIT_AS of each job.
  double max_job_timeout_seconds = 1800;        // Cap on a request's timeout.
  // CPUs a job may run on (the server's own affinity, as the zygote's jobs
  // inherit it): bounds config.intra_op_threads through engine::DeriveBudgets.
  int job_cpus = 1;
  // How long a fleet claim on a running check lasts without renewal (it is
  // renewed every third of it while the check waits for a slot and runs):
  // the time another replica waits before it runs the check of a replica
  // that died. Only a store shared by several replicas has leases.
  absl::Duration lease_ttl = absl::Seconds(30);
};

class PreflightCore {
 public:
  // All pointers must outlive the core; `metrics` receives every outcome.
  // With a `signer`, every verdict is signed when it is stored (the
  // signature over its serialized report is stored with it and returned by
  // Check and GetVerdict), and a stored verdict not signed by this key is
  // not reused: Check runs it again, so it comes back signed.
  // `leases` (from the same store as `verdicts`) makes identical requests run
  // once across every replica sharing the store; null: this process is the
  // only one (identical requests are still coalesced in process).
  PreflightCore(CoreConfig config, store::BlobStore* blobs, store::VerdictStore* verdicts,
                worker::JobRunner* runner, ServiceMetrics* metrics,
                const crypto::Ed25519Signer* signer = nullptr, store::LeaseStore* leases = nullptr);
  // Waits for the last checks' threads to end (their callers have returned).
  ~PreflightCore();

  // Whether the caller has gone away (its RPC was cancelled). Polled while
  // the check waits or runs, from the calling thread; may be empty.
  using CancelledFn = std::function<bool()>;

  // Runs or serves from cache. INVALID_ARGUMENT naming the field for bad
  // requests; NOT_FOUND for an unknown digest; RESOURCE_EXHAUSTED when slots
  // and queue are full; UNAVAILABLE while draining. Identical requests in
  // flight run once, each caller keeping its own deadline: one that gives up
  // (`deadline` passes: DEADLINE_EXCEEDED; `cancelled`: CANCELLED) returns
  // at once, alone, while the check runs on for the others; once no caller
  // waits, the check leaves the queue or its job is killed (and nothing is
  // stored), and the last caller's return waits for that (its slot is free).
  //
  // With retention set, the model and batch blobs are charged to `tenant`
  // (empty: "anonymous", a server without --tokens) and pinned until Check
  // returns, so no retention sweep deletes them meanwhile; an artifact over
  // the tenant's quota is RESOURCE_EXHAUSTED naming the field.
  absl::StatusOr<v1::CheckResponse> Check(const v1::CheckRequest& request, absl::Time deadline,
                                          CancelledFn cancelled = nullptr,
                                          const std::string& tenant = "");
  absl::StatusOr<v1::GetVerdictResponse> GetVerdict(const v1::GetVerdictRequest& request);

  // New Checks get UNAVAILABLE; running ones finish.
  void StartDraining();

  store::BlobStore* blobs() { return blobs_; }
  // Quotas and retention (store/blob_retention.h); null (the default): no
  // accounting. Set before the first Check; must outlive the core.
  void set_retention(store::BlobRetention* retention) { retention_ = retention; }
  store::BlobRetention* retention() { return retention_; }

  // For metrics and tests.
  int running() const;
  int queued() const;

 private:
  struct Caller {
    absl::Time deadline;
    CancelledFn cancelled;
    bool Gone() const;
    // DEADLINE_EXCEEDED or CANCELLED, "... while <while_what>".
    absl::Status WhyGone(const char* while_what) const;
  };
  struct InFlight;
  // What a check's own thread needs (copied: its first caller may be gone).
  struct Execution {
    std::shared_ptr<InFlight> flight;
    std::string digest;
    v1::CheckConfig config;    // Defaults applied, validated.
    std::string model, batch;  // Blob sha256s.
    std::string job_id;        // The first caller's; bound by the stored verdict.
    absl::Time start;          // When the first caller arrived.
    // The creation time of the verdict stored when it arrived, if any.
    std::optional<double> before_created;
  };

  // The artifact's blob sha256, storing inline bytes; `stored_now`: whether
  // this call stored them (they were not stored before).
  absl::StatusOr<std::string> ResolveArtifact(const v1::Artifact& a, const char* field,
                                              bool* stored_now);
  // The check's own thread: runs it (or takes another replica's verdict)
  // and finishes `e.flight` on every path.
  void Execute(const Execution& e);
  // Waits for `flight` until it is done (OK) or `caller` is gone (its
  // status, naming the phase the check was in for its first caller).
  absl::Status AwaitFlight(InFlight* flight, const Caller& caller, bool first);
  // Waits for a slot while `abandoned` is false.
  absl::Status AcquireSlot(const std::function<bool()>& abandoned);
  void ReleaseSlot();
  // True (and forever after) once every caller of `flight` is gone; the
  // flight then leaves in_flight_.
  bool Abandoned(InFlight* flight, const std::string& digest);
  // Claims `digest` fleet-wide, or waits for the verdict of the replica that
  // holds it: nullopt once this replica holds the claim (it runs the check);
  // the other replica's report when it stored one (a final one, or any
  // verdict stored since `before_created`, the creation time of the verdict
  // stored when this request arrived, if any). Claims again whenever the
  // holder's lease has expired: it died.
  absl::StatusOr<std::optional<store::StoredVerdict>> ClaimOrAwait(
      const std::string& digest, const std::function<bool()>& abandoned,
      std::optional<double> before_created);

  CoreConfig config_;
  store::BlobStore* blobs_;
  store::VerdictStore* verdicts_;
  worker::JobRunner* runner_;
  ServiceMetrics* metrics_;
  const crypto::Ed25519Signer* signer_;
  store::SingleReplicaLeases own_leases_;
  store::LeaseStore* leases_;
  store::BlobRetention* retention_ = nullptr;

  // Identical requests in flight run once, on a thread of their own; every
  // caller waits for it. Guarded by mu_.
  struct InFlight {
    bool done = false;
    absl::StatusOr<v1::Report> report = absl::UnknownError("pending");
    std::string report_signature, signing_key_id;  // Of `report`, when signed.
    bool answered_elsewhere = false;               // Another replica's stored verdict.
    int waiting = 1;                               // Callers still waiting, the first included.
    const char* phase = "it was queued";           // For the first caller's WhyGone.
  };
  std::map<std::string, std::shared_ptr<InFlight>> in_flight_;  // Guarded by mu_.
  std::condition_variable in_flight_done_;
  int executors_ = 0;  // Checks' threads not yet ended; guarded by mu_.
  std::condition_variable executors_done_;

  mutable std::mutex mu_;
  std::condition_variable slot_freed_;
  int running_ = 0;
  int queued_ = 0;
  bool draining_ = false;
};

// True for 1..128 chars of [A-Za-z0-9._:/-].
bool ValidJobId(const std::string& id);

}  // namespace preflight::server
