// Artifact decoding and losses.
#include <sstream>

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "service/engine/config.h"
#include "service/engine/report_util.h"
#include "service/engine/torch_internal.h"

namespace preflight::engine::internal {
namespace {

std::string ShapeString(const torch::Tensor& t) {
  return absl::StrCat("[", absl::StrJoin(t.sizes(), ", "), "]");
}

std::string Describe(const torch::Tensor& t) {
  return absl::StrCat(ShapeString(t), " ", std::string(c10::toString(t.scalar_type())));
}

// A sample batch larger than this per tensor is not a sample: refusing it
// keeps a crafted file (a stride-0 view declaring 10^12 elements in a few
// bytes) from turning into a multi-terabyte allocation later.
constexpr int64_t kMaxTensorElements = int64_t{1} << 28;

absl::StatusOr<torch::Tensor> AsTensor(const torch::jit::IValue& v, const std::string& what) {
  if (!v.isTensor()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " must be a tensor, got ", v.tagKind()));
  }
  torch::Tensor t = v.toTensor();
  if (!t.defined()) return absl::InvalidArgumentError(absl::StrCat(what, " is an undefined tensor"));
  if (t.is_sparse() || t.is_quantized()) {
    return absl::InvalidArgumentError(absl::StrCat(what, " must be a dense tensor"));
  }
  if (t.numel() > kMaxTensorElements) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " declares shape ", ShapeString(t), " = ", t.numel(),
        " elements; a sample batch may hold at most ", kMaxTensorElements,
        " elements per tensor"));
  }
  return t;
}

// The broadcast shape of a and b, or nullopt when they do not broadcast.
std::optional<std::vector<int64_t>> BroadcastShape(c10::IntArrayRef a, c10::IntArrayRef b) {
  const size_t n = std::max(a.size(), b.size());
  std::vector<int64_t> out(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t da = i < a.size() ? a[a.size() - 1 - i] : 1;
    const int64_t db = i < b.size() ? b[b.size() - 1 - i] : 1;
    if (da != db && da != 1 && db != 1) return std::nullopt;
    out[n - 1 - i] = std::max(da, db);
  }
  return out;
}

}  // namespace

absl::StatusOr<torch::jit::Module> LoadModel(const std::string& bytes,
                                             const torch::Device& device) {
  if (bytes.empty()) return absl::InvalidArgumentError("model file is empty");
  std::istringstream in(bytes);
  torch::jit::Module module;
  try {
    module = torch::jit::load(in, device);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("not a loadable TorchScript archive (", bytes.size(),
                     " bytes): ", TrimTorchMessage(e.what())));
  }
  if (!module.find_method("forward")) {
    return absl::InvalidArgumentError("the TorchScript module has no forward() method");
  }
  return module;
}

