// The tokens file parser and the bearer-token check
// (service/server/auth.h): the `authorization` metadata is whatever a
// network peer sends. Neither may crash, and no error message may echo the
// presented token.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "service/server/auth.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  (void)preflight::server::TokenTable::Parse(input, "fuzz");
  static const auto* table = new preflight::server::TokenTable(
      *preflight::server::TokenTable::Parse("fuzz-token-0123456789abcdef t tenant\n", "fixed"));
  auto who = preflight::server::Authenticate(*table, input);
  // The refusal must not depend on the token presented (so it can never
  // echo it): the same header with every token byte replaced gets the
  // same message.
  std::string masked = input;
  for (size_t i = 7; i < masked.size(); ++i) masked[i] = 'x';
  auto masked_who = preflight::server::Authenticate(*table, masked);
  if (!who.ok() && !masked_who.ok() && who.status().message() != masked_who.status().message()) {
    abort();
  }
  if (who.ok()) {
    (void)preflight::server::AuthorizeCheck(**who, input);
    (void)preflight::server::AuthorizeRead(**who, input);
  }
  (void)preflight::server::IsLoopbackAddress(input);
  return 0;
}
