#include "service/engine/report_util.h"
#include "service/engine/utf8.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace preflight::engine {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(ComputeVerdict, WorstSeverityWins) {
  struct Case {
    std::vector<v1::Finding::Severity> severities;
    v1::Verdict want;
  };
  const Case cases[] = {
      {{}, v1::PASS},
      {{v1::Finding::INFO}, v1::PASS},
      {{v1::Finding::INFO, v1::Finding::WARN}, v1::WARN},
      {{v1::Finding::WARN, v1::Finding::FAIL, v1::Finding::INFO}, v1::FAIL},
      {{v1::Finding::FAIL, v1::Finding::ERROR}, v1::ERROR},
  };
  for (const auto& tc : cases) {
    v1::Report r;
    for (auto s : tc.severities) AddFinding(&r, v1::LOSS_PLATEAU, s, "overfit", "m");
    EXPECT_EQ(ComputeVerdict(r), tc.want) << tc.severities.size();
  }
}

TEST(AddFinding, FillsCanonicalHintAndEvidence) {
  v1::Report r;
  auto* f = AddFinding(&r, v1::LOSS_SHAPE_BROADCAST, v1::Finding::FAIL, "init", "shapes");
  AddNumber(f, "n", 3);
  AddText(f, "t", "x");
  EXPECT_THAT(f->hint(), HasSubstr("broadcast"));
  ASSERT_EQ(f->evidence_size(), 2);
  EXPECT_EQ(f->evidence(0).number(), 3);
  EXPECT_EQ(f->evidence(1).text(), "x");
  EXPECT_TRUE(HasFinding(r, v1::LOSS_SHAPE_BROADCAST));
  EXPECT_FALSE(HasFinding(r, v1::LOSS_FLAT));
}

TEST(CanonicalHint, EveryCodeHasOne) {
  const auto* desc = v1::FindingCode_descriptor();
  for (int i = 0; i < desc->value_count(); ++i) {
    const auto code = static_cast<v1::FindingCode>(desc->value(i)->number());
    if (code == v1::FINDING_CODE_UNSPECIFIED) continue;
    EXPECT_FALSE(CanonicalHint(code).empty()) << desc->value(i)->name();
  }
}

TEST(TrimTorchMessage, DropsNativeBacktrace) {
  const std::string what =
      "The size of tensor a (3) must match the size of tensor b (4)\n"
      "Exception raised from infer_size_impl at ../aten/src/ATen/ExpandUtils.cpp:31\n"
      "frame #0: c10::Error::Error(...) + 0x97\n";
  const std::string t = TrimTorchMessage(what);
  EXPECT_THAT(t, HasSubstr("must match the size"));
  EXPECT_THAT(t, Not(HasSubstr("frame #0")));
  EXPECT_THAT(t, Not(HasSubstr("Exception raised")));
}

TEST(TrimTorchMessage, LeadsWithTheErrorOfATorchScriptTraceback) {
  const std::string what =
      "The following operation failed in the TorchScript interpreter.\n"
      "Traceback of TorchScript, serialized code (most recent call last):\n"
      "  File \"code/__torch__.py\", line 9, in forward\n"
      "    big = torch.ones([137438953472])\n"
      "          ~~~~~~~~~~ <--- HERE\n"
      "Traceback of TorchScript, original code (most recent call last):\n"
      "  File \"/src/model.py\", line 42, in forward\n"
      "    big = torch.ones(512 * 1024 ** 3 // 4)\n"
      "RuntimeError: [enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't "
      "allocate memory: you tried to allocate 549755813888 bytes.\n";
  const std::string t = TrimTorchMessage(what);
  EXPECT_TRUE(absl::StartsWith(t, "RuntimeError: [enforce fail")) << t;
  EXPECT_THAT(t, HasSubstr("can't allocate memory"));
  EXPECT_THAT(t, HasSubstr("[File \"/src/model.py\", line 42, in forward: big = torch.ones"));
}

TEST(TrimTorchMessage, CapsLength) {
  EXPECT_EQ(TrimTorchMessage(std::string(5000, 'x'), 100).size(), 100u);
}

bool IsUtf8(const std::string& s) {
  v1::Finding f;
  f.set_message(s);
  v1::Finding back;
  // Protobuf itself refuses a string field that is not UTF-8.
  return back.ParseFromString(f.SerializeAsString());
}

