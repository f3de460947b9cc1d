// The service's Prometheus metrics. One instance per server, registered on a
// registry the caller owns (created in main and injected, so tests can read
// it); no global state. Every method is cheap and non-blocking: prometheus-cpp
// metrics are atomics, and no lock is held across I/O.
//
//   auto registry = std::make_shared<prometheus::Registry>();
//   ServiceMetrics metrics(*registry);
//   metrics.RecordRpc("Check", "OK", 0.12);
//
// Names follow Prometheus conventions (README "Metrics" lists them all):
// `preflight_` prefix, base units, `_total` counters, bounded label values
// only (never a job id or digest).
#pragma once

#include <memory>
#include <string>

#include "preflight/v1/report.pb.h"

namespace prometheus {
class Registry;
}

namespace preflight::server {

class ServiceMetrics {
 public:
  explicit ServiceMetrics(prometheus::Registry& registry);
  ~ServiceMetrics();

  // method: Check | Upload | GetVerdict; code: the gRPC code name.
  void RecordRpc(const std::string& method, const std::string& code, double seconds);
  // A finished check that ran (not a cache hit): verdict, finding codes,
  // and per-phase durations.
  void RecordCheck(const v1::Report& report, double queue_seconds, double total_seconds);
  void RecordCache(bool hit);
  void SetQueueDepth(int depth);
  void SetSlots(int busy, int total);
  // reason: timeout | crash | oom | sandbox (empty reasons are ignored).
  void RecordWorkerExit(const std::string& reason);
  void RecordZygoteRestart();
  void RecordUploadBytes(int64_t bytes);
  void RecordStoreError();
  // op: put | bind | get_by_digest | get_by_job_id | blob_put | blob_get |
  // claim; the latency of one store operation, failed ones included.
  void RecordStoreOperation(const std::string& op, double seconds);
  // This replica ran a check whose lease another replica held and let
  // expire (it died mid-check).
  void RecordLeaseTakeover();
  // A retention sweep deleted `blobs` blobs of `bytes` bytes; `stored_bytes`:
  // the distinct blobs still referenced afterwards.
  void RecordBlobSweep(int blobs, int64_t bytes, int64_t stored_bytes);
  // An upload or inline artifact refused by its tenant's quota.
  void RecordQuotaRefusal();
  void SetBuildInfo(const std::string& version, const std::string& torch_version,
                    const std::string& device);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace preflight::server
