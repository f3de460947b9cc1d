// The model loader's entry (issue 15): the zip directory and the pickles of
// a model archive, read before LibTorch, on archives written here byte by
// byte: what torch.jit.save writes passes; a directory pointing outside the
// file, more records than it holds or than a model may, duplicate or
// compressed pickles, deep nesting and storages larger than their record
// are INVALID_ARGUMENT naming the record.
#include "service/engine/model_archive_guard.h"

#include <cstdint>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace preflight::engine {
namespace {

using ::testing::HasSubstr;
using namespace std::string_literals;  // "..."s keeps embedded NULs.

void Put16(std::string* s, uint32_t v) {
  for (int k = 0; k < 2; ++k) s->push_back(static_cast<char>((v >> (8 * k)) & 0xff));
}
void Put32(std::string* s, uint32_t v) {
  for (int k = 0; k < 4; ++k) s->push_back(static_cast<char>((v >> (8 * k)) & 0xff));
}
void Put64(std::string* s, uint64_t v) {
  for (int k = 0; k < 8; ++k) s->push_back(static_cast<char>((v >> (8 * k)) & 0xff));
}

struct Record {
  std::string name;
  std::string data;
  uint16_t method = 0;  // 0 stored; 8 claims deflate (the bytes stay as given).
};

// A zip as PyTorchStreamWriter lays it out: local headers and data, the
// central directory, the end record; `zip64` moves every size and offset
// into zip64 fields, as writers do for archives past 4 GiB.
std::string Zip(const std::vector<Record>& records, bool zip64 = false) {
  std::string out, dir;
  for (const Record& r : records) {
    const uint64_t offset = out.size();
    Put32(&out, 0x04034b50);
    Put16(&out, 20);
    Put16(&out, 0);
    Put16(&out, r.method);
    Put32(&out, 0);  // time, date
    Put32(&out, 0);  // crc (not this pass's business)
    Put32(&out, static_cast<uint32_t>(r.data.size()));
    Put32(&out, static_cast<uint32_t>(r.data.size()));
    Put16(&out, static_cast<uint32_t>(r.name.size()));
    Put16(&out, 0);
    out += r.name + r.data;

    std::string extra;
    if (zip64) {
      Put16(&extra, 0x0001);
      Put16(&extra, 24);
      Put64(&extra, r.data.size());
      Put64(&extra, r.data.size());
      Put64(&extra, offset);
    }
    Put32(&dir, 0x02014b50);
    Put16(&dir, 45);
    Put16(&dir, 45);
    Put16(&dir, 0);
    Put16(&dir, r.method);
    Put32(&dir, 0);
    Put32(&dir, 0);
    Put32(&dir, zip64 ? 0xffffffff : static_cast<uint32_t>(r.data.size()));
    Put32(&dir, zip64 ? 0xffffffff : static_cast<uint32_t>(r.data.size()));
    Put16(&dir, static_cast<uint32_t>(r.name.size()));
    Put16(&dir, static_cast<uint32_t>(extra.size()));
    Put16(&dir, 0);
    Put16(&dir, 0);
    Put16(&dir, 0);
    Put32(&dir, 0);
    Put32(&dir, zip64 ? 0xffffffff : static_cast<uint32_t>(offset));
    dir += r.name + extra;
  }
  const uint64_t dir_offset = out.size();
  out += dir;
  if (zip64) {
    const uint64_t record = out.size();
    Put32(&out, 0x06064b50);
    Put64(&out, 44);
    Put16(&out, 45);
    Put16(&out, 45);
    Put32(&out, 0);
    Put32(&out, 0);
    Put64(&out, records.size());
    Put64(&out, records.size());
    Put64(&out, dir.size());
    Put64(&out, dir_offset);
    Put32(&out, 0x07064b50);
    Put32(&out, 0);
    Put64(&out, record);
    Put32(&out, 1);
  }
  Put32(&out, 0x06054b50);
  Put16(&out, 0);
  Put16(&out, 0);
  Put16(&out, zip64 ? 0xffff : static_cast<uint32_t>(records.size()));
  Put16(&out, zip64 ? 0xffff : static_cast<uint32_t>(records.size()));
  Put32(&out, zip64 ? 0xffffffff : static_cast<uint32_t>(dir.size()));
  Put32(&out, zip64 ? 0xffffffff : static_cast<uint32_t>(dir_offset));
  Put16(&out, 0);
  return out;
}

std::string U(const std::string& s) {  // BINUNICODE
  std::string out = "X";
  Put32(&out, static_cast<uint32_t>(s.size()));
  return out + s;
}

// A module-ish pickle holding one float storage of `numel` elements, key
// "0": the shape of a TorchScript data.pkl's tensor reference.
std::string OneTensor(int numel) {
  return "\x80\x02"s + "ctorch._utils\n_rebuild_tensor_v2\n((" + U("storage") +
         "ctorch\nFloatStorage\n" + U("0") + U("cpu") + "M" + char(numel & 0xff) +
         char((numel >> 8) & 0xff) + "tQK\x00"s + "K\x04\x85" + "K\x01\x85" + "\x89" +
         "ccollections\nOrderedDict\n)R" + "tR.";
}

// 1-tuples wrapped `depth` deep around None.
std::string Nested(int depth) { return "\x80\x02N"s + std::string(depth, '\x85') + "."; }

std::string Msg(const absl::Status& s) { return std::string(s.message()); }

TEST(CheckModelArchive, WhatTorchJitSaveWritesPasses) {
  const std::vector<Record> model = {{"m/data/0", std::string(16, '\0')},
                                     {"m/data.pkl", OneTensor(4)},
                                     {"m/code/__torch__/m.py", "def forward(self, x): ...", 8},
                                     {"m/constants.pkl", "\x80\x02)."s},
                                     {"m/version", "3\n"}};
  EXPECT_TRUE(CheckModelArchive(Zip(model)).ok()) << Msg(CheckModelArchive(Zip(model)));
  EXPECT_TRUE(CheckModelArchive(Zip(model, /*zip64=*/true)).ok())
      << Msg(CheckModelArchive(Zip(model, true)));
  // Not a zip at all: left to the loaders, whose errors say what it is.
  EXPECT_TRUE(CheckModelArchive("not a model").ok());
  EXPECT_TRUE(CheckModelArchive("").ok());
}

TEST(CheckModelArchive, PicklesAreCheckedAgainstTheirRecords) {
  // data.pkl declares 1000 floats; data/0 holds 16 bytes.
  absl::Status s = CheckModelArchive(
      Zip({{"m/data/0", std::string(16, '\0')}, {"m/data.pkl", OneTensor(1000)}}));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), HasSubstr("the model's data.pkl declares storage '0'"));
  // constants.pkl's storages live in constants/, not data/.
  s = CheckModelArchive(Zip({{"m/data/0", std::string(16, '\0')},
                             {"m/data.pkl", "\x80\x02)."s},
                             {"m/constants.pkl", OneTensor(4)}}));
  EXPECT_THAT(Msg(s), HasSubstr("the model's constants.pkl declares storage '0' but the file "
                                "has no record"));
  EXPECT_TRUE(CheckModelArchive(Zip({{"m/constants/0", std::string(16, '\0')},
                                     {"m/constants.pkl", OneTensor(4)}}))
                  .ok());
  // Nesting LibTorch's recursive unpickler would overflow its stack on.
  s = CheckModelArchive(Zip({{"m/data.pkl", Nested(100000)}}));
  EXPECT_THAT(Msg(s), HasSubstr("the model's data.pkl"));
  EXPECT_THAT(Msg(s), HasSubstr("1000"));
}

