// RunCheck's orchestration: pin, load, then the check families of checks/
// in order, each phase timed. The checks themselves live in checks/.
#include "service/engine/engine.h"

#include <sys/resource.h>

#include <algorithm>
#include <string>
#include <vector>

#include <c10/core/CachingDeviceAllocator.h>
#include <torch/torch.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "service/engine/batch.h"
#include "service/engine/checks/check.h"
#include "service/engine/config.h"
#include "service/engine/device_faults.h"
#include "service/engine/loss_fn.h"
#include "service/engine/model_loader.h"
#include "service/engine/overfit.h"
#include "service/engine/pinning.h"
#include "service/engine/report_util.h"
#include "service/engine/torch_error.h"

#ifndef PREFLIGHT_ENGINE_VERSION
#define PREFLIGHT_ENGINE_VERSION "dev"
#endif

namespace preflight::engine {
namespace {

using internal::CheckContext;
using internal::Next;

// Collects LibTorch warnings into the report instead of the worker's
// stderr, where nobody reads them and anomaly mode dumps native stacks.
class CollectingWarningHandler : public c10::WarningHandler {
 public:
  void process(const c10::Warning& warning) override {
    if (warning.msg().find("should be enabled only for debugging") != std::string::npos) return;
    std::string m = TrimTorchMessage(warning.msg(), 300);
    if (m.empty() || messages_.size() >= kMaxWarnings) return;
    if (std::find(messages_.begin(), messages_.end(), m) == messages_.end()) {
      messages_.push_back(std::move(m));
    }
  }
  const std::vector<std::string>& messages() const { return messages_; }

