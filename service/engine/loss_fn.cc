#include "service/engine/loss_fn.h"

#include <optional>

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "service/engine/config.h"
#include "service/engine/losses.h"
#include "service/engine/report_util.h"
#include "service/engine/tensor_util.h"
#include "service/engine/thresholds.h"
#include "service/engine/torch_error.h"

namespace preflight::engine::internal {
namespace {

// The broadcast shape of a and b, or nullopt when they do not broadcast.
std::optional<std::vector<int64_t>> BroadcastShape(c10::IntArrayRef a, c10::IntArrayRef b) {
  const size_t n = std::max(a.size(), b.size());
  std::vector<int64_t> out(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t da = i < a.size() ? a[a.size() - 1 - i] : 1;
    const int64_t db = i < b.size() ? b[b.size() - 1 - i] : 1;
    if (da != db && da != 1 && db != 1) return std::nullopt;
    out[n - 1 - i] = std::max(da, db);
  }
  return out;
}

}  // namespace

std::vector<LossInputProblem> CheckLossInputs(const std::string& loss, const torch::Tensor& out,
                                              const torch::Tensor& tg) {
  std::vector<LossInputProblem> problems;
  auto invalid = [&](std::string m) { problems.push_back({v1::DATA_INVALID, std::move(m)}); };
  const LossInfo* info = FindLoss(loss);
  if (info == nullptr) {
    invalid(absl::StrCat("unknown loss '", loss, "'"));
    return problems;
  }
  if (info->family == LossFamily::kClassification) {
    if (out.dim() < 2) {
      invalid(absl::StrCat(loss, " needs output [N, C, ...]; the model output is ", Describe(out)));
      return problems;
    }
    const int64_t classes = out.size(1);
    if (!tg.is_floating_point()) {
      std::vector<int64_t> expect(out.sizes().begin(), out.sizes().end());
      expect.erase(expect.begin() + 1);
      if (tg.sizes().vec() != expect) {
        invalid(absl::StrCat("targets ", Describe(tg), " do not match output ", Describe(out), ": ",
                             loss, " with class indices needs targets of shape [",
                             absl::StrJoin(expect, ", "), "]"));
        return problems;
      }
      // -100 is LibTorch's default ignore_index.
      auto valid = tg.masked_select(tg != -100);
      if (valid.numel() > 0) {
        const int64_t lo = valid.min().item<int64_t>();
        const int64_t hi = valid.max().item<int64_t>();
        if (lo < 0 || hi >= classes) {
          invalid(absl::StrCat("targets hold class index ", lo < 0 ? lo : hi,
                               " but the model outputs ", classes,
                               " classes (valid indices are 0..", classes - 1, ")"));
        }
      }
    } else if (tg.sizes() != out.sizes()) {
      invalid(absl::StrCat("floating targets for ", loss, " are class probabilities and must ",
                           "have the output's shape ", ShapeString(out), "; got ",
                           ShapeString(tg)));
    } else if (loss == "nll") {
      invalid("nll needs integer class-index targets; got floating targets");
    } else {
      // Class probabilities over dim 1: non-negative rows that sum to 1
      // (multi-hot or unnormalised rows silently change what is minimised).
      const torch::Tensor t = tg.detach().to(torch::kFloat64);
      const double lo = t.min().item<double>();
      const torch::Tensor dev = (t.sum(1) - 1).abs();
      const double worst = dev.max().item<double>();
      if (lo < 0) {
        invalid(absl::StrCat("probability targets for ", loss, " must be >= 0; the smallest ",
                             "is ", lo));
      } else if (worst > kProbabilitySumTol) {
        const int64_t row = dev.flatten().argmax().item<int64_t>();
        invalid(absl::StrCat(
            "probability targets for ", loss, " must sum to 1 over dim 1 (the classes); ",
            dev.numel() > 1 ? absl::StrCat("entry ", row, " of the row sums is ") : "the sum is ",
            t.sum(1).flatten()[row].item<double>(),
            " (multi-hot labels belong with bce_with_logits; soft labels need normalising)"));
      }
    }
    return problems;
  }

  // Element-wise losses.
  if (!tg.is_floating_point()) {
    invalid(absl::StrCat(loss, " needs floating targets; got ", Describe(tg),
                         " (class indices belong with cross_entropy)"));
    return problems;
  }
  if (tg.sizes() != out.sizes()) {
    if (const auto b = BroadcastShape(out.sizes(), tg.sizes())) {
      problems.push_back(
          {v1::LOSS_SHAPE_BROADCAST,
           absl::StrCat("output ", ShapeString(out), " and targets ", ShapeString(tg),
                        " differ and broadcast to [", absl::StrJoin(*b, ", "), "] in ", loss,
                        ": each output is compared with ",
                        c10::multiply_integers(*b) / std::max<int64_t>(1, out.numel()),
                        " targets instead of one")});
    } else {
      invalid(absl::StrCat("output ", ShapeString(out), " and targets ", ShapeString(tg),
                           " cannot be compared element-wise by ", loss));
      return problems;
    }
  }
  if (info->family == LossFamily::kBinary) {
    const double lo = tg.min().item<double>();
    const double hi = tg.max().item<double>();
    if (lo < 0 || hi > 1) {
      invalid(
          absl::StrCat(loss, " needs targets in [0, 1]; targets range over [", lo, ", ", hi, "]"));
    }
  }
  if (loss == "bce" && problems.empty()) {
    const double lo = out.min().item<double>();
    const double hi = out.max().item<double>();
    if (lo < 0 || hi > 1) {
      invalid(absl::StrCat("bce needs probabilities in [0, 1] from the model; outputs range ",
                           "over [", lo, ", ", hi, "] (use bce_with_logits for raw scores)"));
    }
  }
  return problems;
}

absl::StatusOr<torch::Tensor> ComputeLoss(Model& model, const std::string& loss,
                                          const torch::jit::IValue& output,
                                          const torch::Tensor& targets) {
  namespace F = torch::nn::functional;
  torch::Tensor value;
  if (loss == kModelLoss) {
    auto own = model.OwnLoss(output, targets);
    if (!own.ok()) return own.status();
    value = *std::move(own);
  } else {
    if (!output.isTensor()) {
      return absl::InvalidArgumentError(
          absl::StrCat("forward() returned ", output.tagKind(), "; built-in loss ", loss,
                       " needs a single tensor (or export a loss(output, target) method)"));
    }
    const torch::Tensor out = output.toTensor();
    try {
      if (loss == "cross_entropy") {
        value = F::cross_entropy(out, targets);
      } else if (loss == "nll") {
        value = F::nll_loss(out, targets);
      } else if (loss == "mse") {
        value = F::mse_loss(out, targets);
      } else if (loss == "l1") {
        value = F::l1_loss(out, targets);
      } else if (loss == "smooth_l1") {
        value = F::smooth_l1_loss(out, targets);
      } else if (loss == "bce_with_logits") {
        value = F::binary_cross_entropy_with_logits(out, targets);
      } else if (loss == "bce") {
        value = F::binary_cross_entropy(out, targets);
      } else {
        return absl::InvalidArgumentError(absl::StrCat("unknown loss '", loss, "'"));
      }
    } catch (const std::exception& e) {
      return TorchErrorStatus(e);
    }
  }
  if (!value.defined() || value.numel() != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the loss must be a scalar; got ", value.defined() ? ShapeString(value) : "undefined"));
  }
  return value.reshape({});
}

}  // namespace preflight::engine::internal
