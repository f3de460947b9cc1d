#include "service/server/host_memory.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace preflight::server {
namespace {

using ::testing::HasSubstr;

constexpr int64_t kMiB = int64_t{1} << 20;

TEST(MemoryOvercommitWarning, WarnsWithTheNumbersOnlyWhenSlotsTimesMemoryExceedTheHost) {
  struct Case {
    const char* name;
    int slots;
    int64_t job, host;
    bool warns;
  } cases[] = {
      {"fits", 2, 8192 * kMiB, 32768 * kMiB, false},
      {"exactly fills", 4, 8192 * kMiB, 32768 * kMiB, false},
      {"one slot too many", 5, 8192 * kMiB, 32768 * kMiB, true},
      {"unknown host memory", 64, 8192 * kMiB, 0, false},
  };
  for (const auto& tc : cases) {
    SCOPED_TRACE(tc.name);
    EXPECT_EQ(!MemoryOvercommitWarning(tc.slots, tc.job, tc.host).empty(), tc.warns);
  }
  const std::string w = MemoryOvercommitWarning(5, 8192 * kMiB, 32768 * kMiB);
  EXPECT_THAT(w, HasSubstr("5 job slots x 8192 MiB per job (--job-memory-mb) = 40960 MiB"));
  EXPECT_THAT(w, HasSubstr("host's memory of 32768 MiB"));
}

TEST(HostMemoryBytes, IsKnownHere) { EXPECT_GT(HostMemoryBytes(), 0); }

}  // namespace
}  // namespace preflight::server
