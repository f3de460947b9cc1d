#include "service/server/core.h"

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <string>
#include <system_error>
#include <thread>
#include <tuple>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "service/engine/budgets.h"
#include "service/engine/config.h"
#include "service/engine/utf8.h"
#include "service/store/sha256.h"

namespace preflight::server {
namespace {

// Only a report that says it is final answers a new Check: one whose check
// never finished (timeout, crash, OOM, dead zygote: COMPLETION_TRANSIENT)
// says nothing stable about the model, and UNSPECIFIED promises nothing. It
// still answers GetVerdict.
bool Reusable(const v1::Report& report) { return report.completion() == v1::COMPLETION_FINAL; }

// How often a waiting caller is asked whether it has gone away.
constexpr absl::Duration kCallerPoll = absl::Milliseconds(50);

// How often a replica waiting for another replica's verdict looks for it
// (and for an expired lease); at most a quarter of the lease TTL.
constexpr absl::Duration kFleetPoll = absl::Milliseconds(200);

// Runs a store operation, recording its latency under `op`.
template <typename F>
auto TimedStoreOp(ServiceMetrics* metrics, const char* op, F&& f) {
  const absl::Time start = absl::Now();
  auto result = f();
  metrics->RecordStoreOperation(op, absl::ToDoubleSeconds(absl::Now() - start));
  return result;
}

// Holds a fleet claim while its check waits and runs: renews it every third
// of the TTL on its own thread, and releases it when destroyed (the verdict
// is stored, or the check was abandoned, so another replica may run it).
class LeaseHeartbeat {
 public:
  LeaseHeartbeat(store::LeaseStore* leases, std::string digest, absl::Duration ttl)
      : leases_(leases), digest_(std::move(digest)), ttl_(ttl) {
    thread_ = std::thread([this] { Loop(); });
  }
  ~LeaseHeartbeat() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
    // A database that is down cannot release it: the lease then expires.
    leases_->Release(digest_).IgnoreError();
  }

 private:
  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!cv_.wait_for(lock, absl::ToChronoMilliseconds(ttl_ / 3), [this] { return stop_; })) {
      lock.unlock();
      const absl::Status s = leases_->Renew(digest_, ttl_);
      lock.lock();
      // Lost (the database was out for longer than the TTL, and another
      // replica took the check over): this run still stores its verdict.
      if (!s.ok() && !warned_) {
        warned_ = true;
        std::fprintf(stderr, "preflight-server: renewing the lease on %s: %s\n", digest_.c_str(),
                     std::string(s.message()).c_str());
      }
    }
  }

  store::LeaseStore* leases_;
  const std::string digest_;
  const absl::Duration ttl_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  bool warned_ = false;
  std::thread thread_;
};

}  // namespace

bool PreflightCore::Caller::Gone() const {
  return absl::Now() >= deadline || (cancelled && cancelled());
}

absl::Status PreflightCore::Caller::WhyGone(const char* while_what) const {
  if (absl::Now() >= deadline) {
    return absl::DeadlineExceededError(
        absl::StrCat("the request's deadline passed while ", while_what));
  }
  return absl::CancelledError(absl::StrCat("the caller cancelled the request while ", while_what));
}

bool PreflightCore::Abandoned(InFlight* flight, const std::string& digest) {
  std::lock_guard<std::mutex> lock(mu_);
  if (flight->waiting > 0) return false;
  // Nobody waits any more: a later identical request starts its own check.
  auto it = in_flight_.find(digest);
  if (it != in_flight_.end() && it->second.get() == flight) in_flight_.erase(it);
  return true;
}

bool ValidJobId(const std::string& id) {
  if (id.empty() || id.size() > 128) return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == ':' || c == '/' || c == '-';
  });
}

PreflightCore::PreflightCore(CoreConfig config, store::BlobStore* blobs,
                             store::VerdictStore* verdicts, worker::JobRunner* runner,
                             ServiceMetrics* metrics, const crypto::Ed25519Signer* signer,
                             store::LeaseStore* leases)
    : config_(config),
      blobs_(blobs),
      verdicts_(verdicts),
      runner_(runner),
      metrics_(metrics),
      signer_(signer),
      leases_(leases != nullptr ? leases : &own_leases_) {
  metrics_->SetSlots(0, config_.job_slots);
  metrics_->SetQueueDepth(0);
}

