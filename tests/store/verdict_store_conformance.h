// The behaviour every VerdictStore backend must have, as a parameterized
// suite. A backend's test instantiates it with a way to open its store at a
// fresh or an existing location:
//
//   INSTANTIATE_TEST_SUITE_P(Sqlite, VerdictStoreConformance,
//       ::testing::Values(VerdictStoreBackend{"sqlite", NewLocation, OpenAt}),
//       [](const auto& info) { return info.param.name; });
#pragma once

#include <functional>
#include <memory>
#include <ostream>
#include <string>

#include <gtest/gtest.h>

#include "absl/status/statusor.h"
#include "service/store/verdict_store.h"

namespace preflight::store {

struct VerdictStoreBackend {
  std::string name;  // gtest parameter name: [A-Za-z0-9_].
  // A fresh, empty location (a path, a database name).
  std::function<std::string()> new_location;
  // Opens (creating when absent) the store at a location; opening it again
  // must see what was stored before, as a restarted server would.
  std::function<absl::StatusOr<std::unique_ptr<VerdictStore>>(const std::string& location)> open;
  // Optional: changes one byte of the stored report of `digest` at a closed
  // location, behind the store's back (as someone editing the database
  // would). Without it the tamper-evidence test is skipped for the backend.
  std::function<absl::Status(const std::string& location, const std::string& digest)>
      alter_stored_report;
};

inline void PrintTo(const VerdictStoreBackend& backend, std::ostream* os) { *os << backend.name; }

class VerdictStoreConformance : public ::testing::TestWithParam<VerdictStoreBackend> {};

}  // namespace preflight::store
