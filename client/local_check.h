// The local (in-process engine) half of the `preflight` CLI, behind a seam so
// that a LibTorch-free build of the same CLI exists: `preflight-thin`
// (remote check and verdict only; starts in milliseconds, for gates and
// pre-submit hooks that always talk to a server).
#pragma once

#include <string>

#include "client/check_command.h"

namespace preflight::client {

// Runs the check locally in a forked child; returns the exit code.
int RunLocalCheck(const CheckCommand& cmd);

// One line for `preflight version`.
std::string LocalEngineDescription();

}  // namespace preflight::client
