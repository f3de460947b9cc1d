#include "service/worker/framing.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace preflight::worker {
namespace {

absl::Status WriteAll(int fd, const char* p, size_t n) {
  while (n > 0) {
    const ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return absl::UnavailableError(absl::StrCat("write: ", std::strerror(errno)));
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return absl::OkStatus();
}

// Returns bytes read (< n only at EOF).
absl::StatusOr<size_t> ReadAll(int fd, char* p, size_t n) {
  size_t got = 0;
  while (got < n) {
    const ssize_t r = read(fd, p + got, n - got);
    if (r < 0) {
      if (errno == EINTR) continue;
      return absl::UnavailableError(absl::StrCat("read: ", std::strerror(errno)));
    }
    if (r == 0) break;
    got += static_cast<size_t>(r);
  }
  return got;
}

}  // namespace

absl::Status WriteFrame(int fd, const google::protobuf::MessageLite& message) {
  std::string buf(4, '\0');
  if (!message.AppendToString(&buf)) return absl::InternalError("frame: serialize failed");
  const uint32_t len = static_cast<uint32_t>(buf.size() - 4);
  for (int i = 0; i < 4; ++i) buf[i] = static_cast<char>((len >> (8 * i)) & 0xff);
  return WriteAll(fd, buf.data(), buf.size());
}

absl::Status ReadFrame(int fd, google::protobuf::MessageLite* message) {
  unsigned char header[4];
  auto got = ReadAll(fd, reinterpret_cast<char*>(header), 4);
  if (!got.ok()) return got.status();
  if (*got == 0) return absl::UnavailableError("end of stream");
  if (*got < 4) return absl::DataLossError("frame: torn header");
  const uint32_t len = header[0] | (header[1] << 8) | (header[2] << 16) |
                       (static_cast<uint32_t>(header[3]) << 24);
  if (len > kMaxFrameBytes) return absl::DataLossError(absl::StrCat("frame: length ", len));
  std::string body(len, '\0');
  got = ReadAll(fd, body.data(), len);
  if (!got.ok()) return got.status();
  if (*got < len) return absl::DataLossError("frame: torn body");
  if (!message->ParseFromString(body)) return absl::DataLossError("frame: bad message");
  return absl::OkStatus();
}

}  // namespace preflight::worker
