// A bounded load generator for preflight-server on loopback: N concurrent
// clients send M Check requests in total over gRPC (no CLI start-up in the
// measurement), mixing distinct requests (cache misses) with repeats (hits).
// Every response is verified to be this request's own verdict: its config
// carries the request's seed and its verdict is the case's expected one.
//
// Usage: preflight_load --server HOST:PORT [--clients 16] [--requests 200]
//          [--distinct 60] [--seed-offset 0]
//          --case MODEL.pt,BATCH.pt,VERDICT[,LOSS] [--case ...]
// Request i uses seed (i % distinct) + seed-offset; a new offset makes every
// request a cache miss on a server that saw earlier runs.
// Prints one JSON object: latency percentiles, throughput, hits, errors.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_split.h"
#include "preflight/v1/preflight.grpc.pb.h"

namespace {

struct Case {
  std::string model, batch, loss;
  preflight::v1::Verdict expected;
  std::string model_sha, batch_sha;  // Set when the artifact went through Upload.
};

// Artifacts over this travel by Upload + digest, as the CLI sends them.
constexpr size_t kInlineMax = 4 << 20;

std::string Upload(preflight::v1::Preflight::Stub* stub, const std::string& bytes) {
  grpc::ClientContext ctx;
  preflight::v1::UploadResponse resp;
  auto writer = stub->Upload(&ctx, &resp);
  for (size_t off = 0; off < bytes.size(); off += 1 << 20) {
    preflight::v1::UploadRequest req;
    req.set_chunk(bytes.substr(off, 1 << 20));
    if (!writer->Write(req)) break;
  }
  writer->WritesDone();
  const grpc::Status s = writer->Finish();
  if (!s.ok()) {
    std::fprintf(stderr, "upload failed: %s\n", s.error_message().c_str());
    std::exit(1);
  }
  return resp.sha256();
}

void SetArtifact(preflight::v1::Artifact* a, const std::string& bytes, const std::string& sha) {
  if (!sha.empty()) {
    a->set_sha256(sha);
  } else {
    a->set_inline_(bytes);
  }
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

int main(int argc, char** argv) {
  std::string server;
  int clients = 16, requests = 200, distinct = 60, seed_offset = 0;
  std::vector<Case> cases;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--server")
      server = value;
    else if (flag == "--clients")
      clients = std::atoi(value.c_str());
    else if (flag == "--requests")
      requests = std::atoi(value.c_str());
    else if (flag == "--distinct")
      distinct = std::atoi(value.c_str());
    else if (flag == "--seed-offset")
      seed_offset = std::atoi(value.c_str());
    else if (flag == "--case") {
      std::vector<std::string> p = absl::StrSplit(value, ',');
      if (p.size() < 3) return std::fprintf(stderr, "bad --case %s\n", value.c_str()), 2;
      preflight::v1::Verdict v;
      if (!preflight::v1::Verdict_Parse(p[2], &v)) return std::fprintf(stderr, "bad verdict\n"), 2;
      cases.push_back({Slurp(p[0]), Slurp(p[1]), p.size() > 3 ? p[3] : "", v});
    } else {
      return std::fprintf(stderr, "unknown flag %s\n", flag.c_str()), 2;
    }
  }
  if (server.empty() || cases.empty() || clients < 1 || requests < 1 || distinct < 1) {
    std::fprintf(stderr, "usage: %s --server HOST:PORT --case MODEL,BATCH,VERDICT[,LOSS] ...\n",
                 argv[0]);
    return 2;
  }

  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(64 << 20);
  {
    auto stub = preflight::v1::Preflight::NewStub(
        grpc::CreateCustomChannel(server, grpc::InsecureChannelCredentials(), args));
    for (Case& k : cases) {
      if (k.model.size() > kInlineMax) k.model_sha = Upload(stub.get(), k.model);
      if (k.batch.size() > kInlineMax) k.batch_sha = Upload(stub.get(), k.batch);
    }
  }
  std::atomic<int> next{0}, errors{0}, mismatches{0}, hits{0};
  std::mutex mu;
  std::vector<double> latencies;
  std::string first_problem;
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      // One channel per client, as separate submitters would have.
      auto stub = preflight::v1::Preflight::NewStub(
          grpc::CreateCustomChannel(server, grpc::InsecureChannelCredentials(), args));
      for (int i = next++; i < requests; i = next++) {
        const int key = i % distinct;  // Repeats of a key are cache hits.
        const Case& k = cases[key % cases.size()];
        preflight::v1::CheckRequest req;
        SetArtifact(req.mutable_model(), k.model, k.model_sha);
        SetArtifact(req.mutable_batch(), k.batch, k.batch_sha);
        req.mutable_config()->set_seed(static_cast<uint64_t>(key + seed_offset));
        req.mutable_config()->set_device("cpu");
        if (!k.loss.empty()) req.mutable_config()->set_loss(k.loss);
        req.set_job_id("load-client" + std::to_string(c) + "-req" + std::to_string(i));
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(600));
        preflight::v1::CheckResponse resp;
        const auto t0 = std::chrono::steady_clock::now();
        const grpc::Status s = stub->Check(&ctx, req, &resp);
        const double secs =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::lock_guard<std::mutex> lock(mu);
        if (!s.ok()) {
          ++errors;
          if (first_problem.empty()) first_problem = "rpc: " + s.error_message();
          continue;
        }
        latencies.push_back(secs);
        hits += resp.cached();
        if (resp.report().config().seed() != static_cast<uint64_t>(key + seed_offset) ||
            resp.report().verdict() != k.expected) {
          ++mismatches;
          if (first_problem.empty()) {
            first_problem = "request " + std::to_string(i) + " got seed " +
                            std::to_string(resp.report().config().seed()) + " verdict " +
                            preflight::v1::Verdict_Name(resp.report().verdict());
          }
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  const double wall =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::sort(latencies.begin(), latencies.end());
  auto pct = [&](double q) {
    return latencies.empty() ? 0.0
                             : latencies[std::min(latencies.size() - 1,
                                                  static_cast<size_t>(q * latencies.size()))];
  };
  std::printf(
      "{\"requests\": %d, \"clients\": %d, \"distinct\": %d, \"ok\": %zu, \"errors\": %d, "
      "\"mismatches\": %d, \"cache_hits\": %d, \"wall_seconds\": %.3f, "
      "\"throughput_per_second\": %.2f, \"p50_seconds\": %.4f, \"p95_seconds\": %.4f, "
      "\"max_seconds\": %.4f, \"first_problem\": \"%s\"}\n",
      requests, clients, distinct, latencies.size(), errors.load(), mismatches.load(), hits.load(),
      wall, latencies.size() / wall, pct(0.5), pct(0.95),
      latencies.empty() ? 0.0 : latencies.back(), first_problem.c_str());
  return errors.load() == 0 && mismatches.load() == 0 ? 0 : 1;
}
