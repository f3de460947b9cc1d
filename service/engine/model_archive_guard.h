// A torch-free pass over a model artifact's zip directory and pickles before
// LibTorch's reader and unpickler see them: the model loader's entry.
//
// torch.jit.save and torch.export.save both write a zip of records under
// one top-level folder. LibTorch's unpickler bounds neither nesting nor the
// storage sizes a pickle declares (pickle_guard.h), and a TorchScript
// archive's data.pkl and constants.pkl go straight to it. This pass reads the
// zip's central directory itself (bounded: entry count, name lengths, every
// offset checked against the file) and walks both pickles with the batch's
// pickle pass, their storages checked against the records data/<key> and
// constants/<key>.
//
//   if (absl::Status s = CheckModelArchive(bytes); !s.ok()) return s;  // then LoadModel
#pragma once

#include <cstddef>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace preflight::engine {

// Records a model archive may hold, at most (the .pt2 reader's own bound).
inline constexpr size_t kMaxArchiveRecords = 100'000;

// OK for bytes that are not a zip at all (the format loaders say what they
// are), and for a zip whose directory and pickles pass. INVALID_ARGUMENT
// naming the record and what is wrong: a directory that points outside the
// file, too many records, a compressed data.pkl/constants.pkl (neither
// writer compresses them, and an inflated pickle would escape this pass), or
// a pickle CheckPickle refuses.
absl::Status CheckModelArchive(absl::string_view bytes);

}  // namespace preflight::engine