TEST(CheckModelArchive, ADirectoryThatCannotBeTrustedIsRefused) {
  const std::string good = Zip({{"m/data.pkl", "\x80\x02)."s}});
  struct Case {
    std::string name;
    std::string bytes;
    std::string says;
  };
  std::string past_end = good;  // The directory offset points past the end.
  past_end[past_end.size() - 3] = '\x7f';
  std::string bad_local = good;  // The local header's signature is broken.
  bad_local[0] = 'Q';
  const std::vector<Case> cases = {
      {"directory outside the file", past_end, "outside the file"},
      {"no local header", bad_local, "where no record header is"},
      {"compressed pickle", Zip({{"m/data.pkl", "\x80\x02)."s, 8}}), "data.pkl compressed"},
      {"two records of one name",
       Zip({{"m/data.pkl", "\x80\x02)."s}, {"m/data.pkl", Nested(100000)}}),
       "two records named 'm/data.pkl'"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const absl::Status s = CheckModelArchive(c.bytes);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(Msg(s), HasSubstr(c.says));
  }
}

TEST(CheckModelArchive, ADirectoryClaimingMoreRecordsThanItHoldsIsRefused) {
  std::string zip = Zip({{"m/data.pkl", "\x80\x02)."s}});
  // Claim 0xfffe records in the end record (the directory holds one).
  zip[zip.size() - 12] = '\xfe';
  zip[zip.size() - 11] = '\xff';
  zip[zip.size() - 14] = '\xfe';
  zip[zip.size() - 13] = '\xff';
  absl::Status s = CheckModelArchive(zip);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), HasSubstr("truncated directory entry"));
  // A zip64 directory may claim up to 2^64 records: bounded before reading.
  std::string big = Zip({{"m/data.pkl", "\x80\x02)."s}}, /*zip64=*/true);
  const size_t total = big.size() - 22 - 20 - 56 + 32;  // The zip64 record's total count.
  big[total + 3] = '\x01';                              // 2^24 + 1 records.
  s = CheckModelArchive(big);
  EXPECT_THAT(Msg(s), HasSubstr("declares 16777217 records; a model may hold at most 100000"));
}

}  // namespace
}  // namespace preflight::engine
