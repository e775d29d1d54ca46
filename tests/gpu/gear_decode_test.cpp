// GEAR's decode kernel (kernels/gear_decode.cu) against its host reference (gear_decode.h,
// checked against float64 by tests/unit/gear_block_cache_test.cpp) and float64 itself, the
// output poisoned with NaN first and a NaN row past each sequence's exact tokens (a read past a
// sequence shows). The kernel sums in fp32 in another order than the host: bound 1e-5 of the
// output's scale (host: measured ~4e-7 against float64). Shapes: 2-, 4- and 8-bit codes,
// head_dim 64, 96 and 128 (the kernel's channel-per-thread builds and its generic one), fp16
// and bf16, with and without outliers, key groups of 8 to 64 tokens (a tile spanning several),
// blocks without L; lengths of a single token,
// only exact tokens, a block boundary, several blocks; plans for sm_count 1 (one split, two for
// the single-KV-head shape) and 132 (2 to 8 splits for every shape's longest sequence). Skips
// without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "device_buffer.h"
#include "gear_case.h"
#include "gear_decode_launcher.h"

namespace kvbench::gpu_test {
namespace {

#define ASSERT_CUDA(expr) ASSERT_CUDA_WITH(expr, "")

class GearDecodeGpuTest : public ::testing::TestWithParam<int> {};

TEST_P(GearDecodeGpuTest, MatchesTheHostReference) {
  std::string why;
  if (!have_gpu(&why)) GTEST_SKIP() << why;
  const GearCase c = gear_case_of(GetParam());
  SCOPED_TRACE(c.s.name());
  const std::vector<float> host = gear_host_answer(c);
  DeviceBuffer arena, tables, lens, q, out, work;
  ASSERT_CUDA(arena.upload(c.arena));
  // Sized first, then addressed where it lives on the device.
  ASSERT_CUDA(tables.upload(c.tables(0, 0)));
  const std::vector<uint8_t> addressed =
      c.tables(reinterpret_cast<uintptr_t>(arena.ptr), reinterpret_cast<uintptr_t>(tables.ptr));
  ASSERT_CUDA(cudaMemcpy(tables.ptr, addressed.data(), addressed.size(), cudaMemcpyHostToDevice));
  ASSERT_CUDA(lens.upload(c.lens));
  ASSERT_CUDA(q.upload(c.q));
  const kernels::GearProblem p =
      c.problem_at(static_cast<const kernels::GearSequence*>(tables.ptr),
                   static_cast<const int*>(lens.ptr), static_cast<const float*>(q.ptr), nullptr);
  for (const int sms : {1, 132}) {  // few splits per sequence (one for short ones), and many
    kernels::GearProblem run = p;
    std::vector<float> got(c.want.size(), NAN);
    ASSERT_CUDA(out.upload(got));
    run.out = static_cast<float*>(out.ptr);
    kernels::GearPlan plan;
    ASSERT_CUDA(kernels::gear_plan(run, c.max_len(), sms, &plan));
    ASSERT_CUDA(work.upload(std::vector<char>(plan.workspace_bytes)));
    ASSERT_CUDA_WITH(kernels::gear_decode(run, plan, work.ptr, nullptr), kernels::gear_check(run));
    ASSERT_CUDA(cudaDeviceSynchronize());
    ASSERT_CUDA(out.download(got));
    EXPECT_LT(scaled_error(got, std::vector<double>(host.begin(), host.end())), 1e-5)
        << "splits " << plan.splits;
    EXPECT_LT(scaled_error(got, c.want), 1e-5) << "splits " << plan.splits;
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, GearDecodeGpuTest, ::testing::Range(0, int(gear_shapes().size())),
                         [](const auto& i) { return gear_shapes()[size_t(i.param)].name(); });

TEST(GearDecodeGpuErrorsTest, RejectsBadProblems) {
  const GearCase c = gear_case(gear_shapes()[1], 1);
  std::vector<float> out(c.want.size());
  kernels::GearProblem p = c.problem(out.data());
  kernels::GearPlan plan;
  EXPECT_EQ(kernels::gear_plan(p, 0, 132, &plan), cudaErrorInvalidValue);
  p.bits = 3;
  EXPECT_EQ(kernels::gear_plan(p, c.max_len(), 132, &plan), cudaErrorInvalidValue);
  EXPECT_EQ(kernels::gear_decode(p, plan, nullptr, nullptr), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace kvbench::gpu_test
