#include "service/crypto/signature.h"

#include <openssl/evp.h>
#include <openssl/pem.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace preflight::crypto {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

// A fresh Ed25519 key as PKCS#8 private and SubjectPublicKeyInfo PEM, as
// `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout` write.
struct KeyPair {
  std::string private_pem, public_pem;
};

KeyPair NewKey(const char* type = "ED25519") {
  EVP_PKEY* key = EVP_PKEY_Q_keygen(nullptr, nullptr, type);
  auto pem = [&](bool priv) {
    BIO* bio = BIO_new(BIO_s_mem());
    if (priv) {
      PEM_write_bio_PrivateKey(bio, key, nullptr, nullptr, 0, nullptr, nullptr);
    } else {
      PEM_write_bio_PUBKEY(bio, key);
    }
    char* data = nullptr;
    const long n = BIO_get_mem_data(bio, &data);
    std::string out(data, static_cast<size_t>(n));
    BIO_free(bio);
    return out;
  };
  KeyPair k{pem(true), pem(false)};
  EVP_PKEY_free(key);
  return k;
}

TEST(Ed25519, SignedReportVerifiesAndEveryAlteredByteIsRefused) {
  const KeyPair k = NewKey();
  auto signer = Ed25519Signer::FromPem(k.private_pem, "signing.pem");
  auto verifier = Ed25519Verifier::FromPem(k.public_pem, "verify.pem");
  ASSERT_TRUE(signer.ok()) << signer.status();
  ASSERT_TRUE(verifier.ok()) << verifier.status();
  EXPECT_EQ((*signer)->key_id(), (*verifier)->key_id());
  EXPECT_THAT((*signer)->key_id(), StartsWith("ed25519:"));
  EXPECT_EQ((*signer)->key_id().size(), 8u + 16u);

  const std::string report("\x08\x02\x12\x05hello report bytes", 25);
  const std::string sig = (*signer)->Sign(report);
  ASSERT_EQ(sig.size(), 64u);
  EXPECT_TRUE(VerifyVerdict(**verifier, report, sig, (*signer)->key_id()).ok());
  for (size_t i = 0; i < report.size(); ++i) {
    SCOPED_TRACE(i);
    std::string altered = report;
    altered[i] = static_cast<char>(altered[i] ^ 0x01);
    const absl::Status s = VerifyVerdict(**verifier, altered, sig, (*signer)->key_id());
    EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated);
    EXPECT_THAT(std::string(s.message()), HasSubstr("altered after it was signed"));
  }
  std::string bad_sig = sig;
  bad_sig[0] = static_cast<char>(bad_sig[0] ^ 0x80);
  EXPECT_FALSE((*verifier)->Verify(report, bad_sig));
  EXPECT_FALSE((*verifier)->Verify(report, sig.substr(0, 63)));
}

TEST(Ed25519, UnsignedAndOtherKeyVerdictsAreRefusedSayingWhich) {
  const KeyPair a = NewKey(), b = NewKey();
  auto signer = Ed25519Signer::FromPem(a.private_pem, "a.pem");
  auto other = Ed25519Verifier::FromPem(b.public_pem, "b.pem");
  ASSERT_TRUE(signer.ok() && other.ok());
  const std::string sig = (*signer)->Sign("report");
  absl::Status s = VerifyVerdict(**other, "report", "", "");
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(std::string(s.message()), HasSubstr("unsigned"));
  s = VerifyVerdict(**other, "report", sig, (*signer)->key_id());
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(std::string(s.message()), HasSubstr((*signer)->key_id()));
  EXPECT_THAT(std::string(s.message()), HasSubstr((*other)->key_id()));
  // A key id that claims to be the verifier's does not make a foreign
  // signature verify.
  s = VerifyVerdict(**other, "report", sig, (*other)->key_id());
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(std::string(s.message()), HasSubstr("does not verify"));
}

TEST(Ed25519, VerifierAcceptsThePrivateKeyToo) {
  const KeyPair k = NewKey();
  auto v = Ed25519Verifier::FromPem(k.private_pem, "signing.pem");
  ASSERT_TRUE(v.ok()) << v.status();
  auto s = Ed25519Signer::FromPem(k.private_pem, "signing.pem");
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE((*v)->Verify("m", (*s)->Sign("m")));
}

TEST(Ed25519, WrongKeysAreRefusedNamingTheFile) {
  auto garbage = Ed25519Signer::FromPem("not a key", "/etc/k.pem");
  EXPECT_EQ(garbage.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(garbage.status().message()), HasSubstr("/etc/k.pem"));
  // A public key cannot sign.
  auto pub = Ed25519Signer::FromPem(NewKey().public_pem, "pub.pem");
  EXPECT_EQ(pub.status().code(), absl::StatusCode::kFailedPrecondition);
  // Another algorithm is refused by name.
  auto x25519 = Ed25519Verifier::FromPem(NewKey("X25519").public_pem, "x.pem");
  EXPECT_EQ(x25519.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(x25519.status().message()), HasSubstr("not Ed25519"));
  auto missing = Ed25519Verifier::FromPemFile("/nonexistent/v.pem");
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("/nonexistent/v.pem"));
}

}  // namespace
}  // namespace preflight::crypto