namespace {

// Both artifacts are zip archives (torch.jit.save, torch.save): bytes that do
// not even start with a zip local-file header are a malformed request, told
// apart here without LibTorch. A zip that is not valid TorchScript still goes
// to a worker and comes back as an ERROR verdict (ARTIFACT_INVALID).
constexpr absl::string_view kZipMagic("PK\x03\x04", 4);

absl::Status CheckZipHead(absl::string_view head, const std::string& field) {
  if (absl::StartsWith(head, kZipMagic)) return absl::OkStatus();
  std::string shown;
  for (unsigned char c : head.substr(0, 4)) absl::StrAppendFormat(&shown, " %02x", c);
  return absl::InvalidArgumentError(absl::StrCat(
      field, ": not a TorchScript or torch.save archive (no zip header; starts with", shown, ")"));
}

}  // namespace

absl::StatusOr<std::string> PreflightCore::ResolveArtifact(const v1::Artifact& a, const char* field,
                                                           bool* stored_now) {
  *stored_now = false;
  switch (a.source_case()) {
    case v1::Artifact::kInline: {
      if (a.inline_().empty()) {
        return absl::InvalidArgumentError(absl::StrCat(field, ".inline: is empty"));
      }
      if (static_cast<int64_t>(a.inline_().size()) > config_.max_inline_bytes) {
        return absl::ResourceExhaustedError(absl::StrCat(
            field, ".inline: ", a.inline_().size(), " bytes is over the inline limit of ",
            config_.max_inline_bytes, "; send it with Upload and pass its sha256"));
      }
      if (absl::Status s = CheckZipHead(a.inline_(), absl::StrCat(field, ".inline")); !s.ok()) {
        return s;
      }
      auto info = TimedStoreOp(metrics_, "blob_put", [&] { return blobs_->Put(a.inline_()); });
      if (!info.ok()) {
        metrics_->RecordStoreError();
        return info.status();
      }
      *stored_now = !info->already_present;
      return info->sha256;
    }
    case v1::Artifact::kSha256: {
      if (!store::IsSha256Hex(a.sha256())) {
        return absl::InvalidArgumentError(
            absl::StrCat(field, ".sha256: expected 64 lowercase hex characters, got '",
                         engine::TruncateUtf8(a.sha256(), 80, ""), "'"));
      }
      auto head = blobs_->ReadHead(a.sha256(), 4);
      if (absl::IsNotFound(head.status())) {
        return absl::NotFoundError(
            absl::StrCat(field, ".sha256: no uploaded artifact ", a.sha256(), "; Upload it first"));
      }
      if (!head.ok()) {
        metrics_->RecordStoreError();
        return head.status();
      }
      if (absl::Status s = CheckZipHead(*head, absl::StrCat(field, ".sha256 (uploaded artifact)"));
          !s.ok()) {
        return s;
      }
      return a.sha256();
    }
    default:
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": is required (inline bytes or the sha256 of an upload)"));
  }
}

