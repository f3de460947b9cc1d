// Input checks: what can be judged from the artifact and the batch alone.
#include <torch/torch.h>

#include "absl/strings/str_format.h"
#include "service/engine/checks/check.h"
#include "service/engine/config.h"
#include "service/engine/losses.h"
#include "service/engine/report_util.h"
#include "service/engine/tensor_util.h"

namespace preflight::engine::internal {

Next CheckInputs(CheckContext& c) {
  v1::Report& report = *c.report;
  const bool own_loss = c.model->capabilities().own_loss;
  c.loss = own_loss ? kModelLoss : c.config.loss().empty() ? kDefaultLoss : c.config.loss();
  report.mutable_config()->set_loss(c.loss);
  v1::ModelSummary* summary = report.mutable_model();
  summary->set_format(c.model->format());
  summary->set_has_loss_method(own_loss);
  summary->set_batch_size(c.batch.batch_size);
  for (int64_t s : c.batch.targets.sizes()) summary->add_target_shape(s);

  bool bad_data = false;
  for (size_t i = 0; i <= c.batch.inputs.size(); ++i) {
    const bool is_target = i == c.batch.inputs.size();
    const torch::Tensor& t = is_target ? c.batch.targets : c.batch.inputs[i].toTensor();
    const std::string name = is_target ? "targets" : c.batch.input_names[i];
    const int64_t bad = CountNonFinite(t);
    if (bad > 0) {
      auto* f =
          AddFinding(&report, v1::DATA_NON_FINITE, v1::Finding::FAIL, "input",
                     absl::StrFormat("%s has %d NaN/Inf values out of %d", name, bad, t.numel()));
      AddText(f, "tensor", name);
      AddNumber(f, "non_finite", static_cast<double>(bad));
      bad_data = true;
    }
  }

  int64_t total = 0, trainable = 0, tensors = 0;
  std::vector<std::string> frozen;
  for (const auto& p : c.model->Parameters()) {
    total += p.tensor.numel();
    ++tensors;
    if (p.tensor.requires_grad()) {
      trainable += p.tensor.numel();
    } else {
      frozen.push_back(p.name);
    }
  }
  // A NaN/Inf already in the loaded weights (a broken checkpoint) would show
  // up as a non-finite output with a guess at the op: name the tensor.
  bool bad_weights = false;
  for (const bool buffers : {false, true}) {
    for (const auto& t : buffers ? c.model->Buffers() : c.model->Parameters()) {
      const int64_t bad = CountNonFinite(t.tensor);
      if (bad == 0) continue;
      auto* f = AddFinding(
          &report, v1::PARAM_NON_FINITE, v1::Finding::FAIL, "input",
          absl::StrFormat("%s %s has %d NaN/Inf values out of %d as loaded, "
                          "before any update",
                          buffers ? "buffer" : "parameter", t.name, bad, t.tensor.numel()));
      f->set_hint(
          "The weights were NaN/Inf before training began: the checkpoint or the "
          "code that initialised them is broken. Re-export from finite weights "
          "(check torch.isfinite on every parameter and buffer).");
      AddText(f, "tensor", t.name);
      AddNumber(f, "step", 0);
      AddNumber(f, "non_finite", static_cast<double>(bad));
      bad_weights = true;
    }
  }
  summary->set_parameters(total);
  summary->set_trainable_parameters(trainable);
  summary->set_parameter_tensors(static_cast<int>(tensors));
  if (trainable == 0) {
    AddFinding(&report, v1::NO_TRAINABLE_PARAMS, v1::Finding::FAIL, "input",
               absl::StrFormat("none of the model's %d parameter tensors (%d values) requires "
                               "grad: there is nothing to train",
                               tensors, total));
    return Next::kStop;
  }
  if (!frozen.empty()) {
    auto* f = AddFinding(&report, v1::PARAM_FROZEN, v1::Finding::INFO, "input",
                         absl::StrFormat("%d of %d parameter tensors are frozen: %s", frozen.size(),
                                         tensors, JoinFirst(frozen)));
    AddNumber(f, "frozen_tensors", static_cast<double>(frozen.size()));
  }
  return bad_data || bad_weights ? Next::kStop : Next::kContinue;
}

}  // namespace preflight::engine::internal