absl::StatusOr<Batch> LoadBatch(const std::string& bytes, const torch::Device& device) {
  if (bytes.empty()) return absl::InvalidArgumentError("batch file is empty");
  torch::jit::IValue root;
  try {
    std::vector<char> data(bytes.begin(), bytes.end());
    root = torch::pickle_load(data);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch is not a torch.save file of tensors (", bytes.size(),
                     " bytes): ", TrimTorchMessage(e.what())));
  }

  torch::jit::IValue inputs, targets;
  if (root.isGenericDict()) {
    auto dict = root.toGenericDict();
    std::vector<std::string> keys;
    for (const auto& entry : dict) {
      keys.push_back(entry.key().isString() ? entry.key().toStringRef()
                                            : std::string(entry.key().tagKind()));
    }
    auto find = [&](const char* key) -> std::optional<torch::jit::IValue> {
      for (const auto& entry : dict) {
        if (entry.key().isString() && entry.key().toStringRef() == key) return entry.value();
      }
      return std::nullopt;
    };
    auto in = find("inputs");
    auto tg = find("targets");
    if (!in || !tg) {
      return absl::InvalidArgumentError(
          absl::StrCat("batch dict must have keys 'inputs' and 'targets'; found keys: ",
                       keys.empty() ? "(none)" : absl::StrJoin(keys, ", ")));
    }
    inputs = *in;
    targets = *tg;
  } else if ((root.isTuple() && root.toTupleRef().elements().size() == 2) ||
             (root.isList() && root.toListRef().size() == 2)) {
    const auto& elems = root.isTuple() ? root.toTupleRef().elements().vec()
                                       : root.toListRef().vec();
    inputs = elems[0];
    targets = elems[1];
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "batch must be a dict {'inputs': ..., 'targets': ...} or a 2-tuple (inputs, targets); "
        "got ", root.tagKind()));
  }

  Batch batch;
  if (inputs.isTensor()) {
    auto t = AsTensor(inputs, "inputs");
    if (!t.ok()) return t.status();
    batch.inputs.emplace_back(t->to(device));
    batch.input_names.push_back("inputs");
  } else if (inputs.isTuple() || inputs.isList()) {
    const auto elems = inputs.isTuple() ? inputs.toTupleRef().elements().vec()
                                        : inputs.toListRef().vec();
    if (elems.empty()) return absl::InvalidArgumentError("inputs is an empty sequence");
    for (size_t i = 0; i < elems.size(); ++i) {
      const std::string name = absl::StrCat("inputs[", i, "]");
      auto t = AsTensor(elems[i], name);
      if (!t.ok()) return t.status();
      batch.inputs.emplace_back(t->to(device));
      batch.input_names.push_back(name);
    }
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "inputs must be a tensor or a tuple/list of tensors, got ", inputs.tagKind()));
  }
  auto t = AsTensor(targets, "targets");
  if (!t.ok()) return t.status();
  batch.targets = t->to(device);

  const torch::Tensor& first = batch.inputs[0].toTensor();
  if (first.dim() == 0) return absl::InvalidArgumentError("inputs must have a batch dimension");
  if (batch.targets.dim() == 0) {
    return absl::InvalidArgumentError("targets must have a batch dimension");
  }
  batch.batch_size = first.size(0);
  if (batch.batch_size == 0) return absl::InvalidArgumentError("the batch is empty (size 0)");
  for (size_t i = 0; i < batch.inputs.size(); ++i) {
    const auto& in = batch.inputs[i].toTensor();
    if (in.dim() == 0 || in.size(0) != batch.batch_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          batch.input_names[i], " has shape ", ShapeString(in), " but ", batch.input_names[0],
          " has batch size ", batch.batch_size));
    }
  }
  if (batch.targets.size(0) != batch.batch_size) {
    return absl::InvalidArgumentError(absl::StrCat("targets have batch size ",
                                                   batch.targets.size(0), " but inputs have ",
                                                   batch.batch_size));
  }
  return batch;
}

int64_t CountNonFinite(const torch::Tensor& t) {
  if (!t.defined() || !(t.is_floating_point() || t.is_complex())) return 0;
  return (~torch::isfinite(t)).sum().item<int64_t>();
}