absl::StatusOr<v1::CheckResponse> PreflightCore::Check(const v1::CheckRequest& request,
                                                       absl::Time deadline, CancelledFn cancelled,
                                                       const std::string& tenant) {
  const Caller caller{deadline, std::move(cancelled)};
  const absl::Time start = absl::Now();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (draining_) return absl::UnavailableError("the server is shutting down; retry elsewhere");
  }
  if (!request.job_id().empty() && !ValidJobId(request.job_id())) {
    return absl::InvalidArgumentError(
        "job_id: must be 1..128 characters of letters, digits and ._:/-");
  }
  v1::CheckConfig config = request.config();
  engine::ApplyDefaults(&config);
  if (absl::Status s = engine::ValidateConfig(config); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("config.", s.message()));
  }
  if (config.timeout_seconds() > config_.max_job_timeout_seconds) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.timeout_seconds: at most ", config_.max_job_timeout_seconds, " on this server"));
  }
  const int max_threads =
      engine::DeriveBudgets(config.timeout_seconds(), config_.job_cpus).max_intra_op_threads;
  if (config.intra_op_threads() > max_threads) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.intra_op_threads: at most ", max_threads,
        " on this server (the CPUs a job may run on), got ", config.intra_op_threads()));
  }
  bool model_stored_now = false, batch_stored_now = false;
  auto model = ResolveArtifact(request.model(), "model", &model_stored_now);
  if (!model.ok()) return model.status();
  auto batch = ResolveArtifact(request.batch(), "batch", &batch_stored_now);
  if (!batch.ok()) return batch.status();
  // Held until this caller returns: its check's blobs outlive any sweep.
  store::BlobRetention::Pin model_pin, batch_pin;
  if (retention_ != nullptr) {
    const std::string who = tenant.empty() ? "anonymous" : tenant;
    for (auto [field, sha, stored_now, pin] :
         {std::tuple{"model", &*model, model_stored_now, &model_pin},
          std::tuple{"batch", &*batch, batch_stored_now, &batch_pin}}) {
      auto p = retention_->Use(field, who, *sha);
      if (!p.ok()) {
        if (absl::IsResourceExhausted(p.status())) {
          metrics_->RecordQuotaRefusal();
          // Inline bytes this request stored and nobody holds go again.
          retention_->DiscardRefused(*sha, !stored_now).IgnoreError();
        }
        return p.status();
      }
      *pin = *std::move(p);
    }
  }

  // The cache key: everything that determines the report. How many
  // experiments train at once changes only the report's timing.
  v1::CheckConfig keyed = config;
  keyed.clear_parallel_experiments();
  std::string normalized;
  keyed.SerializeToString(&normalized);  // Deterministic for this message (no maps).
  store::Sha256 key;
  key.Update(absl::StrCat("preflight-request-v1\n", *model, "\n", *batch, "\n",
                          runner_->engine_version(), "\n"));
  key.Update(normalized);
  const std::string digest = key.HexDigest();

  v1::CheckResponse response;
  response.set_request_digest(digest);
  // A request answered from an existing verdict binds its job id to it: a
  // binding of its own, leaving the verdict and every other job id as they are.
  auto bind_job = [&]() -> absl::Status {
    if (request.job_id().empty()) return absl::OkStatus();
    absl::Status s =
        TimedStoreOp(metrics_, "bind", [&] { return verdicts_->Bind(request.job_id(), digest); });
    if (!s.ok()) metrics_->RecordStoreError();
    return s;
  };
  auto stored =
      TimedStoreOp(metrics_, "get_by_digest", [&] { return verdicts_->GetByDigest(digest); });
  // Unsigned, or signed by a key this server no longer holds: run again.
  const bool signed_here =
      signer_ == nullptr || (stored.ok() && stored->signing_key_id == signer_->key_id());
  if (stored.ok() && Reusable(stored->report) && signed_here) {
    metrics_->RecordCache(true);
    *response.mutable_report() = stored->report;
    response.set_report_signature(stored->report_signature);
    response.set_signing_key_id(stored->signing_key_id);
    response.set_cached(true);
    if (absl::Status s = bind_job(); !s.ok()) return s;
    return response;
  }
  if (!stored.ok() && stored.status().code() != absl::StatusCode::kNotFound) {
    metrics_->RecordStoreError();
    return stored.status();
  }

  // Coalesce with an identical request already running, or start it. The
  // check runs on a thread of its own, not the first caller's: it runs while
  // any caller still waits for it (up to the job's own timeout), and every
  // caller, the first one included, waits with its own deadline and leaves
  // alone when that passes (issue 15: a follower with 60 s used to fail at
  // the first caller's 3 s).
  std::shared_ptr<InFlight> flight;
  bool first = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = in_flight_.find(digest);
    if (it != in_flight_.end()) {
      flight = it->second;
      ++flight->waiting;
    } else {
      flight = std::make_shared<InFlight>();
      flight->phase =
          leases_->shared() ? "an identical check ran on another replica" : "it was queued";
      in_flight_[digest] = flight;
      first = true;
      ++executors_;
    }
  }
  if (first) {
    Execution e{
        flight, digest,
        config, *model,
        *batch, request.job_id(),
        start,  stored.ok() ? std::optional<double>(stored->created_unix_seconds) : std::nullopt};
    try {
      std::thread([this, e] {
        Execute(e);
        std::lock_guard<std::mutex> lock(mu_);
        --executors_;
        executors_done_.notify_all();
      }).detach();
    } catch (const std::system_error&) {
      // No thread to be had: run it on the caller's, as a check once did.
      Execute(e);
      std::lock_guard<std::mutex> lock(mu_);
      --executors_;
      executors_done_.notify_all();
    }
  }
  if (absl::Status s = AwaitFlight(flight.get(), caller, first); !s.ok()) return s;
  if (!flight->report.ok()) return flight->report.status();
  if (!first) metrics_->RecordCache(true);
  *response.mutable_report() = *flight->report;
  response.set_report_signature(flight->report_signature);
  response.set_signing_key_id(flight->signing_key_id);
  response.set_cached(!first || flight->answered_elsewhere);
  // The check that ran stored its verdict (bound to the first caller's job
  // id) before it finished.
  if (!first || flight->answered_elsewhere) {
    if (absl::Status s = bind_job(); !s.ok()) return s;
  }
  return response;
}