// A message cut at a byte limit inside a multi-byte character made the whole
// report undecodable (the verdict became INTERNAL_ERROR).
TEST(TrimTorchMessage, CutsBetweenCharactersNeverInsideOne) {
  const std::string e_acute = "\xC3\xA9", euro = "\xE2\x82\xAC", face = "\xF0\x9F\x98\x80";
  for (const std::string& ch : {e_acute, euro, face}) {
    std::string what;
    while (what.size() < 2000) what += ch;
    for (size_t limit = 90; limit < 100; ++limit) {
      SCOPED_TRACE(absl::StrCat(ch.size(), "-byte characters, limit ", limit));
      const std::string t = TrimTorchMessage(what, limit);
      EXPECT_LE(t.size(), limit);
      EXPECT_GE(t.size(), limit - ch.size() + 1 - 3);
      EXPECT_TRUE(absl::EndsWith(t, "..."));
      EXPECT_TRUE(IsUtf8(t));
    }
  }
}

TEST(ValidUtf8, ReplacesEveryMalformedSequenceAndKeepsTheRest) {
  struct Case {
    std::string in, want;
  } cases[] = {
      {"plain ascii", "plain ascii"},
      {"caf\xC3\xA9", "caf\xC3\xA9"},
      {"\xF0\x9F\x98\x80", "\xF0\x9F\x98\x80"},
      {"bad \xFF byte", "bad \xEF\xBF\xBD byte"},
      {"cut \xE2\x82", "cut \xEF\xBF\xBD\xEF\xBF\xBD"},          // Truncated character.
      {"\xC0\xAF", "\xEF\xBF\xBD\xEF\xBF\xBD"},                  // Overlong '/'.
      {"\xED\xA0\x80", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"},  // Surrogate.
      {"\xF4\x90\x80\x80x", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBDx"},
      {std::string("nul\0ok", 6), std::string("nul\0ok", 6)},
  };
  for (const auto& tc : cases) {
    SCOPED_TRACE(tc.want);
    EXPECT_EQ(ValidUtf8(tc.in), tc.want);
    EXPECT_TRUE(IsUtf8(ValidUtf8(tc.in)));
  }
}

TEST(TruncateUtf8, ShortTextIsUnchangedAndNoEllipsisWhenAsked) {
  EXPECT_EQ(TruncateUtf8("abc", 3), "abc");
  EXPECT_EQ(TruncateUtf8("ab\xC3\xA9", 3, ""), "ab");
  EXPECT_EQ(TruncateUtf8("abcdef", 2), "ab");  // No room for the ellipsis.
}

// A file name or a model-raised message with invalid bytes reaches the
// report through these: the report must still decode.
TEST(AddFinding, InvalidUtf8FromAModelStillDecodes) {
  v1::Report r;
  v1::Finding* f = AddFinding(&r, v1::SANDBOX_VIOLATION, v1::Finding::ERROR, "worker",
                              "refused open of /tmp/\xFF\xFE.pt");
  AddText(f, "path", "/tmp/\xFF\xFE.pt");
  EXPECT_EQ(f->message(), "refused open of /tmp/\xEF\xBF\xBD\xEF\xBF\xBD.pt");
  v1::Report back;
  EXPECT_TRUE(back.ParseFromString(r.SerializeAsString()));
  EXPECT_EQ(TrimTorchMessage("RuntimeError: bad \xFF"), "RuntimeError: bad \xEF\xBF\xBD");
}

TEST(MakeValidUtf8, RepairsEveryStringFieldNestedAndRepeated) {
  v1::Report r;
  v1::Finding* f = r.add_findings();
  f->set_message("m \xFF");
  f->add_evidence()->set_text("t \xFE");
  r.add_findings()->set_hint("\xC3");
  v1::Report back;
  ASSERT_FALSE(back.ParseFromString(r.SerializeAsString()));  // The fault itself.
  MakeValidUtf8(&r);
  ASSERT_TRUE(back.ParseFromString(r.SerializeAsString()));
  EXPECT_EQ(back.findings(0).message(), "m \xEF\xBF\xBD");
  EXPECT_EQ(back.findings(0).evidence(0).text(), "t \xEF\xBF\xBD");
  EXPECT_EQ(back.findings(1).hint(), "\xEF\xBF\xBD");
}

}  // namespace
}  // namespace preflight::engine
