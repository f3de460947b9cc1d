#include "service/worker/framing.h"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
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

// The first bytes go with the descriptors in one sendmsg (the kernel attaches
// them to those bytes); the rest is an ordinary write.
absl::Status SendWithFds(int fd, const char* p, size_t n, absl::Span<const int> fds) {
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFrameFds)] = {};
  iovec iov{const_cast<char*>(p), n};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
  std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  ssize_t w;
  do {
    w = sendmsg(fd, &msg, MSG_NOSIGNAL);
  } while (w < 0 && errno == EINTR);
  if (w < 0) return absl::UnavailableError(absl::StrCat("sendmsg: ", std::strerror(errno)));
  return WriteAll(fd, p + w, n - static_cast<size_t>(w));
}

// Reads exactly n bytes (fewer only at EOF); descriptors that arrive on the
// way are appended to `fds` (or closed when it is null). Returns bytes read.
absl::StatusOr<size_t> ReadAll(int fd, char* p, size_t n, std::vector<util::UniqueFd>* fds,
                               bool* too_many_fds) {
  size_t got = 0;
  while (got < n) {
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * (kMaxFrameFds + 1))];
    iovec iov{p + got, n - got};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    ssize_t r = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
    if (r < 0 && errno == ENOTSOCK) {  // A pipe: no descriptors.
      r = read(fd, p + got, n - got);
      msg.msg_controllen = 0;
      msg.msg_flags = 0;
    }
    if (r < 0) {
      if (errno == EINTR) continue;
      return absl::UnavailableError(absl::StrCat("read: ", std::strerror(errno)));
    }
    if (msg.msg_flags & MSG_CTRUNC) *too_many_fds = true;
    for (cmsghdr* c = msg.msg_controllen > 0 ? CMSG_FIRSTHDR(&msg) : nullptr; c != nullptr;
         c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; ++i) {
        int received;
        std::memcpy(&received, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        util::UniqueFd owned(received);
        if (fds != nullptr) fds->push_back(std::move(owned));
      }
    }
    if (r == 0) break;
    got += static_cast<size_t>(r);
  }
  return got;
}

absl::Status Read(int fd, google::protobuf::MessageLite* message,
                  std::vector<util::UniqueFd>* fds) {
  bool too_many = false;
  unsigned char header[4];
  auto got = ReadAll(fd, reinterpret_cast<char*>(header), 4, fds, &too_many);
  if (!got.ok()) return got.status();
  if (*got == 0) return absl::UnavailableError("end of stream");
  if (*got < 4) return absl::DataLossError("frame: torn header");
  const uint32_t len =
      header[0] | (header[1] << 8) | (header[2] << 16) | (static_cast<uint32_t>(header[3]) << 24);
  if (len > kMaxFrameBytes) return absl::DataLossError(absl::StrCat("frame: length ", len));
  // The buffer grows with the bytes that actually arrive (doubling from
  // 1 MiB), never to the declared length up front: a corrupt or hostile
  // length followed by EOF costs what was sent, not 256 MiB (found by
  // fuzz/framing_fuzzer.cc).
  std::string body;
  constexpr size_t kFirstStep = 1 << 20;
  while (body.size() < len) {
    const size_t old = body.size();
    const size_t want = std::min<size_t>(len - old, std::max(kFirstStep, old));
    body.resize(old + want);
    got = ReadAll(fd, body.data() + old, want, fds, &too_many);
    if (!got.ok()) return got.status();
    if (*got < want) return absl::DataLossError("frame: torn body");
  }
  if (too_many || (fds != nullptr && fds->size() > static_cast<size_t>(kMaxFrameFds))) {
    if (fds != nullptr) fds->clear();
    return absl::DataLossError(absl::StrCat("frame: more than ", kMaxFrameFds, " descriptors"));
  }
  if (!message->ParseFromString(body)) return absl::DataLossError("frame: bad message");
  return absl::OkStatus();
}

}  // namespace

absl::Status WriteFrame(int fd, const google::protobuf::MessageLite& message,
                        absl::Span<const int> fds) {
  if (fds.size() > static_cast<size_t>(kMaxFrameFds)) {
    return absl::InvalidArgumentError(
        absl::StrCat("frame: ", fds.size(), " descriptors; at most ", kMaxFrameFds));
  }
  std::string buf(4, '\0');
  if (!message.AppendToString(&buf)) return absl::InternalError("frame: serialize failed");
  const uint32_t len = static_cast<uint32_t>(buf.size() - 4);
  for (int i = 0; i < 4; ++i) buf[i] = static_cast<char>((len >> (8 * i)) & 0xff);
  if (!fds.empty()) return SendWithFds(fd, buf.data(), buf.size(), fds);
  return WriteAll(fd, buf.data(), buf.size());
}

absl::Status ReadFrame(int fd, google::protobuf::MessageLite* message) {
  return Read(fd, message, nullptr);
}

absl::Status ReadFrame(int fd, google::protobuf::MessageLite* message,
                       std::vector<util::UniqueFd>* fds) {
  fds->clear();
  return Read(fd, message, fds);
}

}  // namespace preflight::worker
