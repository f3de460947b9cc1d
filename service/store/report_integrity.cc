#include "service/store/report_integrity.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "service/store/sha256.h"

namespace preflight::store {

absl::Status CheckReportHash(absl::string_view report, absl::string_view recorded,
                             absl::string_view what, absl::string_view digest) {
  const std::string actual = Sha256Hex(report);
  if (actual == recorded) return absl::OkStatus();
  return absl::DataLossError(absl::StrCat("the stored report for ", what, " (request digest ",
                                          digest, ") does not match its recorded sha256 ",
                                          recorded.empty() ? "(none)" : recorded, ": it hashes to ",
                                          actual, "; the row was altered after it was stored"));
}

absl::Status AlteredRowsError(int64_t total, const std::vector<std::string>& named) {
  if (total <= 0) return absl::OkStatus();
  return absl::DataLossError(absl::StrCat(
      total,
      " stored report(s) do not match the sha256 recorded when they were stored: request "
      "digest ",
      absl::StrJoin(named, ", "), total > static_cast<int64_t>(named.size()) ? ", ..." : "",
      "; reading them is DATA_LOSS (restore the rows from a backup, or check again)"));
}

}  // namespace preflight::store
