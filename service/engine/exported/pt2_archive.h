// Reading a torch.export.save archive (.pt2) with bounded sizes. Private to
// service/engine/exported.
//
// The archive is a zip of records under one top-level folder (stripped by
// PyTorchStreamReader): `archive_format` ("pt2"), `models/<name>.json` (the
// serialized ExportedProgram), `data/weights/model_weights_config.json` and
// the raw storage bytes it names, the same for `data/constants/`. Every size
// is checked against its bound before anything is read, so a zip bomb, a
// record count in the millions or a weight whose bytes do not cover its
// declared dtype/sizes/strides is refused without allocating for it.
//
//   absl::StatusOr<Pt2Archive> a = ReadPt2Archive(bytes, device);
//   a->program["graph_module"]["graph"]["nodes"] ...
//   a->weights.at("fc.weight").tensor
#pragma once

#include <map>
#include <string>

#include <torch/script.h>
#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"

namespace preflight::engine::internal::exported {

// Bounds on what an archive may declare. Far above any model the engine can
// train in its time budget, far below what would exhaust a worker.
inline constexpr size_t kMaxRecords = 100'000;
// model.json and the configs: a graph of ~50k nodes with their stack traces.
inline constexpr size_t kMaxJsonBytes = 64u << 20;
inline constexpr uint64_t kMaxTensorBytes = uint64_t{4} << 30;  // One weight's storage.
inline constexpr uint64_t kMaxTotalBytes = uint64_t{8} << 30;   // Everything read.

struct StoredTensor {
  torch::Tensor tensor;  // On the requested device; a copy, never a view of the archive.
  bool requires_grad = false;
};

struct Pt2Archive {
  std::string model_name;  // "model" for models/model.json.
  nlohmann::json program;  // The parsed models/<name>.json.
  // By fully qualified name ("fc.weight"), from data/weights/ and
  // data/constants/ respectively.
  std::map<std::string, StoredTensor> weights;
  std::map<std::string, StoredTensor> constants;
};

// INVALID_ARGUMENT naming the record or field for a malformed archive,
// UNIMPLEMENTED (-> ARTIFACT_UNSUPPORTED) for a well-formed one using a
// feature this reader refuses (several programs, pickled tensor subclasses,
// sparse layouts).
absl::StatusOr<Pt2Archive> ReadPt2Archive(const std::string& bytes, const torch::Device& device);

// The c10 dtype of a serialized ScalarType (torch/_export/serde/schema.py).
absl::StatusOr<c10::ScalarType> SerializedScalarType(int64_t v);

}  // namespace preflight::engine::internal::exported
