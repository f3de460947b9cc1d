#include "service/engine/device_faults.h"

#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "service/engine/report_util.h"

namespace preflight::engine {

void ReportDeviceAssert(v1::Report* report, absl::string_view assert_message,
                        absl::string_view cpu_replay) {
  std::vector<std::string> surfaced;
  for (const auto& f : report->findings()) surfaced.push_back(v1::FindingCode_Name(f.code()));
  report->clear_findings();
  std::string message = absl::StrCat("a CUDA kernel failed a device-side assert: ", assert_message);
  if (!cpu_replay.empty()) absl::StrAppend(&message, "; on CPU: ", cpu_replay);
  auto* f = AddFinding(report, v1::DEVICE_ASSERT, v1::Finding::FAIL, "numerics", message);
  AddText(f, "device_message", assert_message);
  if (!cpu_replay.empty()) AddText(f, "cpu_replay", cpu_replay);
  if (!surfaced.empty()) AddText(f, "surfaced_as", JoinFirst(surfaced));
  report->set_completion(v1::COMPLETION_FINAL);
}

std::string DeviceMemoryRequested(absl::string_view m) {
  static constexpr absl::string_view kTried = "Tried to allocate ";
  const size_t at = m.find(kTried);
  if (at == absl::string_view::npos) return "";
  absl::string_view rest = m.substr(at + kTried.size());
  // "<number> <unit>", the unit ending at '.' or ' ' or ','.
  const size_t space = rest.find(' ');
  if (space == absl::string_view::npos) return "";
  size_t end = space + 1;
  while (end < rest.size() && rest[end] != '.' && rest[end] != ' ' && rest[end] != ',' &&
         rest[end] != ')') {
    ++end;
  }
  return std::string(rest.substr(0, end));
}

}  // namespace preflight::engine
