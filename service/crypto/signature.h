// Signed verdicts: the server signs the serialized bytes of every report it
// stores with an Ed25519 key (--signing-key); clients given the public key
// (--verify-key) refuse a verdict that is unsigned, signed by another key or
// altered after signing. The signature is made once, when the verdict is
// stored, and stored with it: a report edited in the database, or copied in
// from a store with another key, no longer verifies.
//
//   auto signer = Ed25519Signer::FromPemFile("/etc/preflight/signing.pem");
//   std::string sig = (*signer)->Sign(report.SerializeAsString());
//
//   auto verifier = Ed25519Verifier::FromPemFile("verify.pub.pem");
//   absl::Status s = VerifyVerdict(**verifier, report_bytes, sig, key_id);
//
// Keys are made with `openssl genpkey -algorithm ed25519 -out signing.pem`
// and `openssl pkey -in signing.pem -pubout -out verify.pub.pem`.
#pragma once

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace preflight::crypto {

// "ed25519:" + the first 16 hex digits of SHA-256 over the raw 32-byte
// public key: names the key in responses without revealing anything.
std::string KeyIdOf(absl::string_view raw_public_key);

class Ed25519Signer {
 public:
  // A PKCS#8 PEM Ed25519 private key. FAILED_PRECONDITION naming the file
  // when it cannot be read or holds another kind of key.
  static absl::StatusOr<std::unique_ptr<Ed25519Signer>> FromPemFile(const std::string& path);
  static absl::StatusOr<std::unique_ptr<Ed25519Signer>> FromPem(absl::string_view pem,
                                                                const std::string& what);
  ~Ed25519Signer();

  // The 64-byte signature of `message`. Never fails for a loaded key.
  std::string Sign(absl::string_view message) const;
  const std::string& key_id() const { return key_id_; }

 private:
  struct Key;
  Ed25519Signer(std::unique_ptr<Key> key, std::string key_id);
  std::unique_ptr<Key> key_;
  std::string key_id_;
};

class Ed25519Verifier {
 public:
  // A PEM Ed25519 public key (or a private key, whose public half is used).
  // FAILED_PRECONDITION naming the file otherwise.
  static absl::StatusOr<std::unique_ptr<Ed25519Verifier>> FromPemFile(const std::string& path);
  static absl::StatusOr<std::unique_ptr<Ed25519Verifier>> FromPem(absl::string_view pem,
                                                                  const std::string& what);
  ~Ed25519Verifier();

  bool Verify(absl::string_view message, absl::string_view signature) const;
  const std::string& key_id() const { return key_id_; }

 private:
  struct Key;
  Ed25519Verifier(std::unique_ptr<Key> key, std::string key_id);
  std::unique_ptr<Key> key_;
  std::string key_id_;
};

// Whether a verdict's report bytes carry a valid signature by `verifier`'s
// key. OK, or UNAUTHENTICATED saying which: unsigned (the server has no
// --signing-key, or the verdict was stored before it had one), signed by
// another key (naming both ids), or a signature that does not verify (the
// report was altered after signing).
absl::Status VerifyVerdict(const Ed25519Verifier& verifier, absl::string_view report_bytes,
                           absl::string_view signature, absl::string_view key_id);

}  // namespace preflight::crypto
