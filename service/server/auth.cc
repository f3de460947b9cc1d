#include "service/server/auth.h"

#include <openssl/sha.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace preflight::server {
namespace {

constexpr size_t kMinTokenChars = 16;

std::string Sha256Hex(absl::string_view s) {
  unsigned char d[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(s.data()), s.size(), d);
  return absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(d), sizeof(d)));
}

bool ValidTenant(absl::string_view t) {
  return !t.empty() && t.size() <= 64 && std::all_of(t.begin(), t.end(), [](char c) {
    return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
  });
}

bool IsLowerHex64(absl::string_view s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

bool OwnsJobId(const Principal& who, absl::string_view job_id) {
  return std::any_of(who.job_prefixes.begin(), who.job_prefixes.end(),
                     [&](const std::string& p) { return absl::StartsWith(job_id, p); });
}

std::string Prefixes(const Principal& who) {
  return absl::StrJoin(who.job_prefixes, " or ",
                       [](std::string* out, const std::string& p) { absl::StrAppend(out, p); });
}

}  // namespace

absl::StatusOr<TokenTable> TokenTable::Parse(absl::string_view text, const std::string& what) {
  TokenTable table;
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    if (const size_t hash = line.find('#'); hash != absl::string_view::npos) {
      line = line.substr(0, hash);
    }
    std::vector<absl::string_view> f =
        absl::StrSplit(line, absl::ByAnyChar(" \t\r"), absl::SkipEmpty());
    if (f.empty()) continue;
    auto bad = [&](const std::string& why) {
      return absl::InvalidArgumentError(absl::StrCat(what, ":", line_no, ": ", why));
    };
    if (f.size() < 3) return bad("expected TOKEN TENANT ROLE [JOB-ID-PREFIX...]");
    std::string key;
    std::string cert_cn;
    if (absl::StartsWith(f[0], "cert-cn:")) {
      cert_cn = std::string(f[0].substr(8));
      if (cert_cn.empty()) return bad("cert-cn: must be followed by a certificate common name");
    } else if (absl::StartsWith(f[0], "sha256:")) {
      key = std::string(f[0].substr(7));
      if (!IsLowerHex64(key)) return bad("sha256: must be followed by 64 lowercase hex digits");
    } else {
      if (f[0].size() < kMinTokenChars) {
        return bad(absl::StrCat("the token is shorter than ", kMinTokenChars,
                                " characters (make one with `openssl rand -hex 32`)"));
      }
      key = Sha256Hex(f[0]);
    }
    Principal p;
    p.tenant = std::string(f[1]);
    if (!ValidTenant(p.tenant)) return bad("the tenant must be 1..64 of [A-Za-z0-9._-]");
    if (f[2] == "tenant") {
      p.role = Role::kTenant;
    } else if (f[2] == "reader") {
      p.role = Role::kReader;
    } else if (f[2] == "admin") {
      p.role = Role::kAdmin;
    } else {
      return bad(absl::StrCat("unknown role '", f[2], "' (tenant, reader or admin)"));
    }
    for (size_t i = 3; i < f.size(); ++i) p.job_prefixes.emplace_back(f[i]);
    if (p.role != Role::kTenant && !p.job_prefixes.empty()) {
      return bad(absl::StrCat("job-id prefixes only apply to the tenant role, not ", f[2]));
    }
    if (p.role == Role::kTenant && p.job_prefixes.empty()) {
      p.job_prefixes.push_back(absl::StrCat(p.tenant, "/"));
    }
    if (!cert_cn.empty()) {
      if (!table.by_cert_cn_.emplace(cert_cn, std::move(p)).second) {
        return bad("the same certificate name appears on an earlier line");
      }
    } else if (!table.by_sha256_.emplace(key, std::move(p)).second) {
      return bad("the same token appears on an earlier line");
    }
  }
  if (table.size() == 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": holds no tokens"));
  }
  return table;
}

absl::StatusOr<TokenTable> TokenTable::FromFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::FailedPreconditionError(absl::StrCat("tokens: ", path, " cannot be read"));
  std::ostringstream ss;
  ss << in.rdbuf();
  return Parse(ss.str(), absl::StrCat("tokens: ", path));
}

const Principal* TokenTable::Find(absl::string_view token) const {
  auto it = by_sha256_.find(Sha256Hex(token));
  return it == by_sha256_.end() ? nullptr : &it->second;
}

const Principal* TokenTable::FindCertificate(absl::string_view common_name) const {
  auto it = by_cert_cn_.find(common_name);
  return it == by_cert_cn_.end() ? nullptr : &it->second;
}

absl::StatusOr<const Principal*> Authenticate(const TokenTable& tokens,
                                              absl::string_view authorization,
                                              const std::vector<std::string>& peer_common_names) {
  if (authorization.empty()) {
    for (const std::string& cn : peer_common_names) {
      if (const Principal* who = tokens.FindCertificate(cn); who != nullptr) return who;
    }
    if (!peer_common_names.empty()) {
      return absl::UnauthenticatedError(absl::StrCat(
          "no bearer token, and the client certificate (CN ", peer_common_names.front(),
          ") is not named on a cert-cn: line of this server's tokens file"));
    }
  }
  return Authenticate(tokens, authorization);
}

absl::StatusOr<const Principal*> Authenticate(const TokenTable& tokens,
                                              absl::string_view authorization) {
  if (authorization.empty()) {
    return absl::UnauthenticatedError(
        "no bearer token: this server requires the metadata `authorization: Bearer TOKEN` "
        "(preflight --token-file FILE or PREFLIGHT_TOKEN)");
  }
  constexpr absl::string_view kBearer = "Bearer ";
  if (!absl::StartsWith(authorization, kBearer) || authorization.size() == kBearer.size()) {
    return absl::UnauthenticatedError("malformed authorization metadata: expected `Bearer TOKEN`");
  }
  const Principal* who = tokens.Find(authorization.substr(kBearer.size()));
  if (who == nullptr) {
    return absl::UnauthenticatedError("the bearer token is not known to this server");
  }
  return who;
}

absl::Status AuthorizeCheck(const Principal& who, absl::string_view job_id) {
  if (who.role == Role::kAdmin) return absl::OkStatus();
  if (who.role == Role::kReader) {
    return absl::PermissionDeniedError(absl::StrCat("tenant '", who.tenant,
                                                    "' has the reader role: it may read "
                                                    "verdicts but not run checks or uploads"));
  }
  if (job_id.empty() || OwnsJobId(who, job_id)) return absl::OkStatus();
  return absl::PermissionDeniedError(absl::StrCat("job_id: tenant '", who.tenant,
                                                  "' may not bind job id '", job_id,
                                                  "'; its job ids start with ", Prefixes(who)));
}

absl::Status AuthorizeRead(const Principal& who, absl::string_view job_id) {
  if (who.role != Role::kTenant || job_id.empty() || OwnsJobId(who, job_id)) {
    return absl::OkStatus();
  }
  return absl::PermissionDeniedError(absl::StrCat("tenant '", who.tenant,
                                                  "' may not read the verdict of job id '", job_id,
                                                  "'; its job ids start with ", Prefixes(who)));
}

bool IsLoopbackAddress(absl::string_view host_port) {
  const size_t colon = host_port.rfind(':');
  absl::string_view host =
      colon == absl::string_view::npos ? host_port : host_port.substr(0, colon);
  return absl::StartsWith(host, "127.") || host == "localhost" || host == "[::1]" ||
         absl::StartsWith(host, "unix:");
}

}  // namespace preflight::server
