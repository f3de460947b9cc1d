// Who may do what on a server started with --tokens: per-tenant bearer
// tokens, read from a tokens file, and the rules that bind job ids to
// tenants. Free of gRPC: the adapter (server.cc) takes the `authorization`
// metadata and the request's job id and asks these functions.
//
// The tokens file, one principal per line ('#' starts a comment):
//
//   # token (or sha256:HEX of it)   tenant     role     job-id prefixes
//   4d1c0e...(>= 16 chars)          tenant-a   tenant                      # tenant-a/...
//   sha256:9f86d0...                tenant-b   tenant   team-b/ shared-b/
//   7a02b1...                       slurm      reader                      # gates
//   c3d88e...                       ops        admin
//   cert-cn:batch-runner-7          tenant-c   tenant                      # mutual TLS
//
// A `cert-cn:NAME` line names a client certificate instead of a token: on a
// server with --tls-client-ca, a caller whose verified certificate has the
// common name NAME is that principal when it sends no bearer token (a token,
// when sent, decides). The CA vouches for the name, so only a CA that issues
// names to the right holders belongs in --tls-client-ca.
// Roles: `tenant` runs checks, binds and reads job ids under its prefixes
// (default: "TENANT/"); `reader` reads every verdict and runs nothing (the
// scheduler gates); `admin` may do everything.
//
//   auto tokens = TokenTable::FromFile("/etc/preflight/tokens");
//   auto who = Authenticate(*tokens, metadata_value);   // UNAUTHENTICATED
//   absl::Status s = AuthorizeCheck(**who, request.job_id());  // PERMISSION_DENIED
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace preflight::server {

enum class Role { kTenant, kReader, kAdmin };

struct Principal {
  std::string tenant;
  Role role = Role::kTenant;
  // kTenant: the job ids it may bind and read start with one of these.
  std::vector<std::string> job_prefixes;
};

class TokenTable {
 public:
  // INVALID_ARGUMENT naming the line (never the token) for a malformed entry:
  // a token under 16 characters, an unknown role, a duplicate token.
  static absl::StatusOr<TokenTable> Parse(absl::string_view text, const std::string& what);
  // FAILED_PRECONDITION when the file cannot be read; Parse's errors.
  static absl::StatusOr<TokenTable> FromFile(const std::string& path);

  // The principal holding `token`, or nullptr. Tokens are kept only as
  // their SHA-256, and looked up by it.
  const Principal* Find(absl::string_view token) const;
  // The principal of a `cert-cn:` line for this certificate common name, or
  // nullptr.
  const Principal* FindCertificate(absl::string_view common_name) const;
  size_t size() const { return by_sha256_.size() + by_cert_cn_.size(); }

 private:
  std::map<std::string, Principal> by_sha256_;
  std::map<std::string, Principal, std::less<>> by_cert_cn_;
};

// The caller behind an `authorization` metadata value ("Bearer TOKEN"; empty
// when absent). UNAUTHENTICATED saying what is wrong, never echoing it.
absl::StatusOr<const Principal*> Authenticate(const TokenTable& tokens,
                                              absl::string_view authorization);
// The same, for a caller that may also present a verified client
// certificate (`peer_common_names`: the x509 common names the TLS layer
// verified; empty without mutual TLS). No token and a certificate named on
// a `cert-cn:` line: that principal.
absl::StatusOr<const Principal*> Authenticate(const TokenTable& tokens,
                                              absl::string_view authorization,
                                              const std::vector<std::string>& peer_common_names);

// May `who` run a check (and Upload), binding `job_id` (empty: none)?
// PERMISSION_DENIED naming the tenant, the job id and why.
absl::Status AuthorizeCheck(const Principal& who, absl::string_view job_id);

// May `who` read a verdict bound to `job_id`? For a read by request digest,
// `job_id` is the job id most recently bound to it (empty: unbound, which
// any authenticated caller may read: knowing the digest takes the model,
// batch and config bytes, or being told it). PERMISSION_DENIED otherwise.
absl::Status AuthorizeRead(const Principal& who, absl::string_view job_id);

// True when a HOST:PORT listening address only accepts local connections
// (127.0.0.0/8, localhost, [::1]): the start-up log warns about a server
// that listens beyond it without authentication.
bool IsLoopbackAddress(absl::string_view host_port);

}  // namespace preflight::server