absl::Status PreflightCore::AwaitFlight(InFlight* flight, const Caller& caller, bool first) {
  std::unique_lock<std::mutex> lock(mu_);
  while (!flight->done) {
    const absl::Duration left = caller.deadline - absl::Now();
    in_flight_done_.wait_for(lock, absl::ToChronoMilliseconds(std::max(
                                       absl::Milliseconds(1), std::min(left, kCallerPoll))));
    if (flight->done) break;
    lock.unlock();
    const bool gone = caller.Gone();  // Outside mu_: it may ask gRPC.
    lock.lock();
    if (!gone || flight->done) continue;
    --flight->waiting;
    const absl::Status why =
        caller.WhyGone(first ? flight->phase : "an identical check was running");
    // The last caller to leave waits until the check has noticed (it polls
    // every kCallerPoll): its queue place or job slot is free, its job
    // killed, by the time this call returns. Unless an identical request
    // joined meanwhile: the check then runs on for it.
    while (flight->waiting == 0 && !flight->done) {
      in_flight_done_.wait_for(lock, absl::ToChronoMilliseconds(kCallerPoll));
    }
    return why;
  }
  return absl::OkStatus();
}

void PreflightCore::Execute(const Execution& e) {
  InFlight* flight = e.flight.get();
  const std::string& digest = e.digest;
  auto finish = [&](absl::StatusOr<v1::Report> r, const std::string& signature = "",
                    const std::string& key_id = "") {
    std::lock_guard<std::mutex> lock(mu_);
    flight->report = std::move(r);
    flight->report_signature = signature;
    flight->signing_key_id = key_id;
    flight->done = true;
    auto it = in_flight_.find(digest);
    if (it != in_flight_.end() && it->second == e.flight) in_flight_.erase(it);
    in_flight_done_.notify_all();
  };
  auto set_phase = [&](const char* phase) {
    std::lock_guard<std::mutex> lock(mu_);
    flight->phase = phase;
  };
  // Polled while queued and while running: once every caller is gone, the
  // check leaves the queue or its job is killed.
  auto abandoned = [&] { return Abandoned(flight, digest); };
  const absl::Status nobody = absl::CancelledError("every caller of the check gave up");

  // Fleet-wide: another replica may be running this very check. Its verdict
  // answers this request (and those coalesced onto it) as a cache hit.
  std::optional<LeaseHeartbeat> lease;
  if (leases_->shared()) {
    auto other = ClaimOrAwait(digest, abandoned, e.before_created);
    if (!other.ok()) return finish(other.status());
    if (other->has_value()) {
      metrics_->RecordCache(true);
      const store::StoredVerdict& theirs = **other;
      {
        std::lock_guard<std::mutex> lock(mu_);
        flight->answered_elsewhere = true;
      }
      return finish(theirs.report, theirs.report_signature, theirs.signing_key_id);
    }
    lease.emplace(leases_, digest, config_.lease_ttl);
    set_phase("it was queued");
  }
  metrics_->RecordCache(false);

  const absl::Time queued_at = absl::Now();
  if (absl::Status s = AcquireSlot(abandoned); !s.ok()) return finish(s);
  if (abandoned()) {  // Gone before the slot came (a free one is taken at once).
    ReleaseSlot();
    return finish(nobody);
  }
  set_phase("its check ran");
  const double queue_seconds = absl::ToDoubleSeconds(absl::Now() - queued_at);
  v1::WorkerJob job;
  *job.mutable_config() = e.config;
  job.set_memory_limit_bytes(config_.job_memory_bytes);
  // The job gets the artifacts as open descriptors, never their store paths.
  worker::JobInputs inputs;
  for (auto [sha, fd] : {std::pair{&e.model, &inputs.model}, std::pair{&e.batch, &inputs.batch}}) {
    auto opened = TimedStoreOp(metrics_, "blob_get", [&] { return blobs_->OpenForRead(*sha); });
    if (!opened.ok()) {
      ReleaseSlot();
      metrics_->RecordStoreError();
      return finish(opened.status());
    }
    *fd = *std::move(opened);
  }
  v1::WorkerResult result = runner_->Run(job, std::move(inputs), abandoned);
  ReleaseSlot();
  metrics_->RecordWorkerExit(result.exit_reason());
  // Nobody is left to read it, and it says nothing about the model.
  if (result.exit_reason() == "cancelled") return finish(nobody);
  // The verdict is bound to the exact artifacts it was given for.
  result.mutable_report()->set_model_sha256(e.model);
  result.mutable_report()->set_batch_sha256(e.batch);
  metrics_->RecordCheck(result.report(), queue_seconds,
                        absl::ToDoubleSeconds(absl::Now() - e.start));

  store::StoredVerdict v;
  v.request_digest = digest;
  v.job_id = e.job_id;
  v.report = result.report();
  if (signer_ != nullptr) {
    // Signed once, as stored: the signature travels with the stored row, so
    // a report edited in the store no longer verifies. Serialization of a
    // Report (no map fields) is deterministic, and a client re-serializes the
    // report it received to the same bytes.
    v.report_signature = signer_->Sign(v.report.SerializeAsString());
    v.signing_key_id = signer_->key_id();
  }
  if (absl::Status s = TimedStoreOp(metrics_, "put", [&] { return verdicts_->Put(v); }); !s.ok()) {
    metrics_->RecordStoreError();
    return finish(s);
  }
  finish(std::move(*result.mutable_report()), v.report_signature, v.signing_key_id);
}

