// client/server_target: every --server form, the errors for bad ones, and
// the gRPC target a list becomes (family choice, resolution, shuffling).
#include "client/server_target.h"

#include <map>
#include <set>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/random/random.h"
#include "absl/strings/str_split.h"

namespace preflight::client {
namespace {

using ::testing::HasSubstr;
using ::testing::UnorderedElementsAreArray;

// Names with fixed addresses: no DNS in unit tests.
absl::StatusOr<std::vector<std::string>> FakeResolve(const std::string& host) {
  static const std::map<std::string, std::vector<std::string>> kNames = {
      {"a.test", {"10.0.0.1"}},
      {"b.test", {"10.0.0.2", "10.0.0.3"}},
      {"dual.test", {"10.0.0.9", "fd00::9"}},
      {"v6.test", {"fd00::6"}},
  };
  auto it = kNames.find(host);
  if (it == kNames.end()) return absl::UnavailableError(host + ": Name or service not known");
  return it->second;
}

std::string Target(const std::string& server) {
  auto spec = ParseServerSpec(server);
  EXPECT_TRUE(spec.ok()) << spec.status();
  if (!spec.ok()) return "";
  absl::BitGen gen;
  auto t = GrpcTarget(*spec, FakeResolve, gen);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *t : "";
}

// A list target's scheme and its addresses, order aside.
std::pair<std::string, std::vector<std::string>> Split(const std::string& target) {
  const size_t colon = target.find(':');
  return {target.substr(0, colon + 1), absl::StrSplit(target.substr(colon + 1), ',')};
}

TEST(ParseServerSpec, OneServerAndGrpcFormsAreUsedAsWritten) {
  for (const std::string s :
       {"127.0.0.1:50051", "preflight.preflight.svc:50051", "[::1]:50051", "localhost:1",
        "dns:///preflight-headless.preflight.svc.cluster.local:50051",
        "dns://10.96.0.10:53/preflight:50051", "dns:preflight:50051",
        "ipv4:127.0.0.1:1,127.0.0.1:2", "ipv6:[::1]:1,[::1]:2", "unix:/run/preflight.sock"}) {
    SCOPED_TRACE(s);
    auto spec = ParseServerSpec(s);
    ASSERT_TRUE(spec.ok()) << spec.status();
    EXPECT_EQ(spec->uri, s);
    EXPECT_TRUE(spec->addresses.empty());
    EXPECT_EQ(Target(s), s);
  }
}

TEST(ParseServerSpec, ListsSplitIntoAddresses) {
  auto spec = ParseServerSpec(" 10.0.0.1:1, [fd00::1]:2 ,name.test:3 ");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_TRUE(spec->uri.empty());
  ASSERT_EQ(spec->addresses.size(), 3u);
  EXPECT_EQ(spec->addresses[0].host, "10.0.0.1");
  EXPECT_EQ(spec->addresses[0].port, 1);
  EXPECT_EQ(spec->addresses[0].kind, ServerAddress::Kind::kIpv4);
  EXPECT_EQ(spec->addresses[1].host, "fd00::1");
  EXPECT_EQ(spec->addresses[1].kind, ServerAddress::Kind::kIpv6);
  EXPECT_EQ(spec->addresses[2].host, "name.test");
  EXPECT_EQ(spec->addresses[2].port, 3);
  EXPECT_EQ(spec->addresses[2].kind, ServerAddress::Kind::kName);
}

TEST(ParseServerSpec, BadValuesAreInvalidArgumentSayingWhy) {
  struct Case {
    std::string server, message;
  } cases[] = {
      {"", "is empty (expected HOST:PORT, a comma-separated list"},
      {"   ", "is empty"},
      {"host", "'host' has no port (expected HOST:PORT)"},
      {"host:", "'host:': port must be 1..65535, got ''"},
      {"host:0", "port must be 1..65535, got '0'"},
      {"host:65536", "port must be 1..65535, got '65536'"},
      {"host:5x", "port must be 1..65535, got '5x'"},
      {"host:-1", "port must be 1..65535, got '-1'"},
      {"a:1,,b:2", "empty address in the list 'a:1,,b:2'"},
      {"a:1,", "empty address in the list 'a:1,'"},
      {"::1:50051", "an IPv6 address needs brackets, [ADDRESS]:PORT"},
      {"[::1:50051", "'[::1:50051': '[' without ']'"},
      {"[::1]", "'[::1]' has no port (expected [IPV6]:PORT)"},
      {"[10.0.0.1]:1", "not an IPv6 address in []"},
      {"bad host:1", "'bad host' is not a host name or IP address"},
      {"http://h:1", "unsupported scheme 'http' in 'http://h:1'"},
      {"grpc://h:1", "unsupported scheme 'grpc'"},
      {"dns:///name", "dns target 'name' has no port"},
      {"dns://name:1", "expected dns:///NAME:PORT"},
      {"dns:///a:1,b:2", "a dns: target names one host"},
      {"ipv4:[::1]:1", "ipv4: takes IPv4 addresses only, got '::1'"},
      {"ipv4:name:1", "ipv4: takes IPv4 addresses only, got 'name'"},
      {"ipv6:10.0.0.1:1", "ipv6: takes [IPv6] addresses only"},
      {"unix:", "names no socket path"},
  };
  for (const auto& tc : cases) {
    SCOPED_TRACE(tc.server);
    auto spec = ParseServerSpec(tc.server);
    EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(spec.status().message()), HasSubstr(tc.message));
  }
}

TEST(GrpcTarget, AnIpv4ListBecomesOneIpv4TargetWithEveryAddress) {
  auto [scheme, addrs] = Split(Target("127.0.0.1:5001,127.0.0.1:5002,10.1.2.3:7"));
  EXPECT_EQ(scheme, "ipv4:");
  EXPECT_THAT(addrs, UnorderedElementsAreArray({"127.0.0.1:5001", "127.0.0.1:5002", "10.1.2.3:7"}));
}

TEST(GrpcTarget, AnIpv6ListBecomesOneIpv6Target) {
  auto [scheme, addrs] = Split(Target("[::1]:5001,[fd00::2]:5002"));
  EXPECT_EQ(scheme, "ipv6:");
  EXPECT_THAT(addrs, UnorderedElementsAreArray({"[::1]:5001", "[fd00::2]:5002"}));
}

TEST(GrpcTarget, NamesResolveToAllTheirAddressesOfTheCommonFamily) {
  auto [scheme, addrs] = Split(Target("a.test:1,b.test:2,dual.test:3"));
  EXPECT_EQ(scheme, "ipv4:");
  EXPECT_THAT(addrs,
              UnorderedElementsAreArray({"10.0.0.1:1", "10.0.0.2:2", "10.0.0.3:2", "10.0.0.9:3"}));
  // Every entry has IPv6: the IPv6 target.
  auto [scheme6, addrs6] = Split(Target("v6.test:1,dual.test:2,[::1]:3"));
  EXPECT_EQ(scheme6, "ipv6:");
  EXPECT_THAT(addrs6, UnorderedElementsAreArray({"[fd00::6]:1", "[fd00::9]:2", "[::1]:3"}));
}

TEST(GrpcTarget, DuplicatesAreKeptOnce) {
  auto [scheme, addrs] = Split(Target("127.0.0.1:1,127.0.0.1:1,127.0.0.1:2"));
  EXPECT_THAT(addrs, UnorderedElementsAreArray({"127.0.0.1:1", "127.0.0.1:2"}));
}

TEST(GrpcTarget, AnUnresolvableNameIsLeftOutWhileAnotherResolves) {
  auto [scheme, addrs] = Split(Target("nosuch.test:1,a.test:2"));
  EXPECT_THAT(addrs, UnorderedElementsAreArray({"10.0.0.1:2"}));
  auto spec = ParseServerSpec("nosuch.test:1,gone.test:2");
  ASSERT_TRUE(spec.ok());
  absl::BitGen gen;
  auto t = GrpcTarget(*spec, FakeResolve, gen);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("none of the servers resolves"));
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("nosuch.test"));
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("gone.test"));
}

