// preflight-server: flags -> ServerConfig -> Start -> wait for SIGTERM ->
// drain -> exit 0.
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include <prometheus/exposer.h>
#include <prometheus/registry.h>
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"

#include "service/server/auth.h"
#include "service/server/host_memory.h"
#include "service/server/server.h"
#include "service/worker/child_process.h"

ABSL_FLAG(std::string, address, "127.0.0.1:50051",
          "HOST:PORT to serve gRPC on; port 0 picks a free port (printed at start)");
ABSL_FLAG(std::string, metrics_address, "127.0.0.1:9464",
          "HOST:PORT serving Prometheus metrics at /metrics; port 0 picks a free port "
          "(printed at start); empty disables");
ABSL_FLAG(std::string, store, "preflight-store",
          "where verdicts and uploaded artifacts live: a directory (SQLite verdicts.db + "
          "blobs/, created if absent), or postgresql://USER[:PASSWORD]@HOST[:PORT]/DB for the "
          "fleet store every replica shares (verdicts, artifacts and leases)");
ABSL_FLAG(bool, init_store, false,
          "create a new, empty verdict store in a --store directory that is in use but has "
          "lost its verdicts.db (missing or zero bytes), which is otherwise a start-up error; "
          "an absent or empty directory needs no flag");
ABSL_FLAG(std::string, worker, "", "path of preflight-worker (default: next to this binary)");
ABSL_FLAG(int, job_slots, 0, "checks running at once; 0 = one per CPU this process may use");
ABSL_FLAG(int, queue_size, 16, "checks waiting for a slot before RESOURCE_EXHAUSTED");
ABSL_FLAG(int64_t, max_inline_mb, 16, "largest inline artifact in a Check request, MiB");
ABSL_FLAG(int64_t, max_upload_mb, 2048, "largest uploaded artifact, MiB");
ABSL_FLAG(int64_t, job_memory_mb, 8192, "address-space limit of each job process, MiB");
ABSL_FLAG(double, max_job_timeout, 1800, "largest per-check timeout a request may ask, s");
ABSL_FLAG(double, grace, 30, "on SIGTERM: seconds running checks may take to finish");
ABSL_FLAG(double, lease_ttl, 30,
          "fleet store: seconds a replica's claim on a running check lasts without renewal "
          "(renewed every third of it); how long other replicas wait before running the check "
          "of a replica that died");
ABSL_FLAG(double, worker_heartbeat_timeout, 5,
          "seconds the zygote worker may go without answering the server's heartbeat (pings "
          "every fifth of it) before it is killed with its jobs and restarted: its checks get "
          "WORKER_CRASHED and health is NOT_SERVING until the new one is up; 0 disables");
ABSL_FLAG(bool, require_landlock, false,
          "refuse to start on a kernel without Landlock (jobs would then be confined by "
          "seccomp and rlimits only)");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate chain of the gRPC port: with --tls-key, the port speaks TLS only");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls-cert");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA bundle: clients must present a certificate it signed (mutual TLS); needs "
          "--tls-cert");
ABSL_FLAG(std::string, tokens, "",
          "tokens file (TOKEN TENANT ROLE [JOB-ID-PREFIX...] per line): every RPC needs "
          "`authorization: Bearer TOKEN`; a tenant binds and reads only its own job ids. "
          "Empty: no authentication");
ABSL_FLAG(std::string, signing_key, "",
          "PEM Ed25519 private key: every stored verdict is signed with it (clients check "
          "with --verify-key)");
ABSL_FLAG(std::string, health_address, "",
          "HOST:PORT of a plaintext listener serving only the gRPC health service, for probes "
          "that cannot speak TLS (the kubelet's); port 0 picks one (printed at start); empty: "
          "none");
ABSL_FLAG(int64_t, tenant_quota_mb, 0,
          "blob bytes each tenant may hold (uploads and inline artifacts it used within the "
          "retention; a blob shared by tenants counts against each), MiB; 0 = unlimited");
ABSL_FLAG(std::string, tenant_quotas, "",
          "per-tenant overrides of --tenant-quota-mb: TENANT=MB[,TENANT=MB...] (0 = unlimited)");
ABSL_FLAG(double, blob_retention_days, 0,
          "delete blobs no tenant used for this many days (verdicts stay); 0 = keep forever");
