#include "service/server/auth.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"

namespace preflight::server {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kTokenA[] = "token-of-tenant-a-0123456789";
constexpr char kTokenB[] = "token-of-tenant-b-0123456789";
constexpr char kReader[] = "token-of-the-slurm-gate-0123";
constexpr char kAdmin[] = "token-of-the-operators-01234";

TokenTable Table() {
  // tenant-b's token is given by its SHA-256 only.
  auto t = TokenTable::Parse(
      absl::StrCat("# token tenant role prefixes\n", kTokenA, " tenant-a tenant\n\n",
                   "sha256:5ff745d49276dddde7364c098d5307a22f02f3cce76a0c117b6ef6304345b4bc",
                   " tenant-b tenant team-b/ shared-b/  # two prefixes\n", kReader,
                   "\tslurm reader\n", kAdmin, " ops admin\n"),
      "tokens");
  EXPECT_TRUE(t.ok()) << t.status();
  return *std::move(t);
}

const Principal& Who(const TokenTable& t, const std::string& token) {
  auto who = Authenticate(t, "Bearer " + token);
  EXPECT_TRUE(who.ok()) << who.status();
  return **who;
}

TEST(TokenTable, ParsesRolesAndPrefixesAndFindsTokensByDigest) {
  const TokenTable t = Table();
  EXPECT_EQ(t.size(), 4u);
  EXPECT_EQ(Who(t, kTokenA).tenant, "tenant-a");
  EXPECT_EQ(Who(t, kTokenA).job_prefixes, std::vector<std::string>{"tenant-a/"});
  EXPECT_EQ(Who(t, kTokenB).tenant, "tenant-b");
  EXPECT_EQ(Who(t, kTokenB).job_prefixes, (std::vector<std::string>{"team-b/", "shared-b/"}));
  EXPECT_EQ(Who(t, kReader).role, Role::kReader);
  EXPECT_EQ(Who(t, kAdmin).role, Role::kAdmin);
}

TEST(TokenTable, MalformedLinesNameTheLineNeverTheToken) {
  struct Case {
    std::string text, want;
  } cases[] = {
      {"short-token tenant-a tenant", ":1: the token is shorter than 16"},
      {"# c\n0123456789abcdef0123 t superuser", ":2: unknown role 'superuser'"},
      {"0123456789abcdef0123 t", ":1: expected TOKEN TENANT ROLE"},
      {"0123456789abcdef0123 t reader a/", ":1: job-id prefixes only apply to the tenant role"},
      {"0123456789abcdef0123 a tenant\n0123456789abcdef0123 b tenant", ":2: the same token"},
      {"sha256:XYZ t tenant", ":1: sha256: must be followed by 64 lowercase hex"},
      {"0123456789abcdef0123 bad/tenant tenant", ":1: the tenant must be"},
      {"# nothing\n", ": holds no tokens"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.text);
    auto t = TokenTable::Parse(c.text, "tokens.txt");
    ASSERT_FALSE(t.ok());
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(t.status().message()), HasSubstr("tokens.txt" + c.want));
    EXPECT_THAT(std::string(t.status().message()), Not(HasSubstr("0123456789abcdef0123")));
  }
  EXPECT_EQ(TokenTable::FromFile("/nonexistent/tokens").status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(Authenticate, MissingMalformedAndUnknownTokensAreUnauthenticated) {
  const TokenTable t = Table();
  struct Case {
    std::string header, want;
  } cases[] = {
      {"", "no bearer token"},
      {"Basic dXNlcjpwdw==", "expected `Bearer TOKEN`"},
      {"Bearer ", "expected `Bearer TOKEN`"},
      {"Bearer not-a-known-token-at-all", "not known to this server"},
      // A token's digest is not the token.
      {"Bearer 5ff745d49276dddde7364c098d5307a22f02f3cce76a0c117b6ef6304345b4bc",
       "not known to this server"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.header);
    auto who = Authenticate(t, c.header);
    ASSERT_FALSE(who.ok());
    EXPECT_EQ(who.status().code(), absl::StatusCode::kUnauthenticated);
    EXPECT_THAT(std::string(who.status().message()), HasSubstr(c.want));
    EXPECT_THAT(std::string(who.status().message()), Not(HasSubstr("not-a-known-token")));
  }
}

TEST(Authorize, TenantsBindAndReadOnlyTheirOwnJobIds) {
  const TokenTable t = Table();
  const Principal& a = Who(t, kTokenA);
  const Principal& b = Who(t, kTokenB);
  EXPECT_TRUE(AuthorizeCheck(a, "tenant-a/run-1").ok());
  EXPECT_TRUE(AuthorizeCheck(a, "").ok()) << "a check without a job id binds nothing";
  EXPECT_TRUE(AuthorizeCheck(b, "shared-b/x").ok());
  const absl::Status rebind = AuthorizeCheck(b, "tenant-a/run-1");
  EXPECT_EQ(rebind.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(rebind.message()),
              HasSubstr("job_id: tenant 'tenant-b' may not bind job id 'tenant-a/run-1'; its "
                        "job ids start with team-b/ or shared-b/"));
  // "tenant-a/" is a prefix of names, not of tenants: tenant-ab is not a.
  EXPECT_FALSE(AuthorizeCheck(a, "tenant-ab/x").ok());
  EXPECT_TRUE(AuthorizeRead(a, "tenant-a/run-1").ok());
  EXPECT_TRUE(AuthorizeRead(b, "").ok()) << "an unbound digest is readable by its holder";
  const absl::Status read = AuthorizeRead(b, "tenant-a/run-1");
  EXPECT_EQ(read.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(read.message()), HasSubstr("may not read the verdict of job id"));
}

TEST(Authorize, ReadersReadEverythingAndRunNothingAdminsDoAll) {
  const TokenTable t = Table();
  const Principal& reader = Who(t, kReader);
  const Principal& admin = Who(t, kAdmin);
  EXPECT_TRUE(AuthorizeRead(reader, "tenant-a/run-1").ok());
  const absl::Status s = AuthorizeCheck(reader, "");
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(s.message()), HasSubstr("reader role"));
  EXPECT_TRUE(AuthorizeCheck(admin, "tenant-a/run-1").ok());
  EXPECT_TRUE(AuthorizeRead(admin, "team-b/x").ok());
}

TEST(IsLoopbackAddress, OnlyLocalAddresses) {
  EXPECT_TRUE(IsLoopbackAddress("127.0.0.1:0"));
  EXPECT_TRUE(IsLoopbackAddress("localhost:50051"));
  EXPECT_TRUE(IsLoopbackAddress("[::1]:50051"));
  EXPECT_FALSE(IsLoopbackAddress("0.0.0.0:50051"));
  EXPECT_FALSE(IsLoopbackAddress("[::]:50051"));
  EXPECT_FALSE(IsLoopbackAddress("10.0.0.7:50051"));
}

TEST(TokenTable, CertificateCommonNamesAuthenticateWithoutAToken) {
  auto t = TokenTable::Parse(
      absl::StrCat(kTokenA, " tenant-a tenant\n", "cert-cn:batch-runner-7 tenant-c tenant\n"),
      "tokens");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->size(), 2u);
  auto who = Authenticate(*t, "", {"batch-runner-7"});
  ASSERT_TRUE(who.ok()) << who.status();
  EXPECT_EQ((*who)->tenant, "tenant-c");
  EXPECT_EQ((*who)->job_prefixes, std::vector<std::string>{"tenant-c/"});
  // A token, when sent, decides.
  who = Authenticate(*t, absl::StrCat("Bearer ", kTokenA), {"batch-runner-7"});
  ASSERT_TRUE(who.ok()) << who.status();
  EXPECT_EQ((*who)->tenant, "tenant-a");
  // An unnamed certificate is no principal, and says so.
  who = Authenticate(*t, "", {"someone-else"});
  EXPECT_EQ(who.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(who.status().message(), HasSubstr("CN someone-else"));
  // A certificate name is not a token.
  EXPECT_EQ(Authenticate(*t, "Bearer cert-cn:batch-runner-7").status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(Authenticate(*t, "", {}).status().code(), absl::StatusCode::kUnauthenticated);
}

TEST(TokenTable, RejectsEmptyAndDuplicateCertificateNames) {
  auto empty = TokenTable::Parse("cert-cn: tenant-c tenant\n", "tokens");
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(empty.status().message(), HasSubstr("tokens:1"));
  auto dup = TokenTable::Parse("cert-cn:x tenant-c tenant\ncert-cn:x tenant-d tenant\n", "tokens");
  EXPECT_EQ(dup.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(dup.status().message(), HasSubstr("tokens:2"));
}

}  // namespace
}  // namespace preflight::server
