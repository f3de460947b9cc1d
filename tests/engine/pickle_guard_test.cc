// The batch pickle's pass before LibTorch (issue 15), on hand-made pickles:
// what torch.save writes passes; deep nesting, storages larger than their
// record and broken streams are INVALID_ARGUMENT naming the limit.
#include "service/engine/pickle_guard.h"

#include <map>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace preflight::engine {
namespace {

using ::testing::HasSubstr;

// Records of a two-tensor batch as torch.save writes them.
const std::map<std::string, uint64_t> kRecords = {{"data/0", 100352}, {"data/1", 256}};

std::string Msg(const absl::Status& s) { return std::string(s.message()); }

absl::Status Check(const std::string& pickle,
                   const std::map<std::string, uint64_t>& records = kRecords) {
  return CheckBatchPickle(pickle, [&](const std::string& name) -> std::optional<uint64_t> {
    auto it = records.find(name);
    if (it == records.end()) return std::nullopt;
    return it->second;
  });
}

std::string U(const std::string& s) {  // BINUNICODE
  std::string out = "X";
  const uint32_t n = static_cast<uint32_t>(s.size());
  for (int k = 0; k < 4; ++k) out += static_cast<char>((n >> (8 * k)) & 0xff);
  return out + s;
}

// A storage id tuple and the tensor rebuilt from it, as torch.save pickles
// one: `numel` is the BININT2/LONG1 encoding of the element count.
std::string Tensor(const std::string& type, const std::string& key, const std::string& numel) {
  using namespace std::string_literals;  // "..."s keeps embedded NULs.
  return "ctorch._utils\n_rebuild_tensor_v2\n(("s + U("storage") + "ctorch\n" + type + "\n" +
         U(key) + U("cpu") + numel + "tQ" + "K\x00"s + "K\x20\x85" + "K\x01\x85" + "\x89" +
         "ccollections\nOrderedDict\n)R" + "tR";
}

std::string BinInt2(int v) { return std::string("M") + char(v & 0xff) + char((v >> 8) & 0xff); }

// {"inputs": float[32, 784], "targets": long[32]}: the zoo's mlp batch.
std::string Batch(const std::string& input_numel = BinInt2(25088)) {
  return std::string("\x80\x02}(", 4) + U("inputs") + Tensor("FloatStorage", "0", input_numel) +
         U("targets") + Tensor("LongStorage", "1", std::string("K\x20", 2)) + "u.";
}

TEST(PickleGuard, WhatTorchSaveWritesPasses) {
  EXPECT_TRUE(Check(Batch()).ok()) << Check(Batch());
  // Nesting well inside the limit: a list of lists 500 deep.
  std::string deep("\x80\x02", 2);
  for (int i = 0; i < 500; ++i) deep += "]";
  for (int i = 0; i < 499; ++i) deep += "a";
  EXPECT_TRUE(Check(deep + ".").ok()) << Check(deep + ".");
}

TEST(PickleGuard, NestingBeyondTheLimitIsRefusedNamingIt) {
  // The issue's batch: values nested 5e6 deep (a few KB deflated), here as
  // 1-tuples wrapped around one another, with a stack of one value.
  const std::string proto("\x80\x02", 2);
  const absl::Status s = Check(proto + "N" + std::string(5'000'000, '\x85') + ".");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), HasSubstr("nests values deeper than 1000 levels (the limit)"));
  // As MARKs then TUPLEs: the stack's own bound comes first.
  const absl::Status marks =
      Check(proto + std::string(5'000'000, '(') + std::string(5'000'000, 't') + ".");
  EXPECT_THAT(Msg(marks), HasSubstr("values on the unpickler's stack (the limit)"));
  // Lists appended into one another, and dicts set into one another.
  std::string lists = proto;
  for (int i = 0; i <= kMaxPickleDepth; ++i) lists += "]";
  for (int i = 0; i < kMaxPickleDepth; ++i) lists += "a";
  EXPECT_THAT(Msg(Check(lists + ".")), HasSubstr("deeper than 1000 levels"));
  std::string dicts = proto + "}";
  for (int i = 0; i < kMaxPickleDepth; ++i) dicts += "K\x01}";  // Key 1: the next dict.
  for (int i = 0; i < kMaxPickleDepth; ++i) dicts += "s";
  EXPECT_THAT(Msg(Check(dicts + ".")), HasSubstr("deeper than 1000 levels"));
  // Exactly at the limit is fine.
  std::string at = proto;
  for (int i = 0; i < kMaxPickleDepth; ++i) at += "]";
  for (int i = 1; i < kMaxPickleDepth; ++i) at += "a";
  EXPECT_TRUE(Check(at + ".").ok()) << Check(at + ".");
}

TEST(PickleGuard, TooManyValuesOnTheStackAreRefused) {
  const absl::Status s =
      Check(std::string("\x80\x02", 2) + std::string(kMaxPickleStack + 1, 'N') + ".");
  EXPECT_THAT(Msg(s), HasSubstr("values on the unpickler's stack (the limit)"));
}

TEST(PickleGuard, StorageLargerThanItsRecordIsRefused) {
  // 1e12 elements: LONG1 of 6 bytes, 0x00e8d4a51000 little-endian.
  const std::string huge("\x8a\x06\x00\x10\xa5\xd4\xe8\x00", 8);
  const absl::Status s = Check(Batch(huge));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), HasSubstr("declares storage '0' of 1000000000000 elements"));
  EXPECT_THAT(Msg(s), HasSubstr("holds 100352 bytes"));
  // One element too many.
  EXPECT_THAT(Msg(Check(Batch(BinInt2(25089)))), HasSubstr("holds 100352 bytes"));
  // A storage with no record at all.
  EXPECT_THAT(Msg(Check(Batch(), {{"data/0", 100352}})),
              HasSubstr("declares storage '1' but the file has no record data/1"));
  // A negative size.
  EXPECT_THAT(Msg(Check(Batch(std::string("\x8a\x01\xff", 3)))), HasSubstr("impossible size"));
}

TEST(PickleGuard, BrokenStreamsAreRefused) {
  const std::string proto("\x80\x02", 2);
  EXPECT_THAT(Msg(Check(proto + "]")), HasSubstr("without a STOP"));
  EXPECT_THAT(Msg(Check(proto + std::string("X\xff\xff\xff\x00", 5) + "ab.")),
              HasSubstr("truncated"));
  EXPECT_THAT(Msg(Check(proto + "a.")), HasSubstr("pops more than it pushed"));
  EXPECT_THAT(Msg(Check(proto + "h\x07.")), HasSubstr("memo entry it never stored"));
  EXPECT_THAT(Msg(Check(proto + "\xff.")), HasSubstr("unknown opcode 0xff"));
}

}  // namespace
}  // namespace preflight::engine
