// Everything per step is reduced to one small tensor of norms so that
// tracking stays a small fraction of the forward/backward cost.
#include "service/engine/overfit.h"

#include <cmath>
#include <memory>
#include <optional>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/autocast_mode.h>
#include <torch/torch.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "service/engine/curve.h"
#include "service/engine/loss_fn.h"
#include "service/engine/report_util.h"
#include "service/engine/tensor_util.h"
#include "service/engine/thresholds.h"
#include "service/engine/torch_error.h"

namespace preflight::engine::internal {
namespace {

std::unique_ptr<torch::optim::Optimizer> MakeOptimizer(const RunOptions& o,
                                                       std::vector<torch::Tensor> params) {
  switch (o.optimizer) {
    case Optimizer::kSgd:
      return std::make_unique<torch::optim::SGD>(
          params, torch::optim::SGDOptions(o.lr).momentum(o.momentum).weight_decay(o.weight_decay));
    case Optimizer::kAdamW:
      return std::make_unique<torch::optim::AdamW>(
          params, torch::optim::AdamWOptions(o.lr).weight_decay(o.weight_decay));
    case Optimizer::kAdam: break;
  }
  return std::make_unique<torch::optim::Adam>(
      params, torch::optim::AdamOptions(o.lr).weight_decay(o.weight_decay));
}

// Pairs "<layer>.weight" with "<layer>.bias" whose rows are the layer's
// output units (Linear, Conv, norm layers). Embedding tables have no bias
// and are skipped: their unused rows legitimately get no gradient.
struct UnitPair {
  std::string layer;
  size_t weight = 0;
  size_t bias = 0;
};

std::vector<UnitPair> FindUnitPairs(const std::vector<NamedTensor>& params) {
  std::vector<UnitPair> pairs;
  for (size_t i = 0; i < params.size(); ++i) {
    const std::string& n = params[i].name;
    if (!absl::EndsWith(n, "weight")) continue;
    const std::string layer = n.substr(0, n.size() - 6);
    for (size_t j = 0; j < params.size(); ++j) {
      if (params[j].name != layer + "bias") continue;
      const auto& w = params[i].tensor;
      const auto& b = params[j].tensor;
      if (b.dim() == 1 && w.dim() >= 1 && w.size(0) == b.size(0) && b.size(0) > 1) {
        pairs.push_back(
            {layer.empty() ? std::string("(root)") : layer.substr(0, layer.size() - 1), i, j});
      }
    }
  }
  return pairs;
}

// Rows whose weight and bias gradients are exactly zero.
torch::Tensor ZeroGradRows(const NamedTensor& w, const NamedTensor& b) {
  const auto& gw = w.tensor.grad();
  const auto& gb = b.tensor.grad();
  if (!gw.defined() || !gb.defined()) return torch::ones({w.tensor.size(0)}, torch::kBool);
  auto row_mass = gw.detach().reshape({gw.size(0), -1}).abs().sum(1);
  return ((row_mass == 0) & (gb.detach() == 0)).cpu();
}

// L2 norms of many tensors in one fused op and one device-to-host copy:
// the per-step tracking must stay a small fraction of forward + backward.
std::vector<double> Norms(const std::vector<torch::Tensor>& ts) {
  if (ts.empty()) return {};
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> detached;
  detached.reserve(ts.size());
  for (const auto& t : ts) detached.push_back(t.detach());
  const torch::Tensor stacked =
      torch::stack(at::_foreach_norm(detached)).to(torch::kCPU, torch::kFloat64);
  const double* p = stacked.data_ptr<double>();
  return std::vector<double>(p, p + stacked.numel());
}

// Index of the first tensor holding NaN/Inf, or -1.
int FirstNonFiniteParam(const std::vector<torch::Tensor>& ts) {
  const std::vector<double> n = Norms(ts);
  for (size_t i = 0; i < n.size(); ++i) {
    if (!std::isfinite(n[i]) && CountNonFinite(ts[i]) > 0) return static_cast<int>(i);
  }
  return -1;
}

std::string ParamNonFiniteMessage(const std::string& name, const torch::Tensor& t, int step) {
  return absl::StrCat(name, " has ", CountNonFinite(t),
                      " NaN/Inf elements after the update of step ", step);
}

double NormInDouble(const torch::Tensor& t) {
  return t.detach().to(torch::kFloat64).norm().item<double>();
}

double GlobalNorm(const std::vector<torch::Tensor>& ts) {
  double sq = 0;
  for (double n : Norms(ts)) sq += n * n;
  return std::sqrt(sq);
}

torch::Tensor FirstTensor(const torch::jit::IValue& v) {
  if (v.isTensor()) return v.toTensor().detach();
  if (v.isTuple()) {
    for (const auto& e : v.toTupleRef().elements()) {
      if (e.isTensor()) return e.toTensor().detach();
    }
  }
  return {};
}

// Forward and loss under autocast, as mixed-precision training runs them;
// backward and the optimizer step stay outside (fp32 master weights). Puts
// the thread's previous autocast state back on exit.
class AutocastScope {
 public:
  AutocastScope(Precision precision, c10::DeviceType device) : device_(device) {
    if (precision == Precision::kFp32 || !at::autocast::is_autocast_available(device)) return;
    active_ = true;
    was_enabled_ = at::autocast::is_autocast_enabled(device);
    was_dtype_ = at::autocast::get_autocast_dtype(device);
    at::autocast::set_autocast_enabled(device, true);
    at::autocast::set_autocast_dtype(device,
                                     precision == Precision::kBf16 ? at::kBFloat16 : at::kHalf);
    at::autocast::increment_nesting();
  }
  ~AutocastScope() {
    if (!active_) return;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(device_, was_enabled_);
    at::autocast::set_autocast_dtype(device_, was_dtype_);
  }
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  c10::DeviceType device_;
  bool active_ = false;
  bool was_enabled_ = false;
  at::ScalarType was_dtype_ = at::kFloat;
};

double AbsMax(const torch::Tensor& t) {
  if (!t.defined() || t.numel() == 0) return 0;
  torch::NoGradGuard no_grad;
  return t.detach().abs().max().to(torch::kFloat64).item<double>();
}

// The default CPU generator's whole state (the Mersenne Twister words and
// the cached normal), to tell whether a run drew from it.
torch::Tensor CpuGeneratorState() { return at::detail::getDefaultCPUGenerator().get_state(); }

}  // namespace

RunTrace Train(const Model& base, const Batch& batch, const RunOptions& o) {
  return Train(base.Clone(), batch, o);
}

RunTrace Train(std::unique_ptr<Model> model, const Batch& batch, const RunOptions& o) {
  RunTrace trace;
  // Seeds the CPU generator and, when CUDA is up, every CUDA generator.
  torch::manual_seed(o.seed);
  const torch::Tensor rng_at_start = CpuGeneratorState();
  // Set on every way out of the run below.
  struct RngWatch {
    RunTrace& trace;
    const torch::Tensor& start;
    ~RngWatch() { trace.drew_random = !torch::equal(CpuGeneratorState(), start); }
  } rng_watch{trace, rng_at_start};

  model->SetTraining(o.train_mode);
  if (o.init_scale != 1) {
    torch::NoGradGuard no_grad;
    const std::string prefix = o.init_scale_module.empty() ? "" : o.init_scale_module + ".";
    for (const auto& p : model->Parameters()) {
      if (p.tensor.dim() >= 2 && absl::StartsWith(p.name, prefix)) p.tensor.mul_(o.init_scale);
    }
  }
  std::vector<NamedTensor> params = TrainableParams(*model);
  std::vector<torch::Tensor> tensors;
  for (const auto& p : params) tensors.push_back(p.tensor);
  auto optimizer = MakeOptimizer(o, tensors);
  trace.param_norm_initial = GlobalNorm(tensors);
  double peak_abs = 0;  // Largest |loss| so far, for the settle rule.
  int first_target_step = -1;

  if (o.collect_stats) {
    for (const auto& p : params) {
      ParamTrack t;
      t.name = p.name;
      t.shape = p.tensor.sizes().vec();
      t.numel = p.tensor.numel();
      trace.params.push_back(std::move(t));
    }
  }
  // The gradient summed over the budget's last window (RunTrace::
  // grad_window_mean_norm); a parameter without a gradient adds nothing.
  const int window_begin = o.max_steps - std::max(5, o.max_steps / 10);
  std::vector<torch::Tensor> grad_window_sum(o.collect_stats ? tensors.size() : 0);
  const std::vector<UnitPair> unit_pairs =
      o.collect_stats ? FindUnitPairs(params) : std::vector<UnitPair>{};
  std::vector<torch::Tensor> dead_first(unit_pairs.size());
  std::vector<torch::Tensor> dead_last(unit_pairs.size());

  auto fail = [&](v1::FindingCode code, int step, std::string tensor, std::string message) {
    trace.failure = code;
    trace.failure_step = step;
    trace.failure_tensor = std::move(tensor);
    trace.failure_message = std::move(message);
  };
  auto take_snapshot = [&] {
    torch::NoGradGuard no_grad;
    trace.snapshot.clear();
    for (const auto& t : tensors) trace.snapshot.push_back(t.detach().clone());
    trace.snapshot_updates = trace.updates;
  };

  for (int step = 0; step < o.max_steps; ++step) {
    if (step == o.snapshot_after_updates) take_snapshot();
    optimizer->zero_grad();
    // Anomaly mode costs ~85x per step: only ever for the one replayed step.
    std::optional<torch::autograd::DetectAnomalyGuard> anomaly;
    if (step == o.anomaly_step) anomaly.emplace();

    std::optional<AutocastScope> autocast;
    autocast.emplace(o.precision, batch.targets.device().type());
    absl::StatusOr<torch::jit::IValue> output_or = model->Forward(batch.inputs);
    if (!output_or.ok()) {
      fail(v1::FORWARD_ERROR, step, "", std::string(output_or.status().message()));
      break;
    }
    const torch::jit::IValue& output = *output_or;
    auto loss_or = ComputeLoss(*model, o.loss, output, batch.targets);
    autocast.reset();
    if (!loss_or.ok()) {
      fail(v1::LOSS_ERROR, step, "", std::string(loss_or.status().message()));
      break;
    }
    torch::Tensor loss = o.negate_loss ? -*loss_or : *loss_or;
    const double value = loss.item<double>();
    trace.losses.push_back(value);
    if (o.collect_stats) trace.last_output = FirstTensor(output);
    if (o.track_output_range) trace.output_abs_max.push_back(AbsMax(FirstTensor(output)));

    if (!std::isfinite(value)) {
      const int bad_param = trace.updates > 0 ? FirstNonFiniteParam(tensors) : -1;
      if (bad_param >= 0) {
        // The previous update broke a weight: that is the first non-finite tensor.
        fail(v1::PARAM_NON_FINITE, step - 1, params[bad_param].name,
             ParamNonFiniteMessage(params[bad_param].name, tensors[bad_param], step - 1));
        trace.losses.pop_back();  // The loss of broken weights is not part of the curve.
        break;
      }
      if (output.isTensor() && CountNonFinite(output.toTensor()) > 0) {
        const int64_t bad = CountNonFinite(output.toTensor());
        fail(v1::OUTPUT_NON_FINITE, step, "output",
             absl::StrCat(bad, " of ", output.toTensor().numel(), " output elements are NaN/Inf"));
      } else {
        fail(v1::LOSS_NON_FINITE, step, "loss",
             absl::StrCat("loss is ", value, " while the model output is finite"));
      }
      if (step == o.anomaly_step && loss.requires_grad()) {
        try {
          loss.backward();
        } catch (const std::exception& e) {
          trace.anomaly_message = TrimTorchMessage(e.what());
        }
      }
      break;
    }
    if (ReachedTarget(value, o.target)) {
      if (first_target_step < 0) first_target_step = step;
      const bool blew_up = peak_abs > CurveThresholds{}.diverge_factor * std::fabs(trace.losses[0]);
      if (!blew_up || step - first_target_step >= o.settle_steps) {
        trace.converged = true;
        break;
      }
    } else if (first_target_step < 0) {
      peak_abs = std::max(peak_abs, std::fabs(value));
    }
    if (step == o.early_stop_step) {
      const size_t w = std::min<size_t>(5, trace.losses.size());
      double level = 0;
      for (size_t i = trace.losses.size() - w; i < trace.losses.size(); ++i) {
        level += std::fabs(trace.losses[i]);
      }
      if (level / static_cast<double>(w) >= o.early_stop_level) {
        trace.stopped_early = true;
        break;
      }
    }

    // A loss with no autograd history means no gradient reaches any
    // parameter: nothing to update, and the curve will be flat.
    if (loss.requires_grad()) {
      try {
        loss.backward();
      } catch (const std::exception& e) {
        if (step == o.anomaly_step) {
          trace.anomaly_message = TrimTorchMessage(e.what());
          fail(v1::GRAD_NON_FINITE, step, "", trace.anomaly_message);
        } else {
          fail(v1::BACKWARD_ERROR, step, "", std::string(TorchErrorStatus(e).message()));
        }
        break;
      }
    }

    // One reduction for every gradient: a NaN/Inf anywhere makes its norm
    // non-finite, so this doubles as the gradient numerics check.
    // -1 marks a parameter without a gradient (None).
    std::vector<double> grad_norms(tensors.size(), -1.0);
    {
      std::vector<torch::Tensor> grads;
      std::vector<size_t> index;
      for (size_t i = 0; i < tensors.size(); ++i) {
        if (tensors[i].grad().defined()) {
          grads.push_back(tensors[i].grad());
          index.push_back(i);
        }
      }
      const std::vector<double> n = Norms(grads);
      for (size_t k = 0; k < n.size(); ++k) grad_norms[index[k]] = n[k];
    }
    for (size_t i = 0; i < grad_norms.size(); ++i) {
      if (std::isfinite(grad_norms[i])) continue;
      const int64_t bad = CountNonFinite(tensors[i].grad());
      if (bad == 0) {
        // Finite values whose float32 norm overflowed.
        grad_norms[i] = NormInDouble(tensors[i].grad());
        continue;
      }
      fail(v1::GRAD_NON_FINITE, step, params[i].name,
           absl::StrCat("gradient of ", params[i].name, " has ", bad, " NaN/Inf elements"));
      break;
    }
    if (trace.failure != v1::FINDING_CODE_UNSPECIFIED) break;
    double total_sq = 0;
    for (double n : grad_norms) total_sq += n > 0 ? n * n : 0;
    trace.grad_norm_total.push_back(std::sqrt(total_sq));
    if (o.collect_stats && step >= window_begin) {
      torch::NoGradGuard no_grad;
      for (size_t i = 0; i < tensors.size(); ++i) {
        const torch::Tensor& g = tensors[i].grad();
        if (!g.defined()) continue;
        if (grad_window_sum[i].defined()) {
          grad_window_sum[i].add_(g);
        } else {
          grad_window_sum[i] = g.detach().to(torch::kFloat64);
        }
      }
      ++trace.grad_window_updates;
    }
    if (o.collect_stats) {
      for (size_t i = 0; i < grad_norms.size(); ++i) {
        ParamTrack& t = trace.params[i];
        if (step == 0) t.grad_norm_first = grad_norms[i];
        t.grad_norm_last = grad_norms[i];
        t.received_grad |= grad_norms[i] > 0;
      }
    }
    const bool sample_ratio = o.collect_stats && step % kSampleEvery == 0;
    if (sample_ratio) {
      for (size_t k = 0; k < unit_pairs.size(); ++k) {
        auto rows = ZeroGradRows(params[unit_pairs[k].weight], params[unit_pairs[k].bias]);
        if (step == 0) dead_first[k] = rows;
        dead_last[k] = rows;
      }
    }
    std::vector<torch::Tensor> before;
    if (sample_ratio) {
      torch::NoGradGuard no_grad;
      for (const auto& t : tensors) before.push_back(t.detach().clone());
    }
    try {
      optimizer->step();
    } catch (const std::exception& e) {
      fail(v1::BACKWARD_ERROR, step, "",
           absl::StrCat("optimizer step failed: ", TorchErrorStatus(e).message()));
      break;
    }
    ++trace.updates;

    if (sample_ratio) {
      torch::NoGradGuard no_grad;
      const std::vector<double> pn = Norms(tensors);
      for (size_t i = 0; i < tensors.size(); ++i) {
        if (!(pn[i] > 0) || !std::isfinite(pn[i])) continue;
        const double delta = (tensors[i].detach() - before[i]).norm().item<double>();
        trace.params[i].max_update_ratio =
            std::max(trace.params[i].max_update_ratio, delta / pn[i]);
      }
    }
    // Parameters are checked for NaN/Inf lazily: a non-finite parameter
    // makes the next forward's loss non-finite, and that step then names it
    // (see the top of the loop), saving a pass over every weight per step.
    if (step + 1 == o.max_steps) {
      const int bad = FirstNonFiniteParam(tensors);
      if (bad >= 0)
        fail(v1::PARAM_NON_FINITE, step, params[bad].name,
             ParamNonFiniteMessage(params[bad].name, tensors[bad], step));
    }
    if (trace.failure != v1::FINDING_CODE_UNSPECIFIED) break;
  }
  if (o.snapshot_after_updates >= 0 && trace.snapshot_updates < 0) take_snapshot();
  // Settling ran out of budget: converged only if it is still at the target.
  if (!trace.converged && first_target_step >= 0 && trace.failure == v1::FINDING_CODE_UNSPECIFIED &&
      !trace.losses.empty() && ReachedTarget(trace.losses.back(), o.target)) {
    trace.converged = true;
  }
  trace.param_norm_final = GlobalNorm(tensors);
  if (trace.grad_window_updates > 0) {
    std::vector<torch::Tensor> sums;
    for (const auto& g : grad_window_sum) {
      if (g.defined()) sums.push_back(g);
    }
    trace.grad_window_mean_norm = GlobalNorm(sums) / trace.grad_window_updates;
  }

  for (size_t k = 0; k < unit_pairs.size(); ++k) {
    if (!dead_first[k].defined()) continue;
    const int64_t dead = (dead_first[k] & dead_last[k]).sum().item<int64_t>();
    trace.dead_layers.push_back({unit_pairs[k].layer, dead, dead_first[k].numel()});
  }
  return trace;
}

}  // namespace preflight::engine::internal
