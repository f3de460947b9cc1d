#include "service/server/metrics.h"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <mutex>

namespace preflight::server {
namespace {

// 10 ms .. 30 min: a cache hit answers in milliseconds; the longest check a
// server admits by default runs 30 minutes.
const prometheus::Histogram::BucketBoundaries& DurationBuckets() {
  static const auto* b = new prometheus::Histogram::BucketBoundaries{
      0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800};
  return *b;
}

// 100 us .. 5 s: a loopback PostgreSQL or SQLite commit takes a millisecond or
// so; a blob of many MiB, or a database far away, seconds.
const prometheus::Histogram::BucketBoundaries& StoreBuckets() {
  static const auto* b = new prometheus::Histogram::BucketBoundaries{
      0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5};
  return *b;
}

constexpr const char* kStoreOps[] = {"put",      "bind",     "get_by_digest", "get_by_job_id",
                                     "blob_put", "blob_get", "claim"};

}  // namespace

struct ServiceMetrics::Impl {
  prometheus::Family<prometheus::Counter>& checks;
  prometheus::Family<prometheus::Counter>& findings;
  prometheus::Family<prometheus::Histogram>& check_duration;
  prometheus::Family<prometheus::Counter>& rpc_requests;
  prometheus::Family<prometheus::Histogram>& rpc_duration;
  prometheus::Gauge& queue_depth;
  prometheus::Family<prometheus::Gauge>& job_slots;
  prometheus::Family<prometheus::Counter>& worker_exits;
  prometheus::Counter& zygote_restarts;
  prometheus::Family<prometheus::Counter>& cache;
  prometheus::Counter& upload_bytes;
  prometheus::Counter& store_errors;
  prometheus::Family<prometheus::Gauge>& build_info;
  prometheus::Family<prometheus::Histogram>& store_ops;
  prometheus::Counter& lease_takeovers;
  prometheus::Counter& blobs_collected;
  prometheus::Counter& blob_bytes_collected;
  prometheus::Gauge& blob_bytes_stored;
  prometheus::Counter& quota_refusals;
};

ServiceMetrics::ServiceMetrics(prometheus::Registry& r) {
  using prometheus::BuildCounter;
  using prometheus::BuildGauge;
  using prometheus::BuildHistogram;
  impl_.reset(new Impl{
      BuildCounter()
          .Name("preflight_checks_total")
          .Help("Checks that ran to a verdict, by verdict (cache hits excluded).")
          .Register(r),
      BuildCounter()
          .Name("preflight_findings_total")
          .Help("Findings in the verdicts of checks that ran, by finding code.")
          .Register(r),
      BuildHistogram()
          .Name("preflight_check_duration_seconds")
          .Help("Time of checks that ran, by phase: queue (waiting for a job slot), load "
                "(artifact and batch loading), checks (everything the engine ran after "
                "loading), total (request to verdict).")
          .Register(r),
      BuildCounter()
          .Name("preflight_rpc_requests_total")
          .Help("RPCs served, by method and gRPC status code.")
          .Register(r),
      BuildHistogram()
          .Name("preflight_rpc_duration_seconds")
          .Help("RPC latency by method.")
          .Register(r),
      BuildGauge()
          .Name("preflight_queue_depth")
          .Help("Checks waiting for a job slot.")
          .Register(r)
          .Add({}),
      BuildGauge().Name("preflight_job_slots").Help("Job slots by state (busy, idle).").Register(r),
      BuildCounter()
          .Name("preflight_worker_exits_total")
          .Help("Job processes that ended abnormally, by reason (timeout, crash, oom, sandbox, "
                "cancelled).")
          .Register(r),
      BuildCounter()
          .Name("preflight_zygote_restarts_total")
          .Help("Times the zygote worker died and was restarted.")
          .Register(r)
          .Add({}),
      BuildCounter()
          .Name("preflight_cache_requests_total")
          .Help("Check requests by verdict-cache result (hit, miss).")
          .Register(r),
      BuildCounter()
          .Name("preflight_upload_bytes_total")
          .Help("Bytes received through Upload.")
          .Register(r)
          .Add({}),
      BuildCounter()
          .Name("preflight_store_errors_total")
          .Help("Verdict or blob store operations that failed.")
          .Register(r)
          .Add({}),
      BuildGauge()
          .Name("preflight_build_info")
          .Help("Constant 1, labelled with the server version, LibTorch version and device.")
          .Register(r),
      BuildHistogram()
          .Name("preflight_store_operation_seconds")
          .Help("Latency of verdict, blob and lease store operations, by op (put, bind, "
                "get_by_digest, get_by_job_id, blob_put, blob_get, claim).")
          .Register(r),
      BuildCounter()
          .Name("preflight_lease_takeovers_total")
          .Help("Checks this replica ran after the replica holding their lease died (the "
                "lease expired).")
          .Register(r)
          .Add({}),
      BuildCounter()
          .Name("preflight_blobs_collected_total")
          .Help("Blobs the retention sweep deleted (no tenant used them within the retention).")
          .Register(r)
          .Add({}),
      BuildCounter()
          .Name("preflight_blob_bytes_collected_total")
          .Help("Bytes of the blobs the retention sweep deleted.")
          .Register(r)
          .Add({}),
      BuildGauge()
          .Name("preflight_blob_bytes_stored")
          .Help("Bytes of the distinct blobs some tenant references (a shared blob once), as of "
                "the last retention sweep.")
          .Register(r)
          .Add({}),
      BuildCounter()
          .Name("preflight_quota_refusals_total")
          .Help("Uploads and inline artifacts refused because their tenant's blob quota is full.")
          .Register(r)
          .Add({}),
  });
  for (const char* op : kStoreOps) impl_->store_ops.Add({{"op", op}}, StoreBuckets());
  // Pre-create bounded label sets so every series exists from the start
  // (rate() and alert expressions see zeroes, not absent series).
  for (const char* v : {"PASS", "WARN", "FAIL", "ERROR"}) impl_->checks.Add({{"verdict", v}});
  for (const char* reason : {"timeout", "crash", "oom", "sandbox"}) {
    impl_->worker_exits.Add({{"reason", reason}});
  }
  for (const char* res : {"hit", "miss"}) impl_->cache.Add({{"result", res}});
  for (const char* method : {"Check", "Upload", "GetVerdict"}) {
    impl_->rpc_requests.Add({{"method", method}, {"code", "OK"}});
    impl_->rpc_duration.Add({{"method", method}}, DurationBuckets());
  }
  for (const char* phase : {"queue", "load", "checks", "total"}) {
    impl_->check_duration.Add({{"phase", phase}}, DurationBuckets());
  }
}

ServiceMetrics::~ServiceMetrics() = default;

void ServiceMetrics::RecordRpc(const std::string& method, const std::string& code, double seconds) {
  impl_->rpc_requests.Add({{"method", method}, {"code", code}}).Increment();
  impl_->rpc_duration.Add({{"method", method}}, DurationBuckets()).Observe(seconds);
}

void ServiceMetrics::RecordCheck(const v1::Report& report, double queue_seconds,
                                 double total_seconds) {
  impl_->checks.Add({{"verdict", v1::Verdict_Name(report.verdict())}}).Increment();
  for (const auto& f : report.findings()) {
    impl_->findings.Add({{"code", v1::FindingCode_Name(f.code())}}).Increment();
  }
  const auto& t = report.timing();
  auto& d = impl_->check_duration;
  d.Add({{"phase", "queue"}}, DurationBuckets()).Observe(queue_seconds);
  d.Add({{"phase", "load"}}, DurationBuckets()).Observe(t.load_seconds());
  d.Add({{"phase", "checks"}}, DurationBuckets())
      .Observe(std::max(0.0, t.total_seconds() - t.load_seconds()));
  d.Add({{"phase", "total"}}, DurationBuckets()).Observe(total_seconds);
}

void ServiceMetrics::RecordCache(bool hit) {
  impl_->cache.Add({{"result", hit ? "hit" : "miss"}}).Increment();
}

void ServiceMetrics::SetQueueDepth(int depth) { impl_->queue_depth.Set(depth); }

void ServiceMetrics::SetSlots(int busy, int total) {
  impl_->job_slots.Add({{"state", "busy"}}).Set(busy);
  impl_->job_slots.Add({{"state", "idle"}}).Set(total - busy);
}

void ServiceMetrics::RecordWorkerExit(const std::string& reason) {
  if (reason.empty()) return;
  impl_->worker_exits.Add({{"reason", reason}}).Increment();
}

void ServiceMetrics::RecordZygoteRestart() { impl_->zygote_restarts.Increment(); }

void ServiceMetrics::RecordUploadBytes(int64_t bytes) {
  impl_->upload_bytes.Increment(static_cast<double>(bytes));
}

void ServiceMetrics::RecordStoreError() { impl_->store_errors.Increment(); }

void ServiceMetrics::RecordStoreOperation(const std::string& op, double seconds) {
  impl_->store_ops.Add({{"op", op}}, StoreBuckets()).Observe(seconds);
}

void ServiceMetrics::RecordLeaseTakeover() { impl_->lease_takeovers.Increment(); }

void ServiceMetrics::RecordBlobSweep(int blobs, int64_t bytes, int64_t stored_bytes) {
  impl_->blobs_collected.Increment(blobs);
  impl_->blob_bytes_collected.Increment(static_cast<double>(bytes));
  impl_->blob_bytes_stored.Set(static_cast<double>(stored_bytes));
}

void ServiceMetrics::RecordQuotaRefusal() { impl_->quota_refusals.Increment(); }

void ServiceMetrics::SetBuildInfo(const std::string& version, const std::string& torch_version,
                                  const std::string& device) {
  impl_->build_info
      .Add({{"version", version}, {"torch_version", torch_version}, {"device", device}})
      .Set(1);
}

}  // namespace preflight::server