std::vector<LossInputProblem> CheckLossInputs(const std::string& loss,
                                              const torch::Tensor& out,
                                              const torch::Tensor& tg) {
  std::vector<LossInputProblem> problems;
  auto invalid = [&](std::string m) {
    problems.push_back({v1::DATA_INVALID, std::move(m)});
  };
  if (loss == "cross_entropy" || loss == "nll") {
    if (out.dim() < 2) {
      invalid(absl::StrCat(loss, " needs output [N, C, ...]; the model output is ",
                           Describe(out)));
      return problems;
    }
    const int64_t classes = out.size(1);
    if (!tg.is_floating_point()) {
      std::vector<int64_t> expect(out.sizes().begin(), out.sizes().end());
      expect.erase(expect.begin() + 1);
      if (tg.sizes().vec() != expect) {
        invalid(absl::StrCat("targets ", Describe(tg), " do not match output ", Describe(out),
                             ": ", loss, " with class indices needs targets of shape [",
                             absl::StrJoin(expect, ", "), "]"));
        return problems;
      }
      // -100 is LibTorch's default ignore_index.
      auto valid = tg.masked_select(tg != -100);
      if (valid.numel() > 0) {
        const int64_t lo = valid.min().item<int64_t>();
        const int64_t hi = valid.max().item<int64_t>();
        if (lo < 0 || hi >= classes) {
          invalid(absl::StrCat("targets hold class index ", lo < 0 ? lo : hi,
                               " but the model outputs ", classes,
                               " classes (valid indices are 0..", classes - 1, ")"));
        }
      }
    } else if (tg.sizes() != out.sizes()) {
      invalid(absl::StrCat("floating targets for ", loss, " are class probabilities and must ",
                           "have the output's shape ", ShapeString(out), "; got ",
                           ShapeString(tg)));
    } else if (loss == "nll") {
      invalid("nll needs integer class-index targets; got floating targets");
    }
    return problems;
  }

  // Element-wise losses.
  if (!tg.is_floating_point()) {
    invalid(absl::StrCat(loss, " needs floating targets; got ", Describe(tg),
                         " (class indices belong with cross_entropy)"));
    return problems;
  }
  if (tg.sizes() != out.sizes()) {
    if (const auto b = BroadcastShape(out.sizes(), tg.sizes())) {
      problems.push_back(
          {v1::LOSS_SHAPE_BROADCAST,
           absl::StrCat("output ", ShapeString(out), " and targets ", ShapeString(tg),
                        " differ and broadcast to [", absl::StrJoin(*b, ", "), "] in ", loss,
                        ": each output is compared with ",
                        c10::multiply_integers(*b) / std::max<int64_t>(1, out.numel()),
                        " targets instead of one")});
    } else {
      invalid(absl::StrCat("output ", ShapeString(out), " and targets ", ShapeString(tg),
                           " cannot be compared element-wise by ", loss));
      return problems;
    }
  }
  if (loss == "bce" || loss == "bce_with_logits") {
    const double lo = tg.min().item<double>();
    const double hi = tg.max().item<double>();
    if (lo < 0 || hi > 1) {
      invalid(absl::StrCat(loss, " needs targets in [0, 1]; targets range over [", lo, ", ",
                           hi, "]"));
    }
  }
  if (loss == "bce" && problems.empty()) {
    const double lo = out.min().item<double>();
    const double hi = out.max().item<double>();
    if (lo < 0 || hi > 1) {
      invalid(absl::StrCat("bce needs probabilities in [0, 1] from the model; outputs range ",
                           "over [", lo, ", ", hi, "] (use bce_with_logits for raw scores)"));
    }
  }
  return problems;
}

absl::StatusOr<torch::Tensor> ComputeLoss(torch::jit::Module& module, const std::string& loss,
                                          const torch::jit::IValue& output,
                                          const torch::Tensor& targets) {
  namespace F = torch::nn::functional;
  torch::Tensor value;
  try {
    if (loss == kModelLoss) {
      value = module.get_method("loss")({output, targets}).toTensor();
    } else {
      if (!output.isTensor()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "forward() returned ", output.tagKind(), "; built-in loss ", loss,
            " needs a single tensor (or export a loss(output, target) method)"));
      }
      const torch::Tensor out = output.toTensor();
      if (loss == "cross_entropy") {
        value = F::cross_entropy(out, targets);
      } else if (loss == "nll") {
        value = F::nll_loss(out, targets);
      } else if (loss == "mse") {
        value = F::mse_loss(out, targets);
      } else if (loss == "l1") {
        value = F::l1_loss(out, targets);
      } else if (loss == "smooth_l1") {
        value = F::smooth_l1_loss(out, targets);
      } else if (loss == "bce_with_logits") {
        value = F::binary_cross_entropy_with_logits(out, targets);
      } else if (loss == "bce") {
        value = F::binary_cross_entropy(out, targets);
      } else {
        return absl::InvalidArgumentError(absl::StrCat("unknown loss '", loss, "'"));
      }
    }
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(TrimTorchMessage(e.what()));
  }
  if (!value.defined() || value.numel() != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the loss must be a scalar; got ", value.defined() ? ShapeString(value) : "undefined"));
  }
  return value.reshape({});
}

std::vector<NamedParam> TrainableParams(const torch::jit::Module& module) {
  std::vector<NamedParam> out;
  for (const auto& p : module.named_parameters(/*recurse=*/true)) {
    if (p.value.requires_grad()) out.push_back({p.name, p.value});
  }
  return out;
}

}  // namespace preflight::engine::internal
