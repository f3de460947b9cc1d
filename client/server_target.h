// Where a client sends its calls: the `--server` value, parsed and turned
// into a gRPC target whose channel spreads calls over every address with
// gRPC's round_robin policy (kRoundRobinServiceConfig).
//
// Accepted forms:
//   HOST:PORT                 one server (a name is resolved by gRPC's DNS
//                             resolver; every address it returns is used)
//   H1:P1,H2:P2,...           a list of servers, e.g. the replicas of a fleet
//                             sharing one store; [IPV6]:PORT for IPv6
//   dns:///NAME:PORT          a DNS name with several A records, e.g. a
//                             Kubernetes headless Service (re-resolved by
//                             gRPC as replicas come and go)
//   ipv4:A:P,...  ipv6:[A]:P,...  unix:PATH   gRPC's own target forms
//
//   auto spec = ParseServerSpec("10.0.0.1:50051,10.0.0.2:50051");
//   if (!spec.ok()) ... spec.status(): INVALID_ARGUMENT saying what is wrong
//   absl::BitGen gen;
//   auto target = GrpcTarget(*spec, SystemResolver, gen);  // "ipv4:10.0.0.2:50051,10.0.0.1:50051"
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "absl/random/bit_gen_ref.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace preflight::client {

// The default service config of every client channel: round_robin keeps a
// connection to each address and sends each call to the next ready one, so
// a dead address is skipped and the others share the load.
inline constexpr char kRoundRobinServiceConfig[] =
    R"({"loadBalancingConfig":[{"round_robin":{}}]})";

struct ServerAddress {
  enum class Kind { kIpv4, kIpv6, kName };
  std::string host;  // An IPv6 literal without its brackets.
  int port = 0;      // 1..65535.
  Kind kind = Kind::kName;
};

// A parsed `--server`: either a gRPC target URI used as written (`uri`, for
// dns:, ipv4:, ipv6:, unix: and a single HOST:PORT) or a list of two or more
// addresses that GrpcTarget turns into one.
struct ServerSpec {
  std::string uri;
  std::vector<ServerAddress> addresses;
};

// Syntax only, no network: INVALID_ARGUMENT naming the offending entry (an
// empty value or list entry, a missing or out-of-range port, an unbracketed
// IPv6 address, an unknown scheme, a dns: target without a port).
absl::StatusOr<ServerSpec> ParseServerSpec(absl::string_view server);

// Resolves a host name to numeric addresses (IPv4 and IPv6 literals, IPv6
// without brackets). SystemResolver uses getaddrinfo.
using Resolver = std::function<absl::StatusOr<std::vector<std::string>>(const std::string& host)>;
absl::StatusOr<std::vector<std::string>> SystemResolver(const std::string& host);

// The gRPC target of a spec. A list becomes one `ipv4:` (or, when every
// entry has only IPv6 addresses, `ipv6:`) target with the addresses in a
// random order drawn from `gen`: round_robin sends a channel's first call to
// the first address that connects, so a fresh random order is what spreads
// short-lived clients (one CLI call each) over the list. Host names in a
// list are resolved here, once; a name that does not resolve is left out
// while another entry resolves (UNAVAILABLE naming them all when none does).
// A list mixing IPv4-only and IPv6-only entries is INVALID_ARGUMENT (one
// gRPC target holds one family; use dns:///NAME:PORT instead).
absl::StatusOr<std::string> GrpcTarget(const ServerSpec& spec, const Resolver& resolve,
                                       absl::BitGenRef gen);

}  // namespace preflight::client
