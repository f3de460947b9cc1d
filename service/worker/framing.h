// Length-prefixed protobuf frames over a file descriptor (pipe or Unix
// socket): 4-byte little-endian length, then the serialized message.
#pragma once

#include <google/protobuf/message_lite.h>

#include "absl/status/status.h"

namespace preflight::worker {

// Frames above this are refused on read: a corrupt length must not make the
// reader allocate gigabytes.
inline constexpr uint32_t kMaxFrameBytes = 256u << 20;

absl::Status WriteFrame(int fd, const google::protobuf::MessageLite& message);

// UNAVAILABLE at a clean end of stream, DATA_LOSS on a torn or bad frame.
absl::Status ReadFrame(int fd, google::protobuf::MessageLite* message);

}  // namespace preflight::worker
