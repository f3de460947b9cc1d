#include "service/store/blob_ledger.h"

#include "absl/strings/str_cat.h"

namespace preflight::store {

absl::Status CheckQuota(const BlobUse& use, int64_t usage_bytes, int64_t quota_bytes) {
  if (quota_bytes <= 0 || usage_bytes + use.bytes <= quota_bytes) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat(
      use.field, ": ", use.bytes, " bytes would put tenant '", use.tenant,
      "' over its blob quota (", usage_bytes, " of ", quota_bytes,
      " bytes used); reuse stored artifacts by sha256, or wait for unused ones to expire"));
}

}  // namespace preflight::store
