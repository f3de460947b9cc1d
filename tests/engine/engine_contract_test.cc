// engine.h's contract: RunCheck never throws, and a config it cannot run is
// an ERROR report (CONFIG_INVALID naming the field), whatever else is wrong.
#include <random>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "service/engine/config.h"
#include "service/engine/engine.h"
#include "service/engine/report_util.h"
#include "service/engine/utf8.h"

namespace preflight::engine {
namespace {

using ::testing::HasSubstr;

// One field of the config set to a value out of its range, or garbage.
void Break(std::mt19937& rng, v1::CheckConfig* c) {
  const double bad_numbers[] = {-1, 0, -1e300, 1e300, std::nan(""), INFINITY, -INFINITY, 1.5};
  const int bad_ints[] = {-1, 0, -2147483647, 2147483647, kMaxSteps + 1, 1025};
  const char* bad_strings[] = {"",           "hinge",    "tpu",  "cuda:",       "cuda:-1",
                               "cuda:99999", "\xff\xfe", "ADAM", "model.loss2", "cuda:0x"};
  auto num = [&] { return bad_numbers[rng() % std::size(bad_numbers)]; };
  auto in = [&] { return bad_ints[rng() % std::size(bad_ints)]; };
  auto str = [&] { return std::string(bad_strings[rng() % std::size(bad_strings)]); };
  switch (rng() % 13) {
    case 0: c->set_loss(str()); break;
    case 1: c->set_optimizer(str()); break;
    case 2: c->set_lr(num()); break;
    case 3: c->set_weight_decay(num()); break;
    case 4: c->set_momentum(num()); break;
    case 5: c->set_max_steps(in()); break;
    case 6: c->set_device(str()); break;
    case 7: c->set_intra_op_threads(in()); break;
    case 8: c->set_target_ratio(num()); break;
    case 9: c->set_target_loss(num()); break;
    case 10: c->set_determinism_steps(in()); break;
    case 11: c->set_timeout_seconds(num()); break;
    case 12: c->set_model_format(static_cast<v1::ArtifactFormat>(in())); break;
  }
}

std::string RandomBytes(std::mt19937& rng) {
  std::string s(rng() % 64, '\0');
  for (char& ch : s) ch = static_cast<char>(rng());
  // Sometimes a zip header, so the loaders get past their first test.
  if (!s.empty() && rng() % 2 == 0) s.replace(0, std::min<size_t>(4, s.size()), "PK\x03\x04");
  return s;
}

TEST(RunCheckContract, InvalidConfigsAreErrorReportsNamingTheField) {
  std::mt19937 rng(12345);
  int invalid = 0;
  for (int i = 0; i < 400; ++i) {
    v1::CheckConfig c;
    c.set_device("cpu");
    ApplyDefaults(&c);
    const int breaks = 1 + static_cast<int>(rng() % 3);
    for (int b = 0; b < breaks; ++b) Break(rng, &c);
    const absl::Status valid = ValidateConfig(c);
    SCOPED_TRACE(c.ShortDebugString());
    v1::Report r;
    ASSERT_NO_THROW(r = RunCheck(c, {RandomBytes(rng), RandomBytes(rng)}));
    EXPECT_EQ(r.verdict(), v1::ERROR);
    EXPECT_EQ(r.completion(), v1::COMPLETION_FINAL);
    ASSERT_GE(r.findings_size(), 1);
    if (!valid.ok()) {
      ++invalid;
      ASSERT_EQ(r.findings_size(), 1);
      EXPECT_EQ(r.findings(0).code(), v1::CONFIG_INVALID);
      // The validation message, made valid UTF-8 as every report string is
      // (a bad config may carry arbitrary bytes).
      EXPECT_EQ(r.findings(0).message(), ValidUtf8(valid.message()));
      // The message starts with the field it names.
      EXPECT_THAT(r.findings(0).message(), ::testing::MatchesRegex("^[a-z_]+: .*"));
    } else {
      // A valid config with garbage artifacts: the artifact is what is wrong.
      EXPECT_TRUE(HasFinding(r, v1::ARTIFACT_INVALID) || HasFinding(r, v1::DATA_INVALID))
          << r.ShortDebugString();
    }
  }
  // The generator must actually produce invalid configs for this to test anything.
  EXPECT_GT(invalid, 300);
}

TEST(RunCheckContract, ConfigWithoutDefaultsIsRefusedNotGuessed) {
  v1::CheckConfig c;  // ApplyDefaults never ran: no optimizer, no lr.
  const v1::Report r = RunCheck(c, {"", ""});
  ASSERT_EQ(r.findings_size(), 1);
  EXPECT_EQ(r.findings(0).code(), v1::CONFIG_INVALID);
  EXPECT_THAT(r.findings(0).message(), HasSubstr("optimizer: unknown optimizer ''"));
  EXPECT_EQ(r.verdict(), v1::ERROR);
}

TEST(RunCheckContract, ExplicitZeroLearningRateIsAnErrorNotTheDefault) {
  v1::CheckConfig c;
  c.set_lr(0);
  ApplyDefaults(&c);
  const v1::Report r = RunCheck(c, {"", ""});
  ASSERT_EQ(r.findings_size(), 1);
  EXPECT_EQ(r.findings(0).code(), v1::CONFIG_INVALID);
  EXPECT_THAT(r.findings(0).message(), HasSubstr("lr: must be a finite number in (0, 1000]"));
}

}  // namespace
}  // namespace preflight::engine
