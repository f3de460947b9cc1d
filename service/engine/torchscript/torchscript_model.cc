#include "service/engine/torchscript/torchscript_model.h"

#include <sstream>

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "service/engine/report_util.h"
#include "service/engine/torch_error.h"
#include "service/engine/torchscript/module_recorder.h"

namespace preflight::engine::internal {
namespace {

class TorchScriptModel : public Model {
 public:
  explicit TorchScriptModel(torch::jit::Module module)
      : module_(std::move(module)), own_loss_(module_.find_method("loss").has_value()) {}

  v1::ArtifactFormat format() const override { return v1::TORCHSCRIPT; }
  ModelCapabilities capabilities() const override { return {.own_loss = own_loss_}; }

  std::unique_ptr<Model> Clone() const override {
    torch::jit::Module copy;
    {
      // Cloned under grad mode, parameters would become non-leaf tensors.
      torch::NoGradGuard no_grad;
      copy = module_.clone();
    }
    auto src = module_.named_parameters(true);
    auto it = src.begin();
    for (auto p : copy.named_parameters(true)) {
      p.value.requires_grad_((*it).value.requires_grad());
      ++it;
    }
    return std::make_unique<TorchScriptModel>(std::move(copy));
  }

  std::vector<NamedTensor> Parameters() const override {
    std::vector<NamedTensor> out;
    for (const auto& p : module_.named_parameters(/*recurse=*/true))
      out.push_back({p.name, p.value});
    return out;
  }

  std::vector<NamedTensor> Buffers() const override {
    std::vector<NamedTensor> out;
    for (const auto& b : module_.named_buffers(/*recurse=*/true)) out.push_back({b.name, b.value});
    return out;
  }

  void SetTraining(bool training) override { module_.train(training); }

  absl::StatusOr<torch::jit::IValue> Forward(
      const std::vector<torch::jit::IValue>& inputs) override {
    try {
      return module_.forward(inputs);
    } catch (const std::exception& e) {
      return TorchErrorStatus(e);
    }
  }

  absl::StatusOr<std::vector<ModuleCall>> ForwardRecordingModules(
      const std::vector<torch::jit::IValue>& inputs) override {
    return RecordModuleOutputs(module_, inputs);
  }

  absl::StatusOr<torch::Tensor> OwnLoss(const torch::jit::IValue& output,
                                        const torch::Tensor& targets) override {
    if (!own_loss_) return absl::FailedPreconditionError("the module has no loss() method");
    try {
      torch::jit::IValue v = module_.get_method("loss")({output, targets});
      if (!v.isTensor()) {
        return absl::InvalidArgumentError(
            absl::StrCat("loss() returned ", v.tagKind(), ", not a tensor"));
      }
      return v.toTensor();
    } catch (const std::exception& e) {
      return TorchErrorStatus(e);
    }
  }

 private:
  torch::jit::Module module_;
  bool own_loss_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Model>> LoadTorchScript(const std::string& bytes,
                                                       const torch::Device& device) {
  std::istringstream in(bytes);
  torch::jit::Module module;
  try {
    module = torch::jit::load(in, device);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("not a loadable TorchScript archive (",
                                                   bytes.size(),
                                                   " bytes): ", TorchErrorStatus(e).message()));
  }
  if (!module.find_method("forward")) {
    return absl::InvalidArgumentError("the TorchScript module has no forward() method");
  }
  return std::make_unique<TorchScriptModel>(std::move(module));
}

}  // namespace preflight::engine::internal
