#include "client/server_target.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>
#include <random>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace preflight::client {
namespace {

constexpr char kForms[] = "HOST:PORT, a comma-separated list H1:P1,H2:P2, or dns:///NAME:PORT";

absl::Status Bad(absl::string_view what) { return absl::InvalidArgumentError(std::string(what)); }

bool IsIpv4(const std::string& host) {
  in_addr a;
  return inet_pton(AF_INET, host.c_str(), &a) == 1;
}

bool IsIpv6(const std::string& host) {
  in6_addr a;
  return inet_pton(AF_INET6, host.c_str(), &a) == 1;
}

bool IsHostName(absl::string_view host) {
  if (host.empty() || host.size() > 253) return false;
  return std::all_of(host.begin(), host.end(), [](char c) {
    return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_';
  });
}

// One HOST:PORT (or [IPV6]:PORT) entry.
absl::StatusOr<ServerAddress> ParseAddress(absl::string_view entry) {
  ServerAddress a;
  absl::string_view host, port;
  if (absl::StartsWith(entry, "[")) {
    const size_t close = entry.find(']');
    if (close == absl::string_view::npos) {
      return Bad(absl::StrCat("'", entry, "': '[' without ']'"));
    }
    host = entry.substr(1, close - 1);
    absl::string_view rest = entry.substr(close + 1);
    if (!absl::ConsumePrefix(&rest, ":")) {
      return Bad(absl::StrCat("'", entry, "' has no port (expected [IPV6]:PORT)"));
    }
    port = rest;
    a.host = std::string(host);
    if (!IsIpv6(a.host)) return Bad(absl::StrCat("'", entry, "': not an IPv6 address in []"));
    a.kind = ServerAddress::Kind::kIpv6;
  } else {
    const size_t colon = entry.rfind(':');
    if (colon == absl::string_view::npos) {
      return Bad(absl::StrCat("'", entry, "' has no port (expected HOST:PORT)"));
    }
    host = entry.substr(0, colon);
    port = entry.substr(colon + 1);
    a.host = std::string(host);
    if (absl::StrContains(host, ':')) {
      return Bad(absl::StrCat("'", entry, "': an IPv6 address needs brackets, [ADDRESS]:PORT"));
    }
    if (IsIpv4(a.host)) {
      a.kind = ServerAddress::Kind::kIpv4;
    } else if (IsHostName(host)) {
      a.kind = ServerAddress::Kind::kName;
    } else {
      return Bad(absl::StrCat("'", entry, "': '", host, "' is not a host name or IP address"));
    }
  }
  int p = 0;
  if (port.empty() || !std::all_of(port.begin(), port.end(), absl::ascii_isdigit) ||
      !absl::SimpleAtoi(port, &p) || p < 1 || p > 65535) {
    return Bad(absl::StrCat("'", entry, "': port must be 1..65535, got '", port, "'"));
  }
  a.port = p;
  return a;
}

absl::StatusOr<std::vector<ServerAddress>> ParseList(absl::string_view list,
                                                     absl::string_view whole) {
  std::vector<ServerAddress> out;
  for (absl::string_view entry : absl::StrSplit(list, ',')) {
    entry = absl::StripAsciiWhitespace(entry);
    if (entry.empty()) return Bad(absl::StrCat("empty address in the list '", whole, "'"));
    auto a = ParseAddress(entry);
    if (!a.ok()) return a.status();
    out.push_back(*std::move(a));
  }
  return out;
}

std::string Format(const std::string& ip, int port, bool v6) {
  return v6 ? absl::StrCat("[", ip, "]:", port) : absl::StrCat(ip, ":", port);
}

}  // namespace

