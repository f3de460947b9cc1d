// Format detection and dispatch to the format folders.
#include "service/engine/model_loader.h"

#include <sstream>

#include <caffe2/serialize/inline_container.h>

#include "absl/strings/str_cat.h"
#include "service/engine/exported/exported_model.h"
#include "service/engine/model_archive_guard.h"
#include "service/engine/torchscript/torchscript_model.h"

namespace preflight::engine::internal {
namespace {

// What the archive's own records say it is. torch.export.save writes an
// `archive_format` record holding "pt2"; torch.jit.save archives have none.
// Bytes that are not a readable zip are left to the TorchScript loader, whose
// error message describes them.
v1::ArtifactFormat DetectFormat(const std::string& bytes) {
  try {
    std::istringstream in(bytes);
    caffe2::serialize::PyTorchStreamReader reader(&in);
    if (reader.hasRecord("archive_format")) {
      auto [data, size] = reader.getRecord("archive_format");
      const std::string value(static_cast<const char*>(data.get()), size);
      if (value == "pt2") return v1::EXPORTED_PROGRAM;
    }
  } catch (const std::exception&) {
  }
  return v1::TORCHSCRIPT;
}

std::string FormatName(v1::ArtifactFormat f) {
  switch (f) {
    case v1::TORCHSCRIPT: return "TorchScript (torch.jit.save)";
    case v1::EXPORTED_PROGRAM: return "torch.export program (torch.export.save, .pt2)";
    default: return v1::ArtifactFormat_Name(f);
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<Model>> LoadModel(const std::string& bytes,
                                                 const torch::Device& device,
                                                 v1::ArtifactFormat declared) {
  if (bytes.empty()) return absl::InvalidArgumentError("model file is empty");
  // Before any LibTorch reader or unpickler sees the bytes.
  if (absl::Status s = CheckModelArchive(bytes); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("model is not a loadable archive (", bytes.size(), " bytes): ", s.message()));
  }
  const v1::ArtifactFormat detected = DetectFormat(bytes);
  if (declared != v1::ARTIFACT_FORMAT_UNSPECIFIED && declared != detected) {
    return absl::InvalidArgumentError(absl::StrCat("declared as ", FormatName(declared),
                                                   " but the file is a ", FormatName(detected)));
  }
  switch (detected) {
    case v1::EXPORTED_PROGRAM: return LoadExportedProgram(bytes, device);
    default: return LoadTorchScript(bytes, device);
  }
}

}  // namespace preflight::engine::internal
