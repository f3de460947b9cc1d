// A torch-free pass over the pickle of a torch.save'd batch (its data.pkl)
// before LibTorch unpickles it: LibTorch's unpickler bounds neither how deep
// the values nest (a 15 KB batch nesting 5e6 lists deep crashed the job with
// SIGSEGV) nor checks the sizes the pickle declares for its storages against
// the file (a storage of 1e12 elements went unnoticed). This pass walks the
// opcodes as the unpickler would, keeping only what it needs: each value's
// nesting depth, and the strings and integers of a storage's persistent id.
//
//   absl::Status s = CheckBatchPickle(pickle, [&](const std::string& record) {
//     return reader.hasRecord(record) ? std::optional(reader.getRecordSize(record))
//                                     : std::nullopt;
//   });
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace preflight::engine {

// Containers nested in one another, at most. A sample batch is a dict or a
// tuple of tensors, each rebuilt from an argument tuple holding its storage's
// id tuple: about 5 levels. 1000 (Python's own recursion limit) leaves every
// real batch far inside it, and LibTorch's recursive teardown of nested
// values far from the job's 8 MiB stack.
inline constexpr int kMaxPickleDepth = 1000;
// Values and marks on the unpickler's stack at once. The pickler appends
// and sets items in batches of 1000, so real batches stay far below.
inline constexpr size_t kMaxPickleStack = size_t{1} << 20;

// Size in bytes of the archive's record `name` (e.g. "data/0"), or nullopt
// when the archive has none.
using RecordSizeFn = std::function<std::optional<uint64_t>(const std::string& name)>;

// OK, or INVALID_ARGUMENT saying what is wrong with the pickle and naming the
// limit it broke: nesting beyond kMaxPickleDepth, a stack beyond
// kMaxPickleStack, a storage declaring more bytes than its record holds (or
// with no record), or a stream the unpickler could not read either
// (truncated, unknown opcode, stack underflow).
absl::Status CheckBatchPickle(absl::string_view pickle, const RecordSizeFn& record_size);

// The same pass for any archive pickle (a model's data.pkl); `subject`
// starts the error message ("the model's data.pkl").
absl::Status CheckPickle(absl::string_view pickle, const RecordSizeFn& record_size,
                         absl::string_view subject);

}  // namespace preflight::engine