PreflightCore::~PreflightCore() {
  // Every caller has returned (the server stopped first), and the last one
  // to leave a check waited for it; this only waits out their last steps.
  std::unique_lock<std::mutex> lock(mu_);
  executors_done_.wait(lock, [this] { return executors_ == 0; });
}

absl::StatusOr<v1::GetVerdictResponse> PreflightCore::GetVerdict(
    const v1::GetVerdictRequest& request) {
  absl::StatusOr<store::StoredVerdict> v;
  switch (request.key_case()) {
    case v1::GetVerdictRequest::kJobId:
      if (!ValidJobId(request.job_id())) {
        return absl::InvalidArgumentError(
            "job_id: must be 1..128 characters of letters, digits and ._:/-");
      }
      v = TimedStoreOp(metrics_, "get_by_job_id",
                       [&] { return verdicts_->GetByJobId(request.job_id()); });
      break;
    case v1::GetVerdictRequest::kRequestDigest:
      if (!store::IsSha256Hex(request.request_digest())) {
        return absl::InvalidArgumentError("request_digest: expected 64 lowercase hex characters");
      }
      v = TimedStoreOp(metrics_, "get_by_digest",
                       [&] { return verdicts_->GetByDigest(request.request_digest()); });
      break;
    default: return absl::InvalidArgumentError("key: set job_id or request_digest");
  }
  if (!v.ok()) {
    if (!absl::IsNotFound(v.status())) metrics_->RecordStoreError();
    return v.status();
  }
  v1::GetVerdictResponse r;
  *r.mutable_report() = v->report;
  r.set_request_digest(v->request_digest);
  r.set_job_id(v->job_id);
  r.set_created_unix_seconds(v->created_unix_seconds);
  r.set_report_signature(v->report_signature);
  r.set_signing_key_id(v->signing_key_id);
  for (const store::JobBinding& b : v->bindings) {
    v1::JobBinding* out = r.add_bindings();
    out->set_request_digest(b.request_digest);
    out->set_bound_unix_seconds(b.bound_unix_seconds);
    out->set_verdict(b.verdict);
  }
  return r;
}

