#include "service/crypto/signature.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>

#include <fstream>
#include <sstream>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace preflight::crypto {
namespace {

constexpr size_t kRawKeyBytes = 32;
constexpr size_t kSignatureBytes = 64;

struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;

std::string OpenSslError() {
  const unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return "not a PEM key";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof(buf));
  return buf;
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::FailedPreconditionError(absl::StrCat(path, ": cannot be read"));
  std::ostringstream ss;
  ss << in.rdbuf();
  return std::move(ss).str();
}

// Reads a private key, or (public_ok) a public key, from PEM text.
absl::StatusOr<Pkey> ParseKey(absl::string_view pem, const std::string& what, bool public_ok) {
  auto bio = [&] {
    return std::unique_ptr<BIO, decltype(&BIO_free)>(
        BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())), BIO_free);
  };
  Pkey key(PEM_read_bio_PrivateKey(bio().get(), nullptr, nullptr, nullptr));
  if (key == nullptr && public_ok) {
    ERR_clear_error();
    key.reset(PEM_read_bio_PUBKEY(bio().get(), nullptr, nullptr, nullptr));
  }
  if (key == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(what, ": no Ed25519 ",
                                                      public_ok ? "public or private" : "private",
                                                      " key in PEM form (", OpenSslError(), ")"));
  }
  if (EVP_PKEY_id(key.get()) != EVP_PKEY_ED25519) {
    return absl::FailedPreconditionError(
        absl::StrCat(what,
                     ": the key is not Ed25519 (make one with `openssl genpkey "
                     "-algorithm ed25519`)"));
  }
  return key;
}

std::string KeyIdOfPkey(EVP_PKEY* key) {
  unsigned char raw[kRawKeyBytes];
  size_t len = sizeof(raw);
  if (EVP_PKEY_get_raw_public_key(key, raw, &len) != 1) return "ed25519:unknown";
  return KeyIdOf(absl::string_view(reinterpret_cast<const char*>(raw), len));
}

}  // namespace

std::string KeyIdOf(absl::string_view raw_public_key) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(raw_public_key.data()), raw_public_key.size(),
         digest);
  return absl::StrCat("ed25519:", absl::BytesToHexString(
                                      absl::string_view(reinterpret_cast<const char*>(digest), 8)));
}

struct Ed25519Signer::Key {
  Pkey pkey;
};
struct Ed25519Verifier::Key {
  Pkey pkey;
};

Ed25519Signer::Ed25519Signer(std::unique_ptr<Key> key, std::string key_id)
    : key_(std::move(key)), key_id_(std::move(key_id)) {}
Ed25519Signer::~Ed25519Signer() = default;

absl::StatusOr<std::unique_ptr<Ed25519Signer>> Ed25519Signer::FromPem(absl::string_view pem,
                                                                      const std::string& what) {
  auto key = ParseKey(pem, what, /*public_ok=*/false);
  if (!key.ok()) return key.status();
  std::string id = KeyIdOfPkey(key->get());
  return std::unique_ptr<Ed25519Signer>(
      new Ed25519Signer(std::make_unique<Key>(Key{*std::move(key)}), std::move(id)));
}

absl::StatusOr<std::unique_ptr<Ed25519Signer>> Ed25519Signer::FromPemFile(const std::string& path) {
  auto pem = ReadFile(path);
  if (!pem.ok()) return pem.status();
  return FromPem(*pem, path);
}

std::string Ed25519Signer::Sign(absl::string_view message) const {
  std::string sig(kSignatureBytes, '\0');
  size_t len = sig.size();
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  // Ed25519 is one-shot: no digest is named (PureEdDSA, RFC 8032).
  if (ctx == nullptr ||
      EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, key_->pkey.get()) != 1 ||
      EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len,
                     reinterpret_cast<const unsigned char*>(message.data()), message.size()) != 1) {
    // Only an allocation failure gets here; an empty signature never verifies.
    ERR_clear_error();
    return "";
  }
  sig.resize(len);
  return sig;
}

Ed25519Verifier::Ed25519Verifier(std::unique_ptr<Key> key, std::string key_id)
    : key_(std::move(key)), key_id_(std::move(key_id)) {}
Ed25519Verifier::~Ed25519Verifier() = default;

absl::StatusOr<std::unique_ptr<Ed25519Verifier>> Ed25519Verifier::FromPem(absl::string_view pem,
                                                                          const std::string& what) {
  auto key = ParseKey(pem, what, /*public_ok=*/true);
  if (!key.ok()) return key.status();
  std::string id = KeyIdOfPkey(key->get());
  return std::unique_ptr<Ed25519Verifier>(
      new Ed25519Verifier(std::make_unique<Key>(Key{*std::move(key)}), std::move(id)));
}

absl::StatusOr<std::unique_ptr<Ed25519Verifier>> Ed25519Verifier::FromPemFile(
    const std::string& path) {
  auto pem = ReadFile(path);
  if (!pem.ok()) return pem.status();
  return FromPem(*pem, path);
}

bool Ed25519Verifier::Verify(absl::string_view message, absl::string_view signature) const {
  if (signature.size() != kSignatureBytes) return false;
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  const bool ok =
      ctx != nullptr &&
      EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, key_->pkey.get()) == 1 &&
      EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(signature.data()),
                       signature.size(), reinterpret_cast<const unsigned char*>(message.data()),
                       message.size()) == 1;
  ERR_clear_error();
  return ok;
}

absl::Status VerifyVerdict(const Ed25519Verifier& verifier, absl::string_view report_bytes,
                           absl::string_view signature, absl::string_view key_id) {
  if (signature.empty()) {
    return absl::UnauthenticatedError(
        "the verdict is unsigned (the server has no --signing-key, or stored it before it "
        "had one; check again to get a signed verdict)");
  }
  if (key_id != verifier.key_id()) {
    return absl::UnauthenticatedError(absl::StrCat("the verdict is signed by key ", key_id,
                                                   ", but the verify key is ", verifier.key_id()));
  }
  if (!verifier.Verify(report_bytes, signature)) {
    return absl::UnauthenticatedError(
        absl::StrCat("the verdict's signature by key ", key_id,
                     " does not verify: the report was altered after it was signed"));
  }
  return absl::OkStatus();
}

}  // namespace preflight::crypto
