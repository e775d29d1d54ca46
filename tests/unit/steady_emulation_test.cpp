// The steady-state eviction kernel's own device code (kernels/steady_evict_device.h: a warp
// per query head's softmax statistics, a thread per token's score, the tree over shared memory
// for the dropped token, the shifted writes) runs on the CPU with emulated blocks, warps and
// barriers (tests/unit/cuda_emulation.h), at the launcher's geometry, on the GPU test's cases
// (tests/gpu/steady_case.h), every output poisoned first: the same drops, lists and ring
// flags as the host reference, sums within 1e-5; NaN scores rank above every finite score.
#include <gtest/gtest.h>

#include "steady_case.h"

#include "cuda_emulation.h"  // last before the device header
#include "steady_evict_device.h"

namespace kvbench::gpu_test {
namespace {

namespace sd = kernels::steady_device;

class SteadyEmulationTest : public ::testing::TestWithParam<SteadyShape> {};

TEST_P(SteadyEmulationTest, TheKernelMatchesTheHostReference) {
  const SteadyCase c(GetParam());
  SteadyOutputs want = c.poisoned(), got = c.poisoned();
  const kernels::SteadyEvictProblem host = c.problem(want);
  ASSERT_STREQ(kernels::steady_evict_check(host), "");
  kernels::steady_evict_host(host);
  ASSERT_GT(c.decidable_gap(want), 1e-5) << "a near tie: the case cannot tell a wrong drop";
  const kernels::SteadyEvictProblem p = c.problem(got);
  const unsigned per = unsigned(kernels::steady_heads_per_block(p));
  launch_emulated(EmulatedIndex{unsigned(p.records), unsigned(p.kv_heads) / per, 1}, sd::kThreads,
                  [&] { sd::evict_body(p); });
  EXPECT_EQ(c.mismatch(got, want), "");
  if (c.s.nans) EXPECT_EQ(c.nan_rule_broken(want), "");
}

INSTANTIATE_TEST_SUITE_P(Shapes, SteadyEmulationTest, ::testing::ValuesIn(steady_shapes()),
                         [](const ::testing::TestParamInfo<SteadyShape>& i) {
                           return name(i.param);
                         });

}  // namespace
}  // namespace kvbench::gpu_test
