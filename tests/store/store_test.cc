#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "service/store/file_blob_store.h"
#include "service/store/sha256.h"
#include "tests/store/tiny_tmpfs.h"

namespace preflight::store {
namespace {

using ::testing::HasSubstr;

std::string TempDir() {
  char tmpl[] = "/tmp/preflight-store-test-XXXXXX";
  return mkdtemp(tmpl);
}

TEST(Sha256, KnownVector) {
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_TRUE(IsSha256Hex(Sha256Hex("")));
  EXPECT_FALSE(IsSha256Hex("ABC"));
}

TEST(BlobStore, ContentAddressedAndIdempotent) {
  auto store = FileBlobStore::Open(TempDir() + "/blobs", 1 << 20);
  ASSERT_TRUE(store.ok()) << store.status();
  auto a = (*store)->Put("hello");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->sha256, Sha256Hex("hello"));
  EXPECT_FALSE(a->already_present);
  EXPECT_TRUE(*(*store)->Has(a->sha256));
  auto b = (*store)->Put("hello");
  ASSERT_TRUE(b.ok());
  EXPECT_TRUE(b->already_present);
  std::ifstream in((*store)->PathOf(a->sha256));
  std::string content((std::istreambuf_iterator<char>(in)), {});
  EXPECT_EQ(content, "hello");
}

TEST(BlobStore, RefusesOverLimitAndLeavesNoPartialBlob) {
  const std::string dir = TempDir() + "/blobs";
  auto store = FileBlobStore::Open(dir, 8);
  ASSERT_TRUE(store.ok());
  auto w = (*store)->NewWriter();
  ASSERT_TRUE(w->Append("12345").ok());
  const absl::Status s = w->Append("67890");
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  w.reset();
  EXPECT_FALSE(*(*store)->Has(Sha256Hex("1234567890")));
  EXPECT_EQ(std::system(("test -z \"$(ls -A " + dir + ")\"").c_str()), 0) << "temp file left";
}

TEST(BlobStore, OpensABlobForReadingWithoutItsPath) {
  auto store = FileBlobStore::Open(TempDir() + "/blobs", 1 << 20);
  ASSERT_TRUE(store.ok());
  auto info = (*store)->Put("PK\x03\x04 bytes");
  ASSERT_TRUE(info.ok());
  auto fd = (*store)->OpenForRead(info->sha256);
  ASSERT_TRUE(fd.ok()) << fd.status();
  char buf[64];
  const ssize_t n = read(fd->get(), buf, sizeof(buf));
  EXPECT_EQ(std::string(buf, n > 0 ? n : 0), "PK\x03\x04 bytes");
  EXPECT_EQ(*(*store)->ReadHead(info->sha256, 4), "PK\x03\x04");
  EXPECT_EQ((*store)->OpenForRead(std::string(64, 'e')).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ((*store)->ReadHead(std::string(64, 'e'), 4).status().code(),
            absl::StatusCode::kNotFound);
}

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

// A killed upload's temp file stayed forever; a live one must survive.
TEST(BlobStore, OpenRemovesTempFilesOfUploadsThatAreGone) {
  const std::string dir = TempDir() + "/blobs";
  auto first = FileBlobStore::Open(dir, 1 << 20);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ((*first)->stale_temps_removed(), 0);
  // As a killed server leaves it: a temp file nobody holds.
  const std::string stale = dir + "/.tmp-4242-7";
  ASSERT_EQ(close(creat(stale.c_str(), 0640)), 0);
  // A live upload of this process, mid-write.
  auto live = (*first)->NewWriter();
  ASSERT_TRUE(live->Append("partial").ok());
  auto again = FileBlobStore::Open(dir, 1 << 20);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*again)->stale_temps_removed(), 1);
  EXPECT_FALSE(Exists(stale));
  auto info = live->Commit();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_TRUE(*(*again)->Has(Sha256Hex("partial")));
}

// File-size limit 0 for the current scope: any write to a regular file fails
// (EFBIG), as on a full disk.
class NoFileWrites {
 public:
  NoFileWrites() {
    signal(SIGXFSZ, SIG_IGN);
    getrlimit(RLIMIT_FSIZE, &saved_);
    rlimit none = saved_;
    none.rlim_cur = 0;
    setrlimit(RLIMIT_FSIZE, &none);
  }
  ~NoFileWrites() { setrlimit(RLIMIT_FSIZE, &saved_); }

 private:
  rlimit saved_;
};

// Every repeated inline Check stored its artifacts again (write + fsync), so
// even a repeat of a stored request failed on a full disk.
TEST(BlobStore, PutOfAStoredBlobWritesNothing) {
  const std::string dir = TempDir() + "/blobs";
  auto store = FileBlobStore::Open(dir, 1 << 20);
  ASSERT_TRUE(store.ok());
  auto a = (*store)->Put("model bytes");
  ASSERT_TRUE(a.ok());
  struct stat before;
  ASSERT_EQ(stat((*store)->PathOf(a->sha256).c_str(), &before), 0);
  absl::StatusOr<BlobInfo> b;
  {
    NoFileWrites no_writes;
    b = (*store)->Put("model bytes");
  }
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_TRUE(b->already_present);
  EXPECT_EQ(b->sha256, a->sha256);
  EXPECT_EQ(b->size, 11);
  struct stat after;
  ASSERT_EQ(stat((*store)->PathOf(a->sha256).c_str(), &after), 0);
  EXPECT_EQ(after.st_ino, before.st_ino);
  EXPECT_EQ(after.st_mtim.tv_nsec, before.st_mtim.tv_nsec);
  EXPECT_EQ(std::system(("test \"$(ls -A " + dir + ")\" = " + a->sha256).c_str()), 0)
      << "a temp file was left";
}

// A full disk was INTERNAL: it is the store's capacity, named.
TEST(BlobStore, FullDiskIsResourceExhaustedNamingTheStore) {
  TinyTmpfs disk(64 << 10);
  if (!disk.error().empty()) GTEST_SKIP() << disk.error();
  const std::string dir = disk.dir() + "/blobs";
  auto store = FileBlobStore::Open(dir, 4 << 20);
  ASSERT_TRUE(store.ok()) << store.status();
  auto put = (*store)->Put(std::string(1 << 20, 'x'));
  ASSERT_FALSE(put.ok());
  EXPECT_EQ(put.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(put.status().message()), HasSubstr("blob store " + dir + " is full"));
  EXPECT_THAT(std::string(put.status().message()), HasSubstr("No space left on device"));
  // The same through a streamed upload, and no temp file is left behind.
  auto w = (*store)->NewWriter();
  absl::Status s = w->Append(std::string(1 << 20, 'y'));
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  w.reset();
  EXPECT_EQ(std::system(("test -z \"$(ls -A " + dir + ")\"").c_str()), 0) << "temp file left";
}

}  // namespace
}  // namespace preflight::store
