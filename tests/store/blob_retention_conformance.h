// Quotas and retention (blob_retention.h) over every ledger + blob store
// pairing, as a parameterized suite. A backend's test instantiates it:
//
//   INSTANTIATE_TEST_SUITE_P(Sqlite, BlobRetentionConformance,
//       ::testing::Values(BlobRetentionBackend{"sqlite", OpenFresh}),
//       [](const auto& info) { return info.param.name; });
#pragma once

#include <functional>
#include <memory>
#include <ostream>
#include <string>

#include <gtest/gtest.h>

#include "absl/status/statusor.h"
#include "service/store/blob_ledger.h"
#include "service/store/blob_store.h"

namespace preflight::store {

struct BlobBackend {
  std::unique_ptr<BlobLedger> ledger;
  std::unique_ptr<BlobStore> blobs;
};

struct BlobRetentionBackend {
  std::string name;  // gtest parameter name: [A-Za-z0-9_].
  // A ledger and a blob store at a fresh, empty location.
  std::function<absl::StatusOr<BlobBackend>()> open_fresh;
};

inline void PrintTo(const BlobRetentionBackend& backend, std::ostream* os) { *os << backend.name; }

class BlobRetentionConformance : public ::testing::TestWithParam<BlobRetentionBackend> {};

}  // namespace preflight::store
