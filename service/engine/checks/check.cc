#include "service/engine/checks/check.h"

#include <algorithm>

#include "service/engine/config.h"
#include "service/engine/thresholds.h"

namespace preflight::engine::internal {

RunOptions RunOptionsFor(const CheckContext& ctx) {
  const v1::CheckConfig& c = ctx.config;
  RunOptions o;
  o.loss = ctx.loss;
  // The config was validated before any check ran.
  o.optimizer = ParseOptimizer(c.optimizer()).value_or(Optimizer::kAdam);
  o.lr = c.lr();
  o.weight_decay = c.weight_decay();
  o.momentum = c.momentum();
  o.train_mode = c.train_mode();
  o.precision = ParsePrecision(c.dtype()).value_or(Precision::kFp32);
  o.max_steps = c.max_steps();
  o.target = ctx.target;
  o.seed = c.seed();
  o.settle_steps = std::max(kSettleMinSteps, static_cast<int>(kSettleShare * c.max_steps()));
  return o;
}

}  // namespace preflight::engine::internal
