// SHA-256 helpers (OpenSSL), lowercase hex.
//
//   Sha256 h; h.Update(a); h.Update(b); std::string hex = h.HexDigest();
#pragma once

#include <memory>
#include <string>

#include "absl/strings/string_view.h"

namespace preflight::store {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void Update(absl::string_view data);
  // Finishes the digest; the object must not be updated afterwards.
  std::string HexDigest();

 private:
  struct Ctx;
  std::unique_ptr<Ctx> ctx_;
};

std::string Sha256Hex(absl::string_view data);

// True for 64 lowercase hex characters.
bool IsSha256Hex(absl::string_view s);

}  // namespace preflight::store
