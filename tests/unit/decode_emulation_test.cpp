// The paged decode kernels themselves (kernels/decode_attention_device.h: the v2 loop, the v3
// loop at the format's tiles per step and at two, the v4 loop staged through shared memory,
// the split merge) run on the CPU with emulated
// blocks, warps, shuffles and tensor-core mma (tests/unit/cuda_emulation.h), against the same
// float64 reference and bound as tests/gpu/decode_attention_test.cpp checks them on a GPU
// (decode_case.h): every format at head_dim 64 and 128, GQA groups of 4, 7 and 8, odd lengths
// across page boundaries, rings and scales out of batch order, outputs poisoned first. The
// loop each plan selects is the launcher's own choice (decode_device::with_loop).
//
// Emulation shows indexing, fragment layouts, dequantization and the softmax merges; it cannot
// show timing, coalescing or races between warps (memcheck and racecheck on a GPU do). v2 at
// four blocks per multiprocessor (v2b) is v2's body under another launch bound: not repeated.
#include <gtest/gtest.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <string>
#include <vector>

#include "decode_attention.h"
#include "decode_case.h"
#include "dispatch.h"

#define KVB_EMULATE_WITH_CUDA_TYPES 1
#include "cuda_emulation.h"  // last before the device header
#include "decode_attention_device.h"

