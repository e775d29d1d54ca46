// The steady-state eviction kernel (kernels/steady_evict.cu) against its host reference
// (steady_evict.h, checked against the torch formulation by tests/unit/steady_evict_test.cpp)
// on the cases of tests/gpu/steady_case.h: H2O, TOVA and ScissorHands, every output poisoned
// first; the same drops, lists and ring flags, sums within 1e-5. Skips without a GPU.
#include <gtest/gtest.h>

#include <string>

#include "device_buffer.h"
#include "steady_case.h"
#include "steady_evict_launcher.h"

namespace kvbench::gpu_test {
namespace {

#define ASSERT_CUDA(expr) ASSERT_CUDA_WITH(expr, "")

class SteadyEvictGpuTest : public ::testing::TestWithParam<SteadyShape> {};

TEST_P(SteadyEvictGpuTest, MatchesTheHostReference) {
  std::string why;
  if (!have_gpu(&why)) GTEST_SKIP() << why;
  const SteadyCase c(GetParam());
  SteadyOutputs want = c.poisoned(), got = c.poisoned();
  kernels::steady_evict_host(c.problem(want));
  ASSERT_GT(c.decidable_gap(want), 1e-5) << "a near tie: the case cannot tell a wrong drop";
  kernels::SteadyEvictProblem p = c.problem(got);
  DeviceBuffer logits, steps, tails, summed, low, lists, scores, summed_out, low_out, lists_out,
      dropped;
  ASSERT_CUDA(logits.upload(c.logits));
  ASSERT_CUDA(steps.upload(c.steps));
  ASSERT_CUDA(tails.upload(c.tails));
  ASSERT_CUDA(scores.upload(got.scores));
  ASSERT_CUDA(dropped.upload(got.dropped));
  p.logits = static_cast<const float*>(logits.ptr), p.steps = static_cast<const int*>(steps.ptr);
  p.tails = static_cast<const int*>(tails.ptr);
  p.scores = static_cast<float*>(scores.ptr), p.dropped = static_cast<int*>(dropped.ptr);
  if (!c.summed.empty()) {
    ASSERT_CUDA(summed.upload(c.summed));
    ASSERT_CUDA(summed_out.upload(got.summed));
    p.summed = static_cast<const float*>(summed.ptr);
    p.summed_out = static_cast<float*>(summed_out.ptr);
  }
  if (!c.low.empty()) {
    ASSERT_CUDA(low.upload(c.low));
    ASSERT_CUDA(low_out.upload(got.low));
    p.low = static_cast<const uint8_t*>(low.ptr), p.low_out = static_cast<uint8_t*>(low_out.ptr);
  }
  if (!c.lists.empty()) {
    ASSERT_CUDA(lists.upload(c.lists));
    ASSERT_CUDA(lists_out.upload(got.lists));
    p.lists = static_cast<const int*>(lists.ptr), p.lists_out = static_cast<int*>(lists_out.ptr);
  }
  ASSERT_CUDA(kernels::steady_evict(p, nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());
  ASSERT_CUDA(dropped.download(got.dropped));
  if (!c.summed.empty()) ASSERT_CUDA(summed_out.download(got.summed));
  if (!c.low.empty()) ASSERT_CUDA(low_out.download(got.low));
  if (!c.lists.empty()) ASSERT_CUDA(lists_out.download(got.lists));
  EXPECT_EQ(c.mismatch(got, want), "");
}

TEST(SteadyEvictGpuTest, RefusesAnInvalidProblem) {
  kernels::SteadyEvictProblem p;  // no records
  EXPECT_EQ(kernels::steady_evict(p, nullptr), cudaErrorInvalidValue);
}

INSTANTIATE_TEST_SUITE_P(Shapes, SteadyEvictGpuTest, ::testing::ValuesIn(steady_shapes()),
                         [](const ::testing::TestParamInfo<SteadyShape>& i) {
                           return name(i.param);
                         });

}  // namespace
}  // namespace kvbench::gpu_test
