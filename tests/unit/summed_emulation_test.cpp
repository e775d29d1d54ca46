// H2O's prefill-block kernels themselves (kernels/summed_attention_device.h: the lse pass and
// the column pass on tensor cores, fed by cp.async and ldmatrix) run on the CPU with emulated
// blocks, warps, shuffles, ldmatrix and mma (tests/unit/cuda_emulation.h), on the shapes and
// against the host reference and bounds that tests/gpu/summed_attention_test.cpp uses on a
// GPU (summed_case.h): GQA groups 1, 4 and 8, head_dim 64 and 128, fp16, bf16 and split keys,
// tiles across the diagonal, lse and out poisoned first. The emulated cp.async lands at its
// wait (NaN before), so a missing wait shows.
#include <gtest/gtest.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <string>

#include "dispatch.h"
#include "summed_case.h"

#define KVB_EMULATE_WITH_CUDA_TYPES 1
#include "cuda_emulation.h"  // last before the device header
#include "summed_attention_device.h"

namespace kvbench::gpu_test {
namespace {

// kernels::summed_attention's two launches, emulated.
template <int D, bool kBf16, bool kSplit>
void run_passes(const kernels::SummedAttentionProblem& p) {
  namespace sd = kernels::summed_device;
  const unsigned query_tiles = unsigned(p.n + sd::kTile - 1) / sd::kTile;
  const unsigned key_tiles = unsigned(p.held + sd::kTile - 1) / sd::kTile;
  launch_emulated(EmulatedIndex{query_tiles, unsigned(p.heads), 1}, sd::kThreads,
                  [&] { sd::lse_body<D, kBf16, kSplit>(p); });
  launch_emulated(EmulatedIndex{key_tiles, unsigned(p.kv_heads), 1}, sd::kThreads,
                  [&] { sd::column_body<D, kBf16, kSplit>(p); });
}

class SummedEmulationTest : public ::testing::TestWithParam<SummedShape> {};

TEST_P(SummedEmulationTest, TheKernelsMatchTheHostReference) {
  SummedCase c = summed_case(GetParam());
  const kernels::SummedAttentionProblem& p = c.p;
  ASSERT_STREQ(kernels::summed_attention_check(p), "");
  KVB_DISPATCH_HEAD_DIM(p.head_dim, D,
                        p.k_lo   ? run_passes<D, false, true>(p)
                        : p.bf16 ? run_passes<D, true, false>(p)
                                 : run_passes<D, false, false>(p));
  EXPECT_EQ(c.mismatch(), "");
}

INSTANTIATE_TEST_SUITE_P(Shapes, SummedEmulationTest, ::testing::ValuesIn(summed_shapes()),
                         [](const ::testing::TestParamInfo<SummedShape>& i) {
                           return name(i.param);
                         });

}  // namespace
}  // namespace kvbench::gpu_test
