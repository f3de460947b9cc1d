// The structural probes as policy: what a few forwards of the initial model
// on one batch say about faults no training experiment can explain (a
// missing non-linearity, a bounded output that cannot reach the targets,
// class ids as regression targets, rank-limited logits, outputs that mix
// samples or ignore an input, a gradient blocked inside forward). No
// LibTorch: checks/structure.cc measures, this decides and words the
// evidence; unit-tested on hand-made numbers (structure_policy_test.cc).
//
// A probe's cause is *measured*, never verified: the hint says so in words,
// and a cause an experiment confirmed always wins (StructuralHint keeps a
// "Verified" hint as it is).
//
//   StructureEvidence e = ...;               // measured by CheckStructure
//   StructureDecision d = JudgeStructure(e);
//   if (d.saturated) AddFinding(..., OUTPUT_SATURATED, ...d.saturated_summary);
//   curve->set_hint(StructuralHint(d, curve->hint()));
#pragma once

#include <string>
#include <vector>

namespace preflight::engine {

struct StructureEvidence {
  // --- Output bound (a clamp/relu/sigmoid/tanh at the output) -------------
  // Measured on the batch with its floating inputs amplified (x kProbeGain):
  // the output's range there, and the share of output elements at that
  // range's ends (exactly equal to the extreme, or within kBoundEps of a
  // sigmoid/tanh bound 0, +-1). bound_measured false: not measurable (no
  // floating input, a non-tensor output, a loss without value targets).
  bool bound_measured = false;
  double amplified_min = 0, amplified_max = 0;
  double at_bound_share = 0;  // Of the amplified output's elements.
  double targets_beyond = 0;  // Share of target elements outside [min, max].
  double target_min = 0, target_max = 0;
  bool regression_loss = false;  // mse / l1 / smooth_l1 (element-wise values).
  // Targets are integral, >= 0, with >= 3 distinct values and a maximum
  // >= 2: class ids, not values.
  bool targets_look_like_class_ids = false;
  int distinct_targets = 0;

  // --- Rank of the output matrix ------------------------------------------
  // Output as [N, D] (samples x output values), centred over the samples;
  // its rank counts singular values above kRankRelTol of the largest.
  // needed_rank: what the targets need: distinct classes - 1 for class
  // ids, the centred rank of a value target matrix. -1: not measured.
  int output_rank = -1;
  int needed_rank = -1;
  int samples = 0;
  int output_dims = 0;

  // --- Linearity ----------------------------------------------------------
  // |f(a x1 + (1-a) x2) - (a f(x1) + (1-a) f(x2))| / |f(x1) - f(x2)| (max
  // over elements over max over elements), eval mode, x2 = the batch with
  // its samples rolled by one. -1: not measured.
  double nonlinearity = -1;

  // --- Sample coupling ----------------------------------------------------
  // Change of the other samples' outputs when sample 0's floating inputs
  // change, over the change of sample 0's own output (max |.| each); -1:
  // not measured (batch of 1, no floating input).
  double cross_sample_change = -1;

  // --- Per-input sensitivity (models with > 1 input tensor) ---------------
  // Names of inputs whose replacement by another sample's values (the batch
  // rolled by one) leaves the output unchanged (relative kSameOutputRelTol).
  std::vector<std::string> ignored_inputs;
  int inputs = 0;

  // --- Gradient blocked (from the main run) -------------------------------
  // Trainable parameters in registration order and whether each received a
  // gradient.
  std::vector<std::string> param_names;
  std::vector<bool> param_received_grad;
};

struct StructureDecision {
  bool saturated = false;            // OUTPUT_SATURATED
  bool class_ids_as_values = false;  // TARGET_LOSS_MISMATCH
  bool low_rank = false;             // OUTPUT_LOW_RANK
  bool linear = false;               // MODEL_LINEAR (a fault only with a failing curve)
  bool samples_mixed = false;        // Evidence only (no code of its own).
  bool input_ignored = false;        // OUTPUT_IGNORES_INPUT for one of several inputs.
  bool gradient_blocked = false;     // Some, not all, parameters get no gradient.
  std::string saturated_summary, mismatch_summary, low_rank_summary, linear_summary, mixed_summary,
      ignored_summary, blocked_summary;
  // Where the gradient stops: the last parameter (registration order)
  // without a gradient and the first after it that has one ("" when none).
  std::string blocked_last, blocked_next;
};

StructureDecision JudgeStructure(const StructureEvidence& e);

// The measured structural causes of `d`, in words, joined ("" when none).
// `curve_failed`: the main run did not fit the batch (a linear model is a
// cause only then).
std::string StructuralCauses(const StructureDecision& d, bool curve_failed);

// The curve finding's hint with the probes' causes: a hint that starts with
// "Verified" is kept (an experiment confirmed a cause); otherwise, when
// `causes` is not empty, "Measured (structural probes at init, not verified
// by an experiment): <causes>." followed by what the experiments showed,
// without the word "Inconclusive". Unchanged when `causes` is empty.
std::string StructuralHint(const std::string& causes, const std::string& hint);

}  // namespace preflight::engine