TEST(GrpcTarget, MixedFamiliesAreRefusedNamingBoth) {
  auto spec = ParseServerSpec("10.0.0.1:1,v6.test:2");
  ASSERT_TRUE(spec.ok());
  absl::BitGen gen;
  auto t = GrpcTarget(*spec, FakeResolve, gen);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(t.status().message()),
              HasSubstr("mixes IPv4-only (10.0.0.1:1) and IPv6-only (v6.test:2)"));
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("dns:///NAME:PORT"));
}

TEST(GrpcTarget, TheOrderIsShuffledSoEveryAddressComesFirstSometimes) {
  // round_robin's first call goes to the first address that connects: a
  // fixed order would send every short-lived client to the same server.
  auto spec = ParseServerSpec("127.0.0.1:1,127.0.0.1:2,127.0.0.1:3");
  ASSERT_TRUE(spec.ok());
  std::set<std::string> first;
  absl::BitGen gen;
  for (int i = 0; i < 200 && first.size() < 3; ++i) {
    auto t = GrpcTarget(*spec, FakeResolve, gen);
    ASSERT_TRUE(t.ok());
    first.insert(Split(*t).second.front());
  }
  EXPECT_EQ(first.size(), 3u);  // A uniform shuffle misses one in 200 with p < 1e-34.
}

TEST(SystemResolver, ResolvesLoopbackLiteralsAndFailsOnAnInvalidName) {
  auto ips = SystemResolver("127.0.0.1");
  ASSERT_TRUE(ips.ok()) << ips.status();
  EXPECT_EQ(*ips, std::vector<std::string>{"127.0.0.1"});
  // .invalid never resolves (RFC 6761).
  auto none = SystemResolver("preflight.invalid");
  EXPECT_EQ(none.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(none.status().message()), HasSubstr("preflight.invalid"));
}

}  // namespace
}  // namespace preflight::client
