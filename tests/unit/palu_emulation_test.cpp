// Palu's decode kernels themselves (kernels/palu_decode_device.h: keys rebuilt from latents on
// tensor cores, rotated, attended, the latent values summed; the split merge projecting back)
// run on the CPU with emulated blocks, warps, ldmatrix, cp.async and mma
// (tests/unit/cuda_emulation.h), on the GPU test's shapes and checks (palu_check.h): every
// rank, head_dim 64 and 128, groups of KV heads, kept lists and tails, pages of 16, 32 and 48,
// the policies' scores. Shorter sequences than the GPU test's (every lane's mma is emulated):
// a token, part tiles, a tile and a page boundary, and enough tiles for several splits.
#include <gtest/gtest.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <string>
#include <vector>

#include "palu_check.h"
#include "palu_decode_launcher.h"
#include "sixteen_bit.h"

#define KVB_EMULATE_WITH_CUDA_TYPES 1
#include "cuda_emulation.h"  // last before the device header
#include "palu_decode_device.h"

namespace kvbench::gpu_test {
namespace {

// kernels::palu_decode's two launches, emulated.
void run_palu(const kernels::PaluProblem& p, const kernels::PaluPlan& plan, float* ws) {
  namespace pd = kernels::palu_device;
  const bool built = pd::with_kernel(p, [&](auto d, auto r, auto bf16, auto listed, auto scored) {
    constexpr int D = decltype(d)::value, R = decltype(r)::value;
    launch_emulated(
        EmulatedIndex{unsigned(plan.splits), unsigned(p.kv_heads), unsigned(p.batch)}, pd::kThreads,
        [&] {
          pd::palu_body<D, R, decltype(bf16)::value, decltype(listed)::value,
                        decltype(scored)::value>(p, plan.tiles_per_split, plan.splits, ws);
        },
        pd::Smem<D, R>::kTotal);
    launch_emulated(EmulatedIndex{unsigned(p.kv_heads), unsigned(p.batch), 1}, pd::kThreads,
                    [&] { pd::combine_body<D, R>(p, plan.splits, ws); });
  });
  ASSERT_TRUE(built);
}

class PaluEmulationTest : public ::testing::TestWithParam<PaluShape> {};

TEST_P(PaluEmulationTest, TheKernelsMatchTheHostReference) {
  const PaluCase c = palu_case_of(GetParam(), {1, 15, 16, 33, 150, 290});
  const PaluHostAnswer host = palu_host_answer(c);
  for (const int sms : {1, 132}) {  // one split per sequence, and several (with the scores)
    const bool scored = sms > 1;
    std::vector<float> got(c.want.size(), NAN), scores(host.scores.size(), NAN);
    kernels::PaluProblem p = c.problem(got.data());
    p.scores = scored ? scores.data() : nullptr;
    p.score_stride = scored ? host.stride : 0;
    kernels::PaluPlan plan;
    ASSERT_EQ(kernels::palu_plan(p, c.max_len(), sms, &plan), cudaSuccess);
    std::vector<float> ws(plan.workspace_bytes / sizeof(float), NAN);
    run_palu(p, plan, ws.data());
    expect_palu_answer(c, host, got, scored ? &scores : nullptr,
                       "splits " + std::to_string(plan.splits));
  }
}

// 16-bit queries and outputs in the latents' type, as the cache hands a model of that dtype's:
// each output is the fp32 output over the same query values rounded once, bit for bit, from
// the host reference and from the kernels at one split and at several.
TEST_P(PaluEmulationTest, SixteenBitQueriesGiveTheFp32OutputsRounded) {
  PaluCase c = palu_case_of(GetParam(), {1, 15, 33, 150});
  const std::vector<uint16_t> q16 = bits16(c.q, c.bf16);
  c.q = values16(q16, c.bf16);
  for (const int sms : {0, 1, 132}) {  // 0: the host reference
    SCOPED_TRACE("sms " + std::to_string(sms));
    std::vector<float> got32(c.want.size(), NAN);
    std::vector<uint16_t> got16(c.want.size(), 0xffff);
    for (const bool sixteen : {false, true}) {
      kernels::PaluProblem p = c.problem(got32.data());
      if (sixteen) p.q = nullptr, p.out = nullptr, p.q16 = q16.data(), p.out16 = got16.data();
      ASSERT_STREQ(kernels::palu_check(p), "");
      if (sms == 0) {
        std::vector<float> scratch(size_t(2 * c.head_dim + c.rank + c.max_len()));
        kernels::palu_decode_host(p, scratch.data());
        continue;
      }
      kernels::PaluPlan plan;
      ASSERT_EQ(kernels::palu_plan(p, c.max_len(), sms, &plan), cudaSuccess);
      std::vector<float> ws(plan.workspace_bytes / sizeof(float), NAN);
      run_palu(p, plan, ws.data());
    }
    expect_rounded(got32, got16, c.bf16);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, PaluEmulationTest, ::testing::ValuesIn(palu_shapes()),
                         [](const auto& i) { return shape_name(i.param); });

}  // namespace
}  // namespace kvbench::gpu_test
