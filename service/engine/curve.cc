#include "service/engine/curve.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_format.h"

namespace preflight::engine {
namespace {

double MeanOf(const std::vector<double>& v, size_t begin, size_t end) {
  double sum = 0;
  for (size_t i = begin; i < end; ++i) sum += v[i];
  return end > begin ? sum / static_cast<double>(end - begin) : 0.0;
}

}  // namespace

bool ReachedTarget(double loss, double target) {
  return std::isfinite(loss) && std::fabs(loss) <= target;
}

Stability AnalyzeStability(const std::vector<double>& losses, double target,
                           const CurveThresholds& th) {
  Stability s;
  if (losses.empty()) return s;
  const double scale = std::max(std::fabs(losses.front()), 1e-12);
  double peak = 0;
  for (size_t i = 0; i < losses.size(); ++i) {
    if (ReachedTarget(losses[i], target)) {
      s.first_target_step = static_cast<int>(i);
      break;
    }
    peak = std::isfinite(losses[i]) ? std::max(peak, std::fabs(losses[i])) : INFINITY;
  }
  if (s.first_target_step < 0) return s;
  s.peak_ratio = peak / scale;
  s.unstable = s.peak_ratio > th.diverge_factor;
  s.settled = ReachedTarget(losses.back(), target);
  return s;
}

const char* CurveClassName(CurveClass c) {
  switch (c) {
    case CurveClass::kConverged: return "converged";
    case CurveClass::kDiverged: return "diverged";
    case CurveClass::kFlat: return "flat";
    case CurveClass::kRising: return "rising";
    case CurveClass::kOscillating: return "oscillating";
    case CurveClass::kNoisy: return "noisy";
    case CurveClass::kPlateau: return "plateau";
  }
  return "unknown";
}

v1::FindingCode CurveCode(CurveClass c) {
  switch (c) {
    case CurveClass::kConverged: return v1::OVERFIT_CONVERGED;
    case CurveClass::kDiverged: return v1::LOSS_DIVERGED;
    case CurveClass::kFlat: return v1::LOSS_FLAT;
    case CurveClass::kRising: return v1::LOSS_RISING;
    case CurveClass::kOscillating: return v1::LOSS_OSCILLATING;
    case CurveClass::kNoisy: return v1::LOSS_NOISY;
    case CurveClass::kPlateau: return v1::LOSS_PLATEAU;
  }
  return v1::FINDING_CODE_UNSPECIFIED;
}

CurveAnalysis ClassifyCurve(const std::vector<double>& all_losses, double target,
                            bool stopped_non_finite, const CurveThresholds& th) {
  CurveAnalysis a;
  // Only the finite prefix carries shape information.
  std::vector<double> losses;
  for (size_t i = 0; i < all_losses.size(); ++i) {
    if (!std::isfinite(all_losses[i])) {
      a.first_non_finite_step = static_cast<int>(i);
      break;
    }
    losses.push_back(all_losses[i]);
  }
  a.steps = static_cast<int>(all_losses.size());
  if (losses.empty()) {
    a.curve_class = CurveClass::kDiverged;
    a.initial = all_losses.empty() ? NAN : all_losses[0];
    a.final_value = a.initial;
    a.best = a.initial;
    a.summary = "loss was not finite at step 0";
    return a;
  }

  const size_t n = losses.size();
  a.initial = losses.front();
  a.best = std::fabs(losses.front());
  double max_abs = 0;
  for (double l : losses) {
    a.best = std::min(a.best, std::fabs(l));
    max_abs = std::max(max_abs, std::fabs(l));
  }
  const size_t window = std::max<size_t>(1, std::min<size_t>(n, std::max<size_t>(5, n / 10)));
  a.final_value = MeanOf(losses, n - window, n);
  const double scale = std::max(std::fabs(a.initial), 1e-12);

  // Shape of the late curve: the second half, where a healthy run settles.
  const size_t late_begin = n / 2;
  double up = 0, down = 0, abs_moves = 0, level = 0;
  for (size_t i = std::max<size_t>(late_begin, 1); i < n; ++i) {
    const double d = losses[i] - losses[i - 1];
    if (d > 0)
      up += d;
    else
      down -= d;
    abs_moves += std::fabs(d);
  }
  const size_t late_count = n - std::max<size_t>(late_begin, 1);
  for (size_t i = late_begin; i < n; ++i) level += std::fabs(losses[i]);
  level = n > late_begin ? level / static_cast<double>(n - late_begin) : scale;
  a.upward_share = (up + down) > 0 ? up / (up + down) : 0;
  // Swings are measured against the starting loss: near a loss of zero any
  // jitter is large relative to the level, but only swings on the scale of
  // the problem mean the optimizer is overshooting.
  a.rel_amplitude = late_count > 0 ? (abs_moves / static_cast<double>(late_count)) / scale : 0;
  (void)level;

  if (ReachedTarget(losses.back(), target)) {
    a.curve_class = CurveClass::kConverged;
    a.final_value = losses.back();
    a.summary = absl::StrFormat("loss %.4g -> %.4g in %d steps (target %.3g)", a.initial,
                                a.final_value, static_cast<int>(n), target);
    return a;
  }

  bool blew_up = max_abs > th.diverge_factor * scale;
  // A steady climb (nearly every step up, growth slowing rather than
  // compounding) is a rising loss even once it passes the blow-up bound:
  // that is how a flipped objective looks; instability compounds.
  if (blew_up && a.final_value > a.initial) {
    double rises = 0, falls = 0;
    for (size_t i = 1; i < n; ++i) {
      const double d = losses[i] - losses[i - 1];
      if (d > 0)
        rises += d;
      else
        falls -= d;
    }
    const double mid = losses[n / 2];
    const bool steady = rises > 0 && rises / (rises + falls) >= th.steady_rise_share && mid > 0 &&
                        a.final_value / mid < th.compounding_growth;
    if (steady) blew_up = false;
  }
  // An objective that falls below zero by more than its own starting size is
  // unbounded below: a maximised likelihood or a flipped sign.
  const bool unbounded_below = a.final_value < 0 && a.final_value < a.initial - scale;
  if (stopped_non_finite || a.first_non_finite_step >= 0 || blew_up || unbounded_below) {
    a.curve_class = CurveClass::kDiverged;
    if (a.first_non_finite_step >= 0) {
      a.summary = absl::StrFormat("loss became non-finite at step %d (started at %.4g)",
                                  a.first_non_finite_step, a.initial);
    } else if (stopped_non_finite) {
      a.summary = absl::StrFormat(
          "training stopped on a non-finite value after %d finite losses (started at %.4g)",
          static_cast<int>(n), a.initial);
    } else if (unbounded_below && !blew_up) {
      a.summary = absl::StrFormat("loss fell without bound below zero: %.4g -> %.4g", a.initial,
                                  a.final_value);
    } else {
      a.summary = absl::StrFormat("|loss| grew to %.4g, %.0fx its initial %.4g", max_abs,
                                  max_abs / scale, a.initial);
    }
    return a;
  }

  double max_dev = 0;
  for (double l : losses) max_dev = std::max(max_dev, std::fabs(l - a.initial));
  if (max_dev <= th.flat_rel_tol * scale) {
    a.curve_class = CurveClass::kFlat;
    a.summary = absl::StrFormat("loss stayed at %.6g for %d steps (max change %.3g)", a.initial,
                                static_cast<int>(n), max_dev);
    return a;
  }

  // Balanced up-and-down movement: a climb is not an oscillation.
  const bool swinging =
      a.upward_share > th.rough_upward_share && a.upward_share < 1 - th.rough_upward_share;
  if (swinging && a.rel_amplitude > th.oscillation_rel_amplitude) {
    a.curve_class = CurveClass::kOscillating;
    a.summary = absl::StrFormat(
        "loss swings up and down (%.0f%% of late movement upward, mean step %.1f%% of level); "
        "%.4g -> %.4g, target %.3g",
        100 * a.upward_share, 100 * a.rel_amplitude, a.initial, a.final_value, target);
    return a;
  }
  if (a.final_value - a.initial > th.rise_rel_tol * scale) {
    a.curve_class = CurveClass::kRising;
    a.summary = absl::StrFormat("loss rose from %.4g to %.4g over %d steps", a.initial,
                                a.final_value, static_cast<int>(n));
    return a;
  }

  if (swinging && a.rel_amplitude > th.noise_rel_amplitude) {
    a.curve_class = CurveClass::kNoisy;
    a.summary = absl::StrFormat(
        "loss falls but is noisy (%.0f%% of late movement upward); %.4g -> %.4g, target %.3g",
        100 * a.upward_share, a.initial, a.final_value, target);
    return a;
  }
  a.curve_class = CurveClass::kPlateau;
  const size_t tail = std::max<size_t>(1, n / 5);
  const double tail_start = losses[n - tail];
  a.tail_drop = (tail_start - losses.back()) / std::max(std::fabs(tail_start), 1e-12);
  a.total_drop = (a.initial - a.final_value) / scale;
  a.still_falling =
      a.tail_drop >= th.still_falling_tail_drop && a.total_drop >= th.still_falling_total_drop;
  if (a.still_falling) {
    a.summary = absl::StrFormat(
        "loss is still falling but did not reach the target in %d steps: %.4g -> %.4g "
        "(target %.3g), down %.0f%% over the last %d steps",
        static_cast<int>(n), a.initial, a.final_value, target, 100 * a.tail_drop,
        static_cast<int>(tail));
    return a;
  }
  a.summary = absl::StrFormat(
      "loss stalled above the target: %.4g -> %.4g (best %.4g, target %.3g); last %d steps "
      "moved %.2f%%",
      a.initial, a.final_value, a.best, target, static_cast<int>(tail),
      100 * std::fabs(tail_start - losses.back()) / std::max(std::fabs(tail_start), 1e-12));
  return a;
}

}  // namespace preflight::engine
