#include "service/engine/budgets.h"

#include <gtest/gtest.h>

namespace preflight::engine {
namespace {

TEST(Budgets, DerivedFromTheTimeoutAndNestedOutermostFirst) {
  const Budgets b = DeriveBudgets(10, 4);
  EXPECT_DOUBLE_EQ(b.job_deadline_seconds, 10);
  EXPECT_EQ(b.cpu_limit_seconds, 41) << "10 s wall x 4 CPUs + 1";
  EXPECT_DOUBLE_EQ(b.backstop_seconds, 40);
  EXPECT_DOUBLE_EQ(b.rpc_deadline_seconds, 310);
  EXPECT_GT(b.rpc_deadline_seconds, b.backstop_seconds);
  EXPECT_GT(b.backstop_seconds, b.job_deadline_seconds);
}

TEST(Budgets, FractionalTimeoutRoundsTheCpuLimitUp) {
  EXPECT_EQ(DeriveBudgets(0.5, 3).cpu_limit_seconds, 3) << "ceil(1.5) + 1";
}

TEST(Budgets, DegenerateInputsStayUsable) {
  const Budgets b = DeriveBudgets(-5, 0);
  EXPECT_DOUBLE_EQ(b.job_deadline_seconds, 0);
  EXPECT_EQ(b.cpu_limit_seconds, 1);
  EXPECT_EQ(b.max_intra_op_threads, 1);
}

TEST(Budgets, ThreadsAreBoundedByTheJobsCpus) {
  EXPECT_EQ(DeriveBudgets(10, 4).max_intra_op_threads, 4);
  EXPECT_EQ(DeriveBudgets(10, 1).max_intra_op_threads, 1);
}

TEST(Budgets, DefaultTimeoutMatchesTheDocumentedSandboxLine) {
  // README: "cpu 601 s" for the default 300 s timeout on a 2-CPU node.
  EXPECT_EQ(DeriveBudgets(300, 2).cpu_limit_seconds, 601);
}

}  // namespace
}  // namespace preflight::engine
