// preflight-thin: no local engine. Checks must go to a server.
#include <iostream>

#include "client/local_check.h"

namespace preflight::client {

int RunLocalCheck(const CheckCommand&) {
  std::cerr << "preflight check: this is the thin client without a local engine; pass "
               "--server HOST:PORT (or use `preflight`)\n";
  return kExitUsage;
}

std::string LocalEngineDescription() {
  return "preflight thin client (no local engine; remote check and verdict only)";
}

}  // namespace preflight::client