 private:
  static constexpr size_t kMaxWarnings = 20;
  std::vector<std::string> messages_;
};

double Seconds(absl::Time start) { return absl::ToDoubleSeconds(absl::Now() - start); }

// The main overfit run, with statistics and the determinism snapshot; its
// curve and per-parameter statistics go into the report.
void RunOverfit(CheckContext& c) {
  c.target = OverfitTarget(c.config, c.init_loss, c.chance_loss);
  internal::RunOptions options = internal::RunOptionsFor(c);
  options.collect_stats = true;
  options.snapshot_after_updates =
      c.config.determinism_steps() > 0 ? c.config.determinism_steps() : -1;
  c.main_run = internal::Train(*c.model, c.batch, options);
  const internal::RunTrace& run = *c.main_run;
  v1::Report& report = *c.report;
  for (double l : run.losses) report.add_loss_curve(l);
  report.set_steps_run(static_cast<int>(run.losses.size()));
  report.set_converged(run.converged);
  for (const auto& p : run.params) {
    v1::ParameterStats* s = report.add_parameters();
    s->set_name(p.name);
    for (int64_t d : p.shape) s->add_shape(d);
    s->set_trainable(true);
    s->set_grad_norm_first(p.grad_norm_first);
    s->set_grad_norm_last(p.grad_norm_last);
    s->set_max_update_ratio(p.max_update_ratio);
    s->set_received_grad(p.received_grad);
  }
}

// Everything up to the verdict. Returns early where a finding makes the
// later checks meaningless (the finding says why).
void RunStages(const v1::CheckConfig& config, const CheckInput& input, v1::Report* report,
               torch::Device* resolved_device) {
  if (absl::Status s = ValidateConfig(config); !s.ok()) {
    AddFinding(report, v1::CONFIG_INVALID, v1::Finding::ERROR, "config", s.message());
    return;
  }
  CheckContext c;
  c.config = config;
  c.report = report;
  report->mutable_environment()->set_engine_version(EngineVersion());
  report->mutable_environment()->set_torch_version(TorchVersion());
  absl::StatusOr<torch::Device> device =
      internal::PinDeterminism(config, report->mutable_environment());
  if (!device.ok()) {
    AddFinding(report, v1::DEVICE_UNAVAILABLE, v1::Finding::ERROR, "environment",
               device.status().message());
    return;
  }
  c.device = *device;
  *resolved_device = c.device;
  if (c.device.is_cuda()) {
    c10::getDeviceAllocator(c10::DeviceType::CUDA)->resetPeakStats(c.device.index());
  }

  absl::Time phase = absl::Now();
  auto model = internal::LoadModel(input.model_bytes, c.device, config.model_format());
  if (!model.ok()) {
    const bool refused = absl::IsUnimplemented(model.status());
    AddFinding(report, refused ? v1::ARTIFACT_UNSUPPORTED : v1::ARTIFACT_INVALID,
               v1::Finding::ERROR, "input", absl::StrCat("model: ", model.status().message()));
    return;
  }
  c.model = *std::move(model);
  auto batch = internal::LoadBatch(input.batch_bytes, c.device);
  if (!batch.ok()) {
    AddFinding(report, v1::DATA_INVALID, v1::Finding::ERROR, "input",
               absl::StrCat("batch: ", batch.status().message()));
    return;
  }
  c.batch = *std::move(batch);
  if (absl::Status s = c.model->AcceptBatch(c.batch.inputs, c.batch.input_names, c.batch.targets);
      !s.ok()) {
    AddFinding(report, v1::DATA_INVALID, v1::Finding::ERROR, "input",
               absl::StrCat("batch: ", s.message()));
    return;
  }
  for (const auto& in : c.batch.inputs) c.pristine_inputs.push_back(in.toTensor().clone());
  report->mutable_timing()->set_load_seconds(Seconds(phase));

  phase = absl::Now();
  for (auto check : {internal::CheckInputs, internal::CheckAtInit}) {
    if (check(c) == Next::kStop) return;
  }
  report->mutable_timing()->set_init_checks_seconds(Seconds(phase));

  phase = absl::Now();
  RunOverfit(c);
  report->mutable_timing()->set_overfit_seconds(Seconds(phase));
  for (auto check : {internal::CheckNumerics, internal::CheckGradientFlow,
                     internal::CheckActivations, internal::CheckCurve, internal::CheckStructure}) {
    if (check(c) == Next::kStop) return;
  }
  if (config.determinism_steps() > 0) {
    phase = absl::Now();
    internal::CheckDeterminism(c);
    report->mutable_timing()->set_determinism_seconds(Seconds(phase));
  }
}

// An allocation failure, wherever it surfaced (as a forward, loss or
// backward error), is the one finding: the model ran out of the job's
// memory, and what followed from it says nothing about the model's code.
// Not reusable: the same model may fit under another limit.
void ReportOutOfMemory(v1::Report* report, const std::string& message) {
  std::vector<std::string> surfaced;
  for (const auto& f : report->findings()) surfaced.push_back(v1::FindingCode_Name(f.code()));
  report->clear_findings();
  auto* f = AddFinding(report, v1::WORKER_OOM, v1::Finding::ERROR, "engine",
                       absl::StrCat("the check ran out of memory: ", message));
  if (!surfaced.empty()) AddText(f, "surfaced_as", JoinFirst(surfaced));
  if (std::string asked = DeviceMemoryRequested(message); !asked.empty()) {
    AddText(f, "device_memory_requested", asked);
  }
  report->set_completion(v1::COMPLETION_TRANSIENT);
}

// After a device-side assert the CUDA context is gone, but the CPU is not:
// one forward and loss of the same model and batch there, where ops check
// their arguments eagerly, names the op and the bad value. Empty when the
// CPU run raises nothing (the assert is in a CUDA-only kernel path).
std::string ReplayOnCpu(const v1::CheckConfig& config, const v1::Report& report,
                        const CheckInput& input) {
  try {
    auto model = internal::LoadModel(input.model_bytes, torch::kCPU, config.model_format());
    if (!model.ok()) return absl::StrCat("model: ", model.status().message());
    auto batch = internal::LoadBatch(input.batch_bytes, torch::kCPU);
    if (!batch.ok()) return absl::StrCat("batch: ", batch.status().message());
    std::unique_ptr<internal::Model> run = (*model)->Clone();
    run->SetTraining(config.train_mode());
    auto out = run->Forward(batch->inputs);
    if (!out.ok()) return absl::StrCat("forward raised: ", out.status().message());
    if (report.config().loss().empty()) return "";
    auto loss = internal::ComputeLoss(*run, report.config().loss(), *out, batch->targets);
    if (!loss.ok()) return absl::StrCat("the loss raised: ", loss.status().message());
  } catch (const std::exception& e) {
    return TrimTorchMessage(e.what());
  }
  return "";
}

void Finish(v1::Report* report, const CollectingWarningHandler& warnings, absl::Time start,
            const torch::Device& device) {
  for (const auto& m : warnings.messages()) report->add_warnings(m);
  report->set_completion(v1::COMPLETION_FINAL);
  if (auto oom = internal::OutOfMemoryMessage()) ReportOutOfMemory(report, *oom);
  if (device.is_cuda()) {
    try {
      const auto stats =
          c10::getDeviceAllocator(c10::DeviceType::CUDA)->getDeviceStats(device.index());
      report->mutable_timing()->set_peak_device_memory_bytes(static_cast<double>(
          stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)]
              .peak));
    } catch (const std::exception&) {
      // A context lost to a device fault has no statistics; the field stays 0.
    }
  }
  report->set_verdict(ComputeVerdict(*report));
  report->mutable_timing()->set_total_seconds(Seconds(start));
  rusage usage{};
  if (getrusage(RUSAGE_SELF, &usage) == 0) {
    report->mutable_timing()->set_peak_rss_bytes(static_cast<double>(usage.ru_maxrss) * 1024);
  }
}

}  // namespace

std::string TorchVersion() { return TORCH_VERSION; }
std::string EngineVersion() { return PREFLIGHT_ENGINE_VERSION; }

v1::Report RunCheck(const v1::CheckConfig& config, const CheckInput& input) {
  const absl::Time start = absl::Now();
  CollectingWarningHandler warnings;
  c10::WarningUtils::WarningHandlerGuard warnings_guard(&warnings);
  internal::ResetOutOfMemory();
  v1::Report report;
  *report.mutable_config() = config;
  // The checks catch LibTorch errors at the calls that raise them and turn
  // them into findings; this guard keeps the contract for what they cannot
  // foresee (a device fault in bookkeeping, an allocation failure).
  torch::Device device = torch::kCPU;
  try {
    RunStages(config, input, &report, &device);
  } catch (const std::exception& e) {
    const absl::Status s = internal::TorchErrorStatus(e);
    if (!absl::IsResourceExhausted(s)) {
      AddFinding(&report, v1::INTERNAL_ERROR, v1::Finding::ERROR, "engine",
                 absl::StrCat("unexpected error while checking: ", s.message()));
    }
  } catch (...) {
    AddFinding(&report, v1::INTERNAL_ERROR, v1::Finding::ERROR, "engine",
               "unexpected non-standard exception while checking");
  }
  if (auto device_assert = internal::DeviceAssertMessage()) {
    ReportDeviceAssert(&report, *device_assert, ReplayOnCpu(config, report, input));
  }
  Finish(&report, warnings, start, device);
  return report;
}

}  // namespace preflight::engine
