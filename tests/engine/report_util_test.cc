#include "service/engine/report_util.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/match.h"

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

}  // namespace
}  // namespace preflight::engine