absl::StatusOr<ServerSpec> ParseServerSpec(absl::string_view server) {
  const absl::string_view s = absl::StripAsciiWhitespace(server);
  if (s.empty()) return Bad(absl::StrCat("is empty (expected ", kForms, ")"));
  ServerSpec spec;
  absl::string_view rest = s;
  if (absl::ConsumePrefix(&rest, "dns:")) {
    // dns:///NAME:PORT, dns://AUTHORITY/NAME:PORT or dns:NAME:PORT.
    if (absl::ConsumePrefix(&rest, "//")) {
      const size_t slash = rest.find('/');
      if (slash == absl::string_view::npos) {
        return Bad(absl::StrCat("'", s, "': expected dns:///NAME:PORT"));
      }
      rest = rest.substr(slash + 1);
    }
    if (absl::StrContains(rest, ',')) {
      return Bad(absl::StrCat("'", s, "': a dns: target names one host; list servers as ",
                              "H1:P1,H2:P2 without dns:"));
    }
    auto a = ParseAddress(rest);
    if (!a.ok()) return Bad(absl::StrCat("dns target ", a.status().message()));
    spec.uri = std::string(s);
    return spec;
  }
  for (absl::string_view scheme : {"ipv4:", "ipv6:"}) {
    if (!absl::ConsumePrefix(&rest, scheme)) continue;
    auto list = ParseList(rest, s);
    if (!list.ok()) return list.status();
    const auto want = scheme == "ipv4:" ? ServerAddress::Kind::kIpv4 : ServerAddress::Kind::kIpv6;
    for (const auto& a : *list) {
      if (a.kind != want) {
        return Bad(absl::StrCat("'", s, "': ", scheme, " takes ",
                                scheme == "ipv4:" ? "IPv4" : "[IPv6]", " addresses only, got '",
                                a.host, "'"));
      }
    }
    spec.uri = std::string(s);
    return spec;
  }
  if (absl::StartsWith(s, "unix:") || absl::StartsWith(s, "unix-abstract:")) {
    if (s.back() == ':') return Bad(absl::StrCat("'", s, "' names no socket path"));
    spec.uri = std::string(s);
    return spec;
  }
  if (const size_t sep = s.find("://"); sep != absl::string_view::npos) {
    return Bad(absl::StrCat("unsupported scheme '", s.substr(0, sep), "' in '", s, "' (expected ",
                            kForms, ")"));
  }
  auto list = ParseList(s, s);
  if (!list.ok()) return list.status();
  if (list->size() == 1) {
    spec.uri = std::string(s);
  } else {
    spec.addresses = *std::move(list);
  }
  return spec;
}

absl::StatusOr<std::vector<std::string>> SystemResolver(const std::string& host) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (int rc = getaddrinfo(host.c_str(), nullptr, &hints, &res); rc != 0) {
    return absl::UnavailableError(absl::StrCat(host, ": ", gai_strerror(rc)));
  }
  std::vector<std::string> out;
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    char buf[INET6_ADDRSTRLEN] = {};
    const void* addr =
        ai->ai_family == AF_INET
            ? static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(ai->ai_addr)->sin_addr)
            : static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(ai->ai_addr)->sin6_addr);
    if ((ai->ai_family == AF_INET || ai->ai_family == AF_INET6) &&
        inet_ntop(ai->ai_family, addr, buf, sizeof(buf)) != nullptr &&
        std::find(out.begin(), out.end(), buf) == out.end()) {
      out.emplace_back(buf);
    }
  }
  freeaddrinfo(res);
  return out;
}

absl::StatusOr<std::string> GrpcTarget(const ServerSpec& spec, const Resolver& resolve,
                                       absl::BitGenRef gen) {
  if (spec.addresses.empty()) return spec.uri;
  // Per entry, its IPv4 and its IPv6 addresses.
  std::vector<std::string> v4, v6, unresolved, v4_only, v6_only;
  bool all_have_v4 = true, all_have_v6 = true;
  size_t resolved = 0;
  for (const ServerAddress& a : spec.addresses) {
    std::vector<std::string> ips;
    if (a.kind == ServerAddress::Kind::kName) {
      auto r = resolve(a.host);
      if (!r.ok() || r->empty()) {
        unresolved.push_back(r.ok() ? absl::StrCat(a.host, ": no address") : r.status().ToString());
        continue;
      }
      ips = *std::move(r);
    } else {
      ips = {a.host};
    }
    ++resolved;
    bool has4 = false, has6 = false;
    for (const std::string& ip : ips) {
      const bool is6 = IsIpv6(ip);
      std::string formatted = Format(ip, a.port, is6);
      auto& into = is6 ? v6 : v4;
      if (std::find(into.begin(), into.end(), formatted) == into.end()) {
        into.push_back(std::move(formatted));
      }
      (is6 ? has6 : has4) = true;
    }
    all_have_v4 &= has4;
    all_have_v6 &= has6;
    if (has4 != has6) (has4 ? v4_only : v6_only).push_back(absl::StrCat(a.host, ":", a.port));
  }
  if (resolved == 0) {
    return absl::UnavailableError(
        absl::StrCat("none of the servers resolves: ", absl::StrJoin(unresolved, "; ")));
  }
  std::vector<std::string>* chosen = nullptr;
  const char* scheme = nullptr;
  if (all_have_v4) {
    chosen = &v4;
    scheme = "ipv4:";
  } else if (all_have_v6) {
    chosen = &v6;
    scheme = "ipv6:";
  } else {
    return Bad(absl::StrCat("the list mixes IPv4-only (", absl::StrJoin(v4_only, ","),
                            ") and IPv6-only (", absl::StrJoin(v6_only, ","),
                            ") servers; one gRPC target holds one address family: use "
                            "dns:///NAME:PORT or one family"));
  }
  std::shuffle(chosen->begin(), chosen->end(), gen);
  return absl::StrCat(scheme, absl::StrJoin(*chosen, ","));
}

}  // namespace preflight::client