namespace kvbench::gpu_test {
namespace {

using kernels::KvFormat;  // the dispatch macros name formats unqualified

// kernels::decode_attention's launches, emulated: the plan's loop over (split, KV head,
// sequence) blocks, then the merge over (query head, sequence) when there are splits.
void run_decode(const kernels::DecodeProblem& pr, const kernels::PagedKv& kv,
                const kernels::DecodePlan& plan, float* ws) {
  namespace dd = kernels::decode_device;
  const EmulatedIndex grid{unsigned(plan.num_splits), unsigned(pr.kv_heads), unsigned(pr.batch)};
  KVB_DISPATCH_FORMAT(
      kv.format, F, KVB_DISPATCH_HEAD_DIM(pr.head_dim, D, {
        const bool built = dd::with_loop<F, D>(plan, [&](auto multi, auto nt, auto, auto staged) {
          launch_emulated(grid, dd::kThreads, [&] {
            dd::decode_body<F, D, decltype(multi)::value, decltype(nt)::value,
                            decltype(staged)::value>(pr, kv, plan.num_splits, ws);
          });
        });
        ASSERT_TRUE(built) << "no such loop for " << kernels::format_name(F);
        if (plan.num_splits > 1)
          launch_emulated(EmulatedIndex{unsigned(pr.q_heads), unsigned(pr.batch), 1}, D, [&] {
            dd::combine_body<F == KvFormat::kBf16>(ws, plan.num_splits, D, pr.out);
          });
      }))
}

class DecodeEmulationTest : public ::testing::TestWithParam<DecodeCase> {};

TEST_P(DecodeEmulationTest, TheKernelMatchesFloat64) {
  const DecodeCase& c = GetParam();
  const DecodeInputs in = decode_inputs(c);
  std::vector<uint16_t> out(in.q_bits.size(), 0xffff);  // NaN poison
  const kernels::DecodeProblem pr = in.problem(c, out.data());
  const kernels::PagedKv kv = in.kv(c);
  kernels::DecodePlan plan = in.plan(c);
  ASSERT_EQ(kernels::decode_plan(pr, kv, 132, c.force_splits, &plan), cudaSuccess)
      << kernels::decode_last_error();
  std::vector<float> ws(plan.workspace_bytes / sizeof(float), NAN);
  run_decode(pr, kv, plan, ws.data());
  const DecodeError e = decode_error(c, in, out);
  ASSERT_EQ(e.unwritten, "") << "unwritten or non-finite output";
  EXPECT_LT(e.rel, decode_tolerance(c.format))
      << "relative error " << e.rel << " with " << plan.num_splits << " splits";
}

std::vector<DecodeCase> emulated_cases() {
  std::vector<DecodeCase> cases;
  // The GPU test's lengths: a token alone, a partial tile, and two across many pages, splits
  // and v3 steps per warp, past KIVI's window of 64.
  const std::vector<int> lens = {1, 33, 517, 2049};
  for (KvFormat f :
       {KvFormat::kFp16, KvFormat::kBf16, KvFormat::kInt8, KvFormat::kInt4, KvFormat::kFp8,
        KvFormat::kKivi2, KvFormat::kKivi4, KvFormat::kInt4Asym, KvFormat::kInt2}) {
    const bool kivi = kernels::is_kivi(f);
    const int residual = kivi ? 64 : 0;
    for (int D : {64, 128}) {
      const int page = kivi ? 32 : (D == 64 ? 16 : 32);
      // v2 split three ways (empty splits for the short sequences; the merge).
      cases.push_back({f, D, 8, 2, page, residual, lens, 3});
      // v3 at the format's tiles per step, one split (outputs written by the block).
      cases.push_back({f, D, 28, 4, page, residual, lens, 1, true});
      // v3 at two tiles per step where that is its own build.
      if (f != KvFormat::kInt8 && f != KvFormat::kFp8)
        cases.push_back({f, D, 16, 2, page, residual, lens, 2, true, 0, 2});
      // v4 (staged through shared memory), the quantized formats: one split, and five.
      if (kernels::format_bits(f) < 16)
        for (int splits : {1, 5}) {
          cases.push_back(
              {f, D, splits == 1 ? 28 : 8, splits == 1 ? 4 : 2, page, residual, lens, splits});
          cases.back().staged = true;
        }
    }
  }
  // KIVI's pages of 64 tokens (four tiles to a page, one value group per token at head_dim 64),
  // lengths at and next to multiples of the window (every key quantized, none).
  cases.push_back({KvFormat::kKivi2, 64, 8, 2, 64, 64, {1, 64, 129, 300}, 2});
  cases.push_back({KvFormat::kKivi4, 64, 8, 2, 64, 64, {63, 128, 129, 300}, 2, true});
  // The rings and scales at the batch's own rows (seq_rows null, as the bench launches).
  cases.push_back({KvFormat::kKivi4, 128, 32, 8, 32, 64, {1, 100, 129}, 1});
  cases.back().batch_rows = true;
  cases.push_back({KvFormat::kFp8, 128, 32, 8, 32, 0, {1, 100, 129}, 2, true});
  cases.back().batch_rows = true;
  // v4 over KIVI's pages of 16 and 64 (its value metadata per token at both extremes) and at
  // the batch's own rows.
  for (const int page : {16, 64}) {
    cases.push_back({KvFormat::kKivi2, 128, 16, 2, page, 64, {1, 64, 129, 600}, 3});
    cases.back().staged = true;
  }
  cases.push_back({KvFormat::kKivi4, 64, 32, 8, 32, 64, {1, 100, 129}, 1});
  cases.back().batch_rows = cases.back().staged = true;
  return cases;
}

// A barrier that some threads never reach stops the test at once, saying so, where a GPU would
// go on past the exited threads or hang.
TEST(CudaEmulationDeathTest, ABarrierSomeThreadsNeverReachStopsTheTest) {
  EXPECT_DEATH(launch_emulated(1, 64,
                               [] {
                                 if (threadIdx.x != 5) __syncthreads();
                               }),
               "never reach");
  EXPECT_DEATH(launch_emulated(1, 64,
                               [] {
                                 if (threadIdx.x < 32) __syncwarp();
                                 __syncthreads();
                                 if (threadIdx.x != 40) __syncwarp();
                               }),
               "never reach");
}

INSTANTIATE_TEST_SUITE_P(Formats, DecodeEmulationTest, ::testing::ValuesIn(emulated_cases()),
                         [](const ::testing::TestParamInfo<DecodeCase>& i) {
                           return case_name(i.param);
                         });

}  // namespace
}  // namespace kvbench::gpu_test
