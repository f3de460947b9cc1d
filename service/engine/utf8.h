// UTF-8 hygiene for text that enters a report. Protobuf refuses to parse a
// string field that is not UTF-8, so one bad byte (a file name, a model-raised
// message, a message cut inside a character) would make a whole report
// undecodable. Torch-free.
//
//   f->set_message(ValidUtf8(e.what()));
//   std::string shown = TruncateUtf8(long_text, 600);  // Ends between characters.
//   MakeValidUtf8(&record);  // Every string field, before serializing.
#pragma once

#include <string>

#include "absl/strings/string_view.h"

namespace google::protobuf {
class Message;
}  // namespace google::protobuf

namespace preflight::engine {

// `text` with every byte that is not part of a well-formed UTF-8 character
// replaced by U+FFFD. Protobuf refuses to parse a string field that is not
// UTF-8, so text from LibTorch or a model (a file name, a raised message)
// passes through this before it enters a report.
std::string ValidUtf8(absl::string_view text);

// The longest prefix of `text` (valid UTF-8) of at most `max_bytes` bytes
// that ends between characters, followed by `ellipsis` when it was cut; the
// whole stays within `max_bytes`.
std::string TruncateUtf8(absl::string_view text, size_t max_bytes,
                         absl::string_view ellipsis = "...");

// Applies ValidUtf8 to every string field of `message`, nested and repeated
// ones too: the last line of defence before a report is serialized.
void MakeValidUtf8(google::protobuf::Message* message);

}  // namespace preflight::engine