absl::StatusOr<std::optional<store::StoredVerdict>> PreflightCore::ClaimOrAwait(
    const std::string& digest, const std::function<bool()>& abandoned,
    std::optional<double> before_created) {
  // A verdict another replica stored for this request: a final one, or any
  // stored after this request arrived (a check that ran but did not finish
  // answers its waiters as it does in process).
  auto answered = [&](const store::StoredVerdict& v) {
    return Reusable(v.report) || !before_created || v.created_unix_seconds != *before_created;
  };
  auto lookup = [&]() -> absl::StatusOr<std::optional<store::StoredVerdict>> {
    auto v =
        TimedStoreOp(metrics_, "get_by_digest", [&] { return verdicts_->GetByDigest(digest); });
    if (v.ok() && answered(*v)) return std::optional<store::StoredVerdict>(*std::move(v));
    if (!v.ok() && !absl::IsNotFound(v.status())) {
      metrics_->RecordStoreError();
      return v.status();
    }
    return std::optional<store::StoredVerdict>();
  };
  const absl::Duration poll = std::min(kFleetPoll, config_.lease_ttl / 4);
  for (;;) {
    auto claim = TimedStoreOp(metrics_, "claim",
                              [&] { return leases_->TryClaim(digest, config_.lease_ttl); });
    if (!claim.ok()) {
      metrics_->RecordStoreError();
      return claim.status();
    }
    if (claim->granted) {
      // The holder may have stored its verdict and released the lease
      // between this request's first lookup and the claim.
      auto done = lookup();
      if (!done.ok() || done->has_value()) {
        leases_->Release(digest).IgnoreError();
        return done;
      }
      if (claim->took_over) metrics_->RecordLeaseTakeover();
      return std::optional<store::StoredVerdict>();
    }
    const absl::Time next = absl::Now() + poll;
    while (absl::Now() < next) {
      if (abandoned()) {
        return absl::CancelledError(
            "every caller gave up while an identical check ran on another replica");
      }
      absl::SleepFor(std::min(kCallerPoll, next - absl::Now()));
    }
    auto done = lookup();
    if (!done.ok() || done->has_value()) return done;
  }
}

absl::Status PreflightCore::AcquireSlot(const std::function<bool()>& abandoned) {
  std::unique_lock<std::mutex> lock(mu_);
  if (running_ < config_.job_slots) {
    ++running_;
    metrics_->SetSlots(running_, config_.job_slots);
    return absl::OkStatus();
  }
  if (queued_ >= config_.queue_size) {
    return absl::ResourceExhaustedError(
        absl::StrCat("all ", config_.job_slots, " job slots are busy and the queue of ",
                     config_.queue_size, " is full; retry in a few seconds"));
  }
  ++queued_;
  metrics_->SetQueueDepth(queued_);
  while (running_ >= config_.job_slots && !draining_) {
    slot_freed_.wait_for(lock, absl::ToChronoMilliseconds(kCallerPoll));
    if (running_ < config_.job_slots || draining_) break;
    // A slot freed while unlocked is seen by the loop's own test.
    lock.unlock();
    const bool gone = abandoned();
    lock.lock();
    if (gone) {
      --queued_;
      metrics_->SetQueueDepth(queued_);
      return absl::CancelledError("every caller gave up while the check was queued");
    }
  }
  --queued_;
  metrics_->SetQueueDepth(queued_);
  if (draining_) return absl::UnavailableError("the server is shutting down; retry elsewhere");
  ++running_;
  metrics_->SetSlots(running_, config_.job_slots);
  return absl::OkStatus();
}

void PreflightCore::ReleaseSlot() {
  std::lock_guard<std::mutex> lock(mu_);
  --running_;
  metrics_->SetSlots(running_, config_.job_slots);
  slot_freed_.notify_one();
}

void PreflightCore::StartDraining() {
  std::lock_guard<std::mutex> lock(mu_);
  draining_ = true;
  slot_freed_.notify_all();
}

int PreflightCore::running() const {
  std::lock_guard<std::mutex> lock(mu_);
  return running_;
}

int PreflightCore::queued() const {
  std::lock_guard<std::mutex> lock(mu_);
  return queued_;
}

}  // namespace preflight::server
