// Tamper evidence shared by the verdict backends: each row stores the hex
// sha256 of its serialized report, and both the read path and the start-up
// integrity check report a mismatch the same way, whichever backend found it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace preflight::store {

// How many altered rows AlteredRowsError names (the count covers them all).
inline constexpr int kIntegrityNamedRows = 10;

// OK when `report` still hashes to `recorded`; DATA_LOSS naming `what` and
// the digest otherwise (an altered row is never served as a verdict).
absl::Status CheckReportHash(absl::string_view report, absl::string_view recorded,
                             absl::string_view what, absl::string_view digest);

// CheckIntegrity's DATA_LOSS: `total` altered rows, the first of which
// (at most kIntegrityNamedRows) are `named`. OK when total is 0.
absl::Status AlteredRowsError(int64_t total, const std::vector<std::string>& named);

}  // namespace preflight::store
