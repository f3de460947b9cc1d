#include "service/engine/torchscript/module_recorder.h"

#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>

#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/runtime/operator.h>
#include <torch/torch.h>

#include "service/engine/thresholds.h"
#include "service/engine/torch_error.h"

namespace preflight::engine::internal {
namespace {

constexpr char kRecordOp[] = "preflight::record_module_output";

// What the record operator writes to while one instrumented forward runs on
// this thread; null otherwise (the operator then does nothing).
struct Recording {
  std::unordered_map<const c10::ivalue::Object*, std::string> names;
  std::vector<ModuleCall> calls;
};
thread_local Recording* active_recording = nullptr;

torch::Tensor FirstTensor(const torch::jit::IValue& v) {
  if (v.isTensor()) return v.toTensor();
  if (v.isTuple()) {
    for (const auto& e : v.toTupleRef().elements()) {
      if (e.isTensor()) return e.toTensor();
    }
  }
  if (v.isTensorList()) {
    const auto list = v.toTensorList();
    if (!list.empty()) return list.get(0);
  }
  return {};
}

void Record(const torch::jit::IValue& module, const torch::jit::IValue& output) {
  Recording* r = active_recording;
  if (r == nullptr || !module.isObject() ||
      r->calls.size() >= static_cast<size_t>(kMaxRecordedModuleCalls)) {
    return;
  }
  const torch::Tensor t = FirstTensor(output);
  if (!t.defined() || !t.is_floating_point() || t.numel() == 0) return;
  auto it = r->names.find(module.toObject().get());
  if (it == r->names.end()) return;
  // In double: a float32 output of 1e27 squares past float32's range.
  const double rms = t.detach().to(torch::kFloat64).pow(2).mean().sqrt().item<double>();
  r->calls.push_back({it->second, rms});
}

// Registered on first use rather than at static initialisation: this file
// lives in a static library, whose unreferenced objects the linker drops.
void RegisterRecordOp() {
  static std::once_flag once;
  std::call_once(once, [] {
    // CONSERVATIVE alias analysis marks the node as having side effects, so
    // no pass removes it although it has no outputs.
    torch::jit::registerOperator(torch::jit::Operator(
        std::string(kRecordOp) + "(Any module, Any output) -> ()",
        [](torch::jit::Stack& stack) {
          torch::jit::IValue output = torch::jit::pop(stack);
          torch::jit::IValue module = torch::jit::pop(stack);
          Record(module, output);
        },
        c10::AliasAnalysisKind::CONSERVATIVE));
  });
}

// forward(), or one of its overloads: TorchScript compiles an overloaded
// forward (nn.RNN, nn.LSTM) as forward__0, forward__1, ...
bool IsForward(const std::string& method) {
  return method == "forward" || method.rfind("forward__", 0) == 0;
}

// Inserts a record node after every call of a submodule's forward() in
// `block` and its nested blocks (loop and if bodies); returns them.
void Instrument(torch::jit::Graph& graph, torch::jit::Block* block,
                std::vector<torch::jit::Node*>& inserted) {
  for (torch::jit::Node* n : block->nodes()) {
    for (torch::jit::Block* b : n->blocks()) Instrument(graph, b, inserted);
    if (n->kind() != c10::prim::CallMethod || !IsForward(n->s(c10::attr::name)) ||
        n->inputs().empty() || n->outputs().size() != 1) {
      continue;
    }
    const auto cls = n->input(0)->type()->cast<c10::ClassType>();
    if (!cls || !cls->is_module()) continue;
    torch::jit::Node* rec =
        graph.create(c10::Symbol::fromQualString(kRecordOp), {n->input(0), n->output()}, 0);
    rec->insertAfter(n);
    inserted.push_back(rec);
  }
}

}  // namespace

absl::StatusOr<std::vector<ModuleCall>> RecordModuleOutputs(
    const torch::jit::Module& module, const std::vector<torch::jit::IValue>& inputs) {
  RegisterRecordOp();
  torch::NoGradGuard no_grad;
  Recording recording;
  std::vector<torch::jit::Node*> inserted;
  // clone() copies every method graph, so the instrumentation stays in the
  // copy (train/eval flags included); the inserted nodes are removed again
  // before the copy goes, in case a future LibTorch shares graphs.
  torch::jit::Module copy;
  absl::Status status = absl::OkStatus();
  try {
    copy = module.clone();
    std::unordered_set<const torch::jit::Graph*> done;
    for (const auto& m : copy.named_modules()) {
      if (!m.name.empty()) recording.names[m.value._ivalue().get()] = m.name;
      const auto forward = m.value.find_method("forward");
      if (!forward) continue;
      std::shared_ptr<torch::jit::Graph> g = forward->graph();
      if (!done.insert(g.get()).second) continue;  // A type shared by several modules.
      Instrument(*g, g->block(), inserted);
    }
    active_recording = &recording;
    copy.forward(inputs);
  } catch (const std::exception& e) {
    status = TorchErrorStatus(e);
  }
  active_recording = nullptr;
  for (torch::jit::Node* n : inserted) n->destroy();
  if (!status.ok()) return status;
  return std::move(recording.calls);
}

}  // namespace preflight::engine::internal
