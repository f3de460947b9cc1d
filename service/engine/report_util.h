// Building reports: findings, evidence, the verdict rule and canonical hints.
//
// No LibTorch here: the worker parent (which never loads a model) uses the
// same helpers to report timeouts and crashes.
//
//   v1::Finding* f = AddFinding(&report, v1::LOSS_PLATEAU, v1::Finding::FAIL,
//                               "overfit", "loss stalled at 0.4");
//   AddNumber(f, "final_loss", 0.4);
//   report.set_verdict(ComputeVerdict(report));
#pragma once

#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "preflight/v1/report.pb.h"

namespace preflight::engine {

// Adds a finding whose hint is the code's canonical hint (override with
// set_hint when an experiment verified something more specific).
v1::Finding* AddFinding(v1::Report* report, v1::FindingCode code, v1::Finding::Severity severity,
                        absl::string_view check, absl::string_view message);
void AddNumber(v1::Finding* finding, absl::string_view name, double value);
void AddText(v1::Finding* finding, absl::string_view name, absl::string_view value);

// ERROR if any ERROR finding, else FAIL if any FAIL finding, else WARN if any
// WARN finding, else PASS.
v1::Verdict ComputeVerdict(const v1::Report& report);

// True if the report has at least one finding with this code.
bool HasFinding(const v1::Report& report, v1::FindingCode code);

// What to do about a finding, in one or two sentences. Documented in the
// README's code table; keep both in step.
std::string CanonicalHint(v1::FindingCode code);

// "a, b, c, ..." listing at most `max_shown` names, for finding messages.
std::string JoinFirst(const std::vector<std::string>& names, size_t max_shown = 8);

// Trims a LibTorch exception message to its first meaningful lines: the
// C++ backtrace LibTorch appends is noise to a model author.
std::string TrimTorchMessage(absl::string_view what, size_t max_chars = 600);

}  // namespace preflight::engine
