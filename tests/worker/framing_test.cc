// Frames over pipes and Unix sockets: round trips, the refusals a corrupt
// stream must get, and descriptors that travel with a frame.
#include "service/worker/framing.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "preflight/v1/worker.pb.h"

namespace preflight::worker {
namespace {

using ::testing::HasSubstr;

struct Pair {
  util::UniqueFd a, b;
};

Pair SocketPair() {
  int sv[2];
  EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  return {util::UniqueFd(sv[0]), util::UniqueFd(sv[1])};
}

Pair Pipe() {
  int p[2];
  EXPECT_EQ(pipe2(p, O_CLOEXEC), 0);
  return {util::UniqueFd(p[1]), util::UniqueFd(p[0])};  // a writes, b reads.
}

v1::WorkerHello Hello(const std::string& version) {
  v1::WorkerHello h;
  h.set_engine_version(version);
  h.set_pid(42);
  return h;
}

TEST(Framing, RoundTripsOverAPipeAndASocket) {
  for (bool socket : {false, true}) {
    SCOPED_TRACE(socket ? "socket" : "pipe");
    Pair p = socket ? SocketPair() : Pipe();
    ASSERT_TRUE(WriteFrame(p.a.get(), Hello("v1")).ok());
    ASSERT_TRUE(WriteFrame(p.a.get(), Hello("v2")).ok());
    v1::WorkerHello got;
    ASSERT_TRUE(ReadFrame(p.b.get(), &got).ok());
    EXPECT_EQ(got.engine_version(), "v1");
    ASSERT_TRUE(ReadFrame(p.b.get(), &got).ok());
    EXPECT_EQ(got.engine_version(), "v2");
    EXPECT_EQ(got.pid(), 42);
  }
}

TEST(Framing, LargeFrameCrossesInPieces) {
  Pair p = SocketPair();
  v1::WorkerHello big = Hello(std::string(8 << 20, 'x'));  // Larger than any socket buffer.
  std::thread writer([&] { EXPECT_TRUE(WriteFrame(p.a.get(), big).ok()); });
  v1::WorkerHello got;
  const absl::Status s = ReadFrame(p.b.get(), &got);
  writer.join();
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(got.engine_version().size(), size_t{8} << 20);
}

TEST(Framing, CleanEndOfStreamIsUnavailable) {
  Pair p = Pipe();
  p.a.reset();
  v1::WorkerHello got;
  EXPECT_EQ(ReadFrame(p.b.get(), &got).code(), absl::StatusCode::kUnavailable);
}

TEST(Framing, TornAndCorruptFramesAreDataLoss) {
  struct Case {
    std::string name, bytes, message;
  } cases[] = {
      {"torn header", std::string("\x05\x00", 2), "torn header"},
      {"torn body",
       std::string("\x05\x00\x00\x00"
                   "ab",
                   6),
       "torn body"},
      {"length over the cap", std::string("\xff\xff\xff\x7f", 4), "frame: length"},
      {"not a message", std::string("\x02\x00\x00\x00\xff\xff", 6), "bad message"},
  };
  for (const auto& tc : cases) {
    SCOPED_TRACE(tc.name);
    Pair p = Pipe();
    ASSERT_EQ(write(p.a.get(), tc.bytes.data(), tc.bytes.size()),
              static_cast<ssize_t>(tc.bytes.size()));
    p.a.reset();
    v1::WorkerHello got;
    const absl::Status s = ReadFrame(p.b.get(), &got);
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
    EXPECT_THAT(std::string(s.message()), HasSubstr(tc.message));
  }
}

// A declared length near the cap followed by a few bytes and EOF is a torn
// body, read without allocating the declared 250 MiB: proved in a child whose
// address space has only 64 MiB to spare (before, the reader zero-filled
// the whole declared length first; found by fuzz/framing_fuzzer.cc).
TEST(Framing, CorruptLengthCostsOnlyTheBytesSent) {
  Pair p = Pipe();
  const uint32_t declared = 250u << 20;
  std::string bytes(4, '\0');
  for (int i = 0; i < 4; ++i) bytes[i] = static_cast<char>((declared >> (8 * i)) & 0xff);
  bytes += "only these bytes";
  ASSERT_EQ(write(p.a.get(), bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
  p.a.reset();
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    long pages = 0;
    if (FILE* f = std::fopen("/proc/self/statm", "r")) {
      if (std::fscanf(f, "%ld", &pages) != 1) pages = 0;
      std::fclose(f);
    }
    const rlim_t limit = static_cast<rlim_t>(pages) * sysconf(_SC_PAGESIZE) + (64u << 20);
    const rlimit rl{limit, limit};
    if (pages == 0 || setrlimit(RLIMIT_AS, &rl) != 0) _exit(3);
    v1::WorkerHello got;
    const absl::Status s = ReadFrame(p.b.get(), &got);
    _exit(s.code() == absl::StatusCode::kDataLoss &&
                  std::string(s.message()).find("torn body") != std::string::npos
              ? 0
              : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status)) << "the reader died (signal " << WTERMSIG(status)
                                 << "): it allocated the declared length";
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

// A temporary file holding `content`, opened read-only.
util::UniqueFd FileWith(const std::string& content) {
  char path[] = "/tmp/preflight-framing-test-XXXXXX";
  util::UniqueFd fd(mkstemp(path));
  EXPECT_TRUE(fd.valid());
  EXPECT_EQ(write(fd.get(), content.data(), content.size()), static_cast<ssize_t>(content.size()));
  unlink(path);  // The descriptor is all the receiver gets.
  return fd;
}

std::string ReadAt0(int fd) {
  char buf[64];
  const ssize_t n = pread(fd, buf, sizeof(buf), 0);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
}

TEST(Framing, DescriptorsTravelWithTheirFrameInOrder) {
  Pair p = SocketPair();
  util::UniqueFd model = FileWith("model bytes");
  util::UniqueFd batch = FileWith("batch bytes");
  v1::WorkerCommand run;
  run.mutable_run()->set_id(7);
  const int fds[] = {model.get(), batch.get()};
  ASSERT_TRUE(WriteFrame(p.a.get(), run, fds).ok());
  model.reset();  // The sender may close its copies at once.
  batch.reset();
  v1::WorkerCommand cancel;
  cancel.set_cancel_id(7);
  ASSERT_TRUE(WriteFrame(p.a.get(), cancel).ok());

  v1::WorkerCommand got;
  std::vector<util::UniqueFd> received;
  ASSERT_TRUE(ReadFrame(p.b.get(), &got, &received).ok());
  EXPECT_EQ(got.run().id(), 7u);
  ASSERT_EQ(received.size(), 2u);
  EXPECT_EQ(ReadAt0(received[0].get()), "model bytes");
  EXPECT_EQ(ReadAt0(received[1].get()), "batch bytes");
  EXPECT_TRUE(fcntl(received[0].get(), F_GETFD) & FD_CLOEXEC);
  // The next frame carries none: descriptors never leak across frames.
  ASSERT_TRUE(ReadFrame(p.b.get(), &got, &received).ok());
  EXPECT_EQ(got.cancel_id(), 7u);
  EXPECT_TRUE(received.empty());
}

TEST(Framing, TooManyDescriptorsAreRefusedOnWrite) {
  Pair p = SocketPair();
  const int fds[] = {0, 0, 0, 0, 0};
  const absl::Status s = WriteFrame(p.a.get(), Hello("x"), fds);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("at most 4"));
}

TEST(Framing, ReaderThatWantsNoDescriptorsClosesThem) {
  Pair p = SocketPair();
  util::UniqueFd f = FileWith("x");
  const int fds[] = {f.get()};
  ASSERT_TRUE(WriteFrame(p.a.get(), Hello("v"), fds).ok());
  v1::WorkerHello got;
  ASSERT_TRUE(ReadFrame(p.b.get(), &got).ok());
  EXPECT_EQ(got.engine_version(), "v");
}

}  // namespace
}  // namespace preflight::worker
