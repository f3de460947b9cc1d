// Store-operation latency, PostgreSQL vs SQLite: the same VerdictStore,
// BlobStore and LeaseStore calls the server makes, on each backend opened
// through store_factory (the SQLite directory store and a postgresql:// URL).
// Driven by tools/bench/bench_fleet.py, which starts a throwaway PostgreSQL
// (tests/store/pg_cluster.sh) on loopback.
//
//   PREFLIGHT_BENCH_PG_URL=postgresql://u@127.0.0.1:P/db \
//   PREFLIGHT_BENCH_SQLITE_DIR=/tmp/x preflight_store_bench --benchmark_format=json
#include <benchmark/benchmark.h>
#include <stdlib.h>

#include <cstdio>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "service/store/sha256.h"
#include "service/store/store_factory.h"

namespace preflight::store {
namespace {

// A verdict the size of a reference-case report (a few KiB of findings,
// curve and gradient statistics).
StoredVerdict Verdict(int64_t i, const std::string& job) {
  StoredVerdict v;
  v.request_digest = Sha256Hex(absl::StrCat("bench-", i));
  v.job_id = job;
  v.report.set_verdict(v1::PASS);
  for (int k = 0; k < 300; ++k) v.report.add_loss_curve(1.0 / (k + 1));
  auto* f = v.report.add_findings();
  f->set_code(v1::OVERFIT_CONVERGED);
  f->set_message(std::string(400, 'm'));
  return v;
}

void Fail(benchmark::State& state, const absl::Status& s) {
  state.SkipWithError(std::string(s.message()).c_str());
}

void Register(const std::string& backend, Stores* stores) {
  static int64_t seq = 0;
  benchmark::RegisterBenchmark(absl::StrCat("put/", backend).c_str(), [stores](auto& state) {
    for (auto _ : state) {
      if (auto s = stores->verdicts->Put(Verdict(++seq, "")); !s.ok()) return Fail(state, s);
    }
  })->UseRealTime();
  benchmark::RegisterBenchmark(absl::StrCat("bind/", backend).c_str(), [stores](auto& state) {
    const StoredVerdict v = Verdict(++seq, "");
    if (auto s = stores->verdicts->Put(v); !s.ok()) return Fail(state, s);
    int64_t i = 0;
    for (auto _ : state) {
      if (auto s =
              stores->verdicts->Bind(absl::StrCat("bench/job-", seq, "-", ++i), v.request_digest);
          !s.ok()) {
        return Fail(state, s);
      }
    }
  })->UseRealTime();
  benchmark::RegisterBenchmark(absl::StrCat("get_by_digest/", backend).c_str(), [stores](
                                                                                    auto& state) {
    const StoredVerdict v = Verdict(++seq, "bench/get");
    if (auto s = stores->verdicts->Put(v); !s.ok()) {
      return Fail(state, s);
    }
    for (auto _ : state) {
      auto got = stores->verdicts->GetByDigest(v.request_digest);
      if (!got.ok()) return Fail(state, got.status());
    }
  })->UseRealTime();
  benchmark::RegisterBenchmark(absl::StrCat("get_by_job_id/", backend).c_str(), [stores](
                                                                                    auto& state) {
    const StoredVerdict v = Verdict(++seq, "bench/by-job");
    if (auto s = stores->verdicts->Put(v); !s.ok()) {
      return Fail(state, s);
    }
    for (auto _ : state) {
      auto got = stores->verdicts->GetByJobId("bench/by-job");
      if (!got.ok()) return Fail(state, got.status());
    }
  })->UseRealTime();
  // A new 256 KiB artifact each time (an inline model of a small network).
  benchmark::RegisterBenchmark(absl::StrCat("blob_put/", backend).c_str(), [stores](auto& state) {
    std::string bytes(256 << 10, 'b');
    for (auto _ : state) {
      const std::string tag = absl::StrCat(++seq);
      bytes.replace(0, tag.size(), tag);
      auto info = stores->blobs->Put(bytes);
      if (!info.ok()) return Fail(state, info.status());
    }
  })->UseRealTime();
  // A 4 MiB artifact opened for a job.
  benchmark::RegisterBenchmark(absl::StrCat("blob_get/", backend).c_str(), [stores](auto& state) {
    std::string bytes(4 << 20, 'g');
    const std::string tag = absl::StrCat("get-", ++seq);
    bytes.replace(0, tag.size(), tag);
    auto info = stores->blobs->Put(bytes);
    if (!info.ok()) return Fail(state, info.status());
    for (auto _ : state) {
      auto fd = stores->blobs->OpenForRead(info->sha256);
      if (!fd.ok()) return Fail(state, fd.status());
    }
  })->UseRealTime();
  // Claim and release: what a cache miss adds on a fleet store.
  benchmark::RegisterBenchmark(absl::StrCat("claim/", backend).c_str(), [stores](auto& state) {
    for (auto _ : state) {
      const std::string d = Sha256Hex(absl::StrCat("claim-", ++seq));
      auto c = stores->leases->TryClaim(d, absl::Seconds(30));
      if (!c.ok()) return Fail(state, c.status());
      if (auto s = stores->leases->Release(d); !s.ok()) return Fail(state, s);
    }
  })->UseRealTime();
}

}  // namespace
}  // namespace preflight::store

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  const char* pg = getenv("PREFLIGHT_BENCH_PG_URL");
  const char* dir = getenv("PREFLIGHT_BENCH_SQLITE_DIR");
  if (pg == nullptr || dir == nullptr) {
    std::fprintf(stderr,
                 "preflight_store_bench: set PREFLIGHT_BENCH_PG_URL and "
                 "PREFLIGHT_BENCH_SQLITE_DIR (tools/bench/bench_fleet.py does)\n");
    return 2;
  }
  auto sqlite = preflight::store::OpenStore(dir, int64_t{64} << 20);
  auto postgres = preflight::store::OpenStore(pg, int64_t{64} << 20);
  if (!sqlite.ok() || !postgres.ok()) {
    std::fprintf(stderr, "preflight_store_bench: %s %s\n",
                 std::string(sqlite.status().message()).c_str(),
                 std::string(postgres.status().message()).c_str());
    return 1;
  }
  preflight::store::Register("sqlite", &*sqlite);
  preflight::store::Register("postgres", &*postgres);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
