// Length-prefixed protobuf frames over a file descriptor (pipe or Unix
// socket): 4-byte little-endian length, then the serialized message. On a
// Unix socket a frame may also carry open file descriptors (SCM_RIGHTS),
// which arrive with it in the receiving process.
//
//   WriteFrame(sock, command, {model_fd, batch_fd});
//   std::vector<util::UniqueFd> fds;
//   ReadFrame(sock, &command, &fds);  // fds[0], fds[1]: the same open files
#pragma once

#include <google/protobuf/message_lite.h>

#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "service/util/unique_fd.h"

namespace preflight::worker {

// Frames above this are refused on read: a corrupt length must not make the
// reader allocate gigabytes.
inline constexpr uint32_t kMaxFrameBytes = 256u << 20;
// Descriptors one frame may carry; more are refused on write and closed on
// read.
inline constexpr int kMaxFrameFds = 4;

// `fds` (sockets only) are duplicated into the receiver; the caller keeps
// its own and may close them once this returns.
absl::Status WriteFrame(int fd, const google::protobuf::MessageLite& message,
                        absl::Span<const int> fds = {});

// UNAVAILABLE at a clean end of stream, DATA_LOSS on a torn or bad frame.
// Descriptors sent with a frame read by this overload are closed.
absl::Status ReadFrame(int fd, google::protobuf::MessageLite* message);
// The same, returning the descriptors that came with the frame (close-on-exec,
// in the order sent). DATA_LOSS, and none returned, if more than
// kMaxFrameFds arrived.
absl::Status ReadFrame(int fd, google::protobuf::MessageLite* message,
                       std::vector<util::UniqueFd>* fds);

}  // namespace preflight::worker
