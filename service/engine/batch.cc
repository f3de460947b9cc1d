#include "service/engine/batch.h"

#include <optional>
#include <sstream>

#include <caffe2/serialize/inline_container.h>
#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "service/engine/pickle_guard.h"
#include "service/engine/report_util.h"
#include "service/engine/tensor_util.h"
#include "service/engine/thresholds.h"
#include "service/engine/torch_error.h"

namespace preflight::engine::internal {
namespace {

absl::StatusOr<torch::Tensor> AsTensor(const torch::jit::IValue& v, const std::string& what) {
  if (!v.isTensor()) {
    return absl::InvalidArgumentError(absl::StrCat(what, " must be a tensor, got ", v.tagKind()));
  }
  torch::Tensor t = v.toTensor();
  if (!t.defined())
    return absl::InvalidArgumentError(absl::StrCat(what, " is an undefined tensor"));
  if (t.is_sparse() || t.is_quantized()) {
    return absl::InvalidArgumentError(absl::StrCat(what, " must be a dense tensor"));
  }
  if (t.numel() > kMaxTensorElements) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " declares shape ", ShapeString(t), " = ", t.numel(),
        " elements; a sample batch may hold at most ", kMaxTensorElements, " elements per tensor"));
  }
  return t;
}

// The pickle's nesting and declared storage sizes, checked against the
// archive before LibTorch's unpickler sees them (pickle_guard.h). An archive
// that cannot even be opened is left to torch::pickle_load, whose error says
// what it is.
absl::Status CheckArchive(const std::string& bytes) {
  std::istringstream in(bytes);  // Read by `reader` until it is gone.
  std::optional<caffe2::serialize::PyTorchStreamReader> reader;
  std::string pickle;
  try {
    reader.emplace(&in);
    if (!reader->hasRecord("data.pkl")) return absl::OkStatus();
    auto [data, size] = reader->getRecord("data.pkl");
    pickle.assign(static_cast<const char*>(data.get()), size);
  } catch (const std::exception&) {
    return absl::OkStatus();
  }
  return CheckBatchPickle(pickle, [&](const std::string& name) -> std::optional<uint64_t> {
    try {
      if (!reader->hasRecord(name)) return std::nullopt;
      return reader->getRecordSize(name);
    } catch (const std::exception&) {
      return std::nullopt;
    }
  });
}

}  // namespace

absl::StatusOr<Batch> LoadBatch(const std::string& bytes, const torch::Device& device) {
  if (bytes.empty()) return absl::InvalidArgumentError("batch file is empty");
  if (absl::Status s = CheckArchive(bytes); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("batch is not a valid torch.save file (",
                                                   bytes.size(), " bytes): ", s.message()));
  }
  torch::jit::IValue root;
  try {
    std::vector<char> data(bytes.begin(), bytes.end());
    root = torch::pickle_load(data);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("batch is not a torch.save file of tensors (",
                                                   bytes.size(),
                                                   " bytes): ", TorchErrorStatus(e).message()));
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
    const auto& elems =
        root.isTuple() ? root.toTupleRef().elements().vec() : root.toListRef().vec();
    inputs = elems[0];
    targets = elems[1];
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "batch must be a dict {'inputs': ..., 'targets': ...} or a 2-tuple (inputs, targets); "
        "got ",
        root.tagKind()));
  }

  Batch batch;
  if (inputs.isTensor()) {
    auto t = AsTensor(inputs, "inputs");
    if (!t.ok()) return t.status();
    batch.inputs.emplace_back(t->to(device));
    batch.input_names.push_back("inputs");
  } else if (inputs.isTuple() || inputs.isList()) {
    const auto elems =
        inputs.isTuple() ? inputs.toTupleRef().elements().vec() : inputs.toListRef().vec();
    if (elems.empty()) return absl::InvalidArgumentError("inputs is an empty sequence");
    for (size_t i = 0; i < elems.size(); ++i) {
      const std::string name = absl::StrCat("inputs[", i, "]");
      auto t = AsTensor(elems[i], name);
      if (!t.ok()) return t.status();
      batch.inputs.emplace_back(t->to(device));
      batch.input_names.push_back(name);
    }
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("inputs must be a tensor or a tuple/list of tensors, got ", inputs.tagKind()));
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
      return absl::InvalidArgumentError(absl::StrCat(batch.input_names[i], " has shape ",
                                                     ShapeString(in), " but ", batch.input_names[0],
                                                     " has batch size ", batch.batch_size));
    }
  }
  if (batch.targets.size(0) != batch.batch_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "targets have batch size ", batch.targets.size(0), " but inputs have ", batch.batch_size));
  }
  return batch;
}

}  // namespace preflight::engine::internal
