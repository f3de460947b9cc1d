#include "service/engine/pinning.h"

#include <cstdlib>
#include <cstring>

#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "service/engine/config.h"

namespace preflight::engine::internal {

absl::StatusOr<torch::Device> PinDeterminism(const v1::CheckConfig& config, v1::Environment* env) {
  // CUBLAS_WORKSPACE_CONFIG must be set before CUDA initialises, which is
  // why this runs before anything touches a device.
  const char* cublas = std::getenv("CUBLAS_WORKSPACE_CONFIG");
  if (cublas == nullptr ||
      (std::strcmp(cublas, ":4096:8") != 0 && std::strcmp(cublas, ":16:8") != 0)) {
    setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8", 1);
  }
  env->set_cublas_workspace_config(std::getenv("CUBLAS_WORKSPACE_CONFIG"));
  at::set_num_threads(config.intra_op_threads());
  try {
    // Settable once per process, before any inter-op work; a second call
    // throws and changes nothing.
    at::set_num_interop_threads(1);
  } catch (const std::exception&) {
  }
  auto& ctx = at::globalContext();
  // warn_only: an op without a deterministic kernel still runs, and the
  // bitwise replay reports whether it actually diverged.
  ctx.setDeterministicAlgorithms(true, /*warn_only=*/true);
  ctx.setDeterministicFillUninitializedMemory(true);
  ctx.setDeterministicCuDNN(true);
  ctx.setBenchmarkCuDNN(false);
  // Run TorchScript op by op, as eager PyTorch would: the graph executor's
  // fused DifferentiableGraph nodes would hide which backward op produced a
  // NaN from anomaly mode, and its profiling runs make early steps differ
  // in cost and code path from later ones.
  torch::jit::setGraphExecutorOptimize(false);
  torch::manual_seed(config.seed());

  env->set_intra_op_threads(at::get_num_threads());
  env->set_inter_op_threads(at::get_num_interop_threads());
  env->set_deterministic_algorithms(ctx.deterministicAlgorithms());
  env->set_cudnn_deterministic(ctx.deterministicCuDNN());
  env->set_cudnn_benchmark(ctx.benchmarkCuDNN());
  env->set_seed(config.seed());

  absl::StatusOr<DeviceSpec> spec = ParseDevice(config.device());
  if (!spec.ok()) return spec.status();
  torch::Device device = torch::kCPU;
  switch (spec->kind) {
    case DeviceSpec::kCpu: break;
    case DeviceSpec::kAuto:
      if (torch::cuda::is_available()) device = torch::Device(torch::kCUDA, 0);
      break;
    case DeviceSpec::kCuda: {
      const int count = static_cast<int>(torch::cuda::device_count());
      if (spec->index >= count) {
        env->set_device(config.device());
        return absl::FailedPreconditionError(absl::StrCat(
            "device ", config.device(), " requested but this node has ", count, " CUDA device(s)"));
      }
      device = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(spec->index));
      break;
    }
  }
  if (device.is_cuda()) torch::cuda::manual_seed_all(config.seed());
  env->set_device(device.str());
  return device;
}

}  // namespace preflight::engine::internal
