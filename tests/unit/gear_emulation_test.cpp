// GEAR's decode kernels themselves (kernels/gear_decode_device.h: the split kernel, its tile
// rebuild a channel per thread at head_dim 64 and 128 and the generic one otherwise, then the
// split merge) run on the CPU with emulated blocks and warps (tests/unit/cuda_emulation.h), on
// the GPU test's shapes, plans and bounds (gear_case.h): 2-, 4- and 8-bit codes, head_dim 64,
// 96 and 128, fp16 and bf16, outliers, key groups of 8 to 64 tokens, blocks without L; one
// split and several. Against the host reference and float64, the output poisoned first.
// CUDA's names and 16-bit conversions are the emulation's (as GearRebuildTest's).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "gear_case.h"
#include "gear_decode.h"
#include "gear_decode_launcher.h"

#include "cuda_emulation.h"  // last before the device header
#include "gear_decode_device.h"

namespace kvbench::gpu_test {
namespace {

// kernels::gear_decode's launches, emulated, on kernels::gear_plan's splits.
void run_gear(const kernels::GearProblem& p, const kernels::GearPlan& plan) {
  namespace gd = kernels::gear_device;
  std::vector<float> ws(plan.workspace_bytes / sizeof(float), NAN);
  const EmulatedIndex grid{unsigned(plan.splits), unsigned(p.kv_heads), unsigned(p.batch)};
  auto split = [&](auto d) {
    launch_emulated(grid, gd::kThreads, [&] {
      gd::split_body<decltype(d)::value>(p, plan.tokens_per_split, plan.splits, ws.data());
    });
  };
  if (p.head_dim == 128)
    split(std::integral_constant<int, 128>{});
  else if (p.head_dim == 64)
    split(std::integral_constant<int, 64>{});
  else
    split(std::integral_constant<int, 0>{});
  launch_emulated(EmulatedIndex{unsigned(p.q_heads), unsigned(p.batch), 1}, p.head_dim,
                  [&] { gd::merge_body(p, plan.splits, ws.data()); });
}

class GearEmulationTest : public ::testing::TestWithParam<int> {};

TEST_P(GearEmulationTest, TheKernelsMatchTheHostReference) {
  const GearCase c = gear_case_of(GetParam());
  SCOPED_TRACE(c.s.name());
  const std::vector<float> host = gear_host_answer(c);
  for (const int sms : {1, 132}) {  // few splits per sequence, and many
    std::vector<float> got(c.want.size(), NAN);
    const kernels::GearProblem p = c.problem(got.data());
    kernels::GearPlan plan;
    ASSERT_EQ(kernels::gear_plan(p, c.max_len(), sms, &plan), cudaSuccess);
    run_gear(p, plan);
    EXPECT_LT(scaled_error(got, std::vector<double>(host.begin(), host.end())), 1e-5)
        << "splits " << plan.splits;
    EXPECT_LT(scaled_error(got, c.want), 1e-5) << "splits " << plan.splits;
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, GearEmulationTest, ::testing::Range(0, int(gear_shapes().size())),
                         [](const auto& i) { return gear_shapes()[size_t(i.param)].name(); });

}  // namespace
}  // namespace kvbench::gpu_test