ABSL_FLAG(double, blob_sweep_interval, 3600,
          "seconds between retention sweeps (one also runs at start-up)");

namespace {

// Flags may be spelled with dashes (--job-slots, as in the docs and the
// issue tracker) or underscores (--job_slots, Abseil's own spelling).
std::vector<char*> DashesToUnderscores(int argc, char** argv, std::vector<std::string>* store) {
  store->reserve(argc);
  std::vector<char*> out;
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    if (i > 0 && a.size() > 2 && a.rfind("--", 0) == 0) {
      const size_t end = std::min(a.find('='), a.size());
      std::replace(a.begin() + 2, a.begin() + static_cast<std::ptrdiff_t>(end), '-', '_');
    }
    store->push_back(std::move(a));
    out.push_back(store->back().data());
  }
  return out;
}

// --help: this binary's own flags, dashed as documented, exit 0. (Abseil's
// built-in --help exits 1 and matches flags by source-file name.)
[[noreturn]] void PrintHelp() {
  std::printf("%s\n\nFlags (dashes and underscores are interchangeable):\n",
              std::string(absl::ProgramUsageMessage()).c_str());
  std::map<std::string, const absl::CommandLineFlag*> own;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (absl::EndsWith(flag->Filename(), "server_main.cc")) own[std::string(name)] = flag;
  }
  for (const auto& [name, flag] : own) {
    std::string dashed = name;
    std::replace(dashed.begin(), dashed.end(), '_', '-');
    std::printf("  --%-20s %s (default: \"%s\")\n", dashed.c_str(), flag->Help().c_str(),
                flag->DefaultValue().c_str());
  }
  std::exit(0);
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Serves Preflight checks over gRPC.\n  preflight-server --address 127.0.0.1:0 --store DIR");
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0) PrintHelp();
  }
  std::vector<std::string> arg_store;
  std::vector<char*> args = DashesToUnderscores(argc, argv, &arg_store);
  absl::ParseCommandLine(static_cast<int>(args.size()), args.data());

  // Block the stop signals in every thread; main waits for them below.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  signal(SIGPIPE, SIG_IGN);

  preflight::server::ServerConfig config;
  config.address = absl::GetFlag(FLAGS_address);
  config.store = absl::GetFlag(FLAGS_store);
  config.init_store = absl::GetFlag(FLAGS_init_store);
  config.worker_binary = absl::GetFlag(FLAGS_worker);
  config.max_upload_bytes = absl::GetFlag(FLAGS_max_upload_mb) << 20;
  config.require_landlock = absl::GetFlag(FLAGS_require_landlock);
  config.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  config.tls_key_file = absl::GetFlag(FLAGS_tls_key);
  config.tls_client_ca_file = absl::GetFlag(FLAGS_tls_client_ca);
  config.tokens_file = absl::GetFlag(FLAGS_tokens);
  config.signing_key_file = absl::GetFlag(FLAGS_signing_key);
  config.health_address = absl::GetFlag(FLAGS_health_address);
  config.tenant_quota_bytes = absl::GetFlag(FLAGS_tenant_quota_mb) << 20;
  for (absl::string_view item :
       absl::StrSplit(absl::GetFlag(FLAGS_tenant_quotas), ',', absl::SkipEmpty())) {
    std::pair<std::string, std::string> kv = absl::StrSplit(item, absl::MaxSplits('=', 1));
    int64_t mb = -1;
    if (kv.first.empty() || !absl::SimpleAtoi(kv.second, &mb) || mb < 0) {
      std::cerr << "preflight-server: --tenant-quotas: expected TENANT=MB, got '" << item << "'\n";
      return 1;
    }
    config.tenant_quota_overrides[kv.first] = mb << 20;
  }
  config.blob_retention = absl::Seconds(absl::GetFlag(FLAGS_blob_retention_days) * 86400);
  config.blob_sweep_interval = absl::Seconds(absl::GetFlag(FLAGS_blob_sweep_interval));
  config.core.job_slots = absl::GetFlag(FLAGS_job_slots);
  config.core.job_cpus = preflight::worker::UsableCpus();
  if (config.core.job_slots == 0) config.core.job_slots = config.core.job_cpus;
  config.core.queue_size = absl::GetFlag(FLAGS_queue_size);
  config.core.max_inline_bytes = absl::GetFlag(FLAGS_max_inline_mb) << 20;
  config.core.job_memory_bytes = absl::GetFlag(FLAGS_job_memory_mb) << 20;
  config.core.max_job_timeout_seconds = absl::GetFlag(FLAGS_max_job_timeout);
  config.core.lease_ttl = absl::Seconds(absl::GetFlag(FLAGS_lease_ttl));
  config.worker_heartbeat_timeout = absl::Seconds(absl::GetFlag(FLAGS_worker_heartbeat_timeout));

  // The registry lives here and is injected: no global metrics state.
  auto registry = std::make_shared<prometheus::Registry>();
  std::unique_ptr<prometheus::Exposer> exposer;
  const std::string metrics_address = absl::GetFlag(FLAGS_metrics_address);
  if (!metrics_address.empty()) {
    try {
      exposer = std::make_unique<prometheus::Exposer>(metrics_address);
    } catch (const std::exception& e) {
      std::cerr << "preflight-server: --metrics_address " << metrics_address << ": " << e.what()
                << "\n";
      return 1;
    }
    exposer->RegisterCollectable(registry);
  }
  auto server = preflight::server::Server::Start(config, *registry);
  if (!server.ok()) {
    std::cerr << "preflight-server: " << server.status().message() << "\n";
    return 1;
  }
  if (exposer) {
    std::printf("preflight-server metrics on port %d\n", exposer->GetListeningPorts().at(0));
  }
  if ((*server)->health_port() > 0) {
    std::printf("preflight-server health on port %d\n", (*server)->health_port());
  }
  // Printed last: scripts wait for this line.
  std::printf("preflight-server listening on port %d\n", (*server)->port());
  std::fflush(stdout);
  std::fprintf(stderr, "preflight-server: store %s\n", (*server)->store_name().c_str());
  std::fprintf(stderr, "preflight-server: zygote worker pid %d ready in %.2f s (LibTorch load)\n",
               (*server)->worker_pid(), (*server)->worker_start_seconds());
  if ((*server)->landlock_abi() > 0) {
    std::fprintf(stderr, "preflight-server: job sandbox: Landlock ABI %d, seccomp, rlimits\n",
                 (*server)->landlock_abi());
  } else {
    std::fprintf(stderr,
                 "preflight-server: WARNING: this kernel has no Landlock; jobs are "
                 "confined by seccomp and rlimits only (--require_landlock refuses)\n");
  }

  const bool loopback = preflight::server::IsLoopbackAddress(config.address);
  if (!(*server)->authenticates() && !loopback) {
    std::fprintf(stderr,
                 "preflight-server: WARNING: listening on %s without authentication: anyone "
                 "who reaches it may read every verdict and bind any job id (use --tokens and "
                 "--tls-cert/--tls-key)\n",
                 config.address.c_str());
  } else if ((*server)->authenticates() && !(*server)->tls() && !loopback) {
    std::fprintf(stderr,
                 "preflight-server: WARNING: bearer tokens travel in plaintext on %s (use "
                 "--tls-cert/--tls-key)\n",
                 config.address.c_str());
  }
  std::fprintf(
      stderr, "preflight-server: %s, %s, %s\n",
      (*server)->tls() ? (config.tls_client_ca_file.empty() ? "TLS" : "mutual TLS") : "plaintext",
      (*server)->authenticates() ? "bearer tokens required" : "no authentication",
      (*server)->signing_key_id().empty()
          ? "verdicts unsigned"
          : ("verdicts signed by " + (*server)->signing_key_id()).c_str());
  if (const absl::Status integrity = (*server)->store_integrity(); absl::IsDataLoss(integrity)) {
    std::fprintf(stderr, "preflight-server: WARNING: store integrity: %s\n",
                 std::string(integrity.message()).c_str());
  }

  if (const std::string w = preflight::server::MemoryOvercommitWarning(
          config.core.job_slots, config.core.job_memory_bytes,
          preflight::server::HostMemoryBytes());
      !w.empty()) {
    std::fprintf(stderr, "preflight-server: WARNING: %s\n", w.c_str());
  }

  int sig = 0;
  sigwait(&stop, &sig);
  std::fprintf(stderr, "preflight-server: signal %d, draining for up to %.0f s\n", sig,
               absl::GetFlag(FLAGS_grace));
  (*server)->Shutdown(absl::Seconds(absl::GetFlag(FLAGS_grace)));
  return 0;
}
