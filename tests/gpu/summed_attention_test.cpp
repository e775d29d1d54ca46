// H2O's prefill-block kernels (kernels/summed_attention.cu) against their host reference
// (summed_attention.h, checked against float64 and the policies' formula by
// tests/unit/summed_attention_test.cpp): random 16-bit q and k, blocks of one query and of
// a tile and one, keys before the block or none, tiles across the diagonal, GQA groups of 1
// and 4, fp16 and bf16, keys split in two fp16 parts (k_lo); lse and out poisoned with NaN
// first. Tensor-core sums run in another
// order and ex2 is approximate, so the bound is relative, not bitwise. Skips without a GPU.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "device_buffer.h"
#include "summed_attention_launcher.h"
#include "summed_case.h"

namespace kvbench::gpu_test {
namespace {

#define ASSERT_CUDA(expr) ASSERT_CUDA_WITH(expr, kernels::summed_attention_check(p))

class SummedAttentionGpuTest : public ::testing::TestWithParam<SummedShape> {};

TEST_P(SummedAttentionGpuTest, MatchesTheHostReference) {
  std::string why;
  if (!have_gpu(&why)) GTEST_SKIP() << why;
  SummedCase c = summed_case(GetParam());
  kernels::SummedAttentionProblem p = c.p;
  DeviceBuffer dq, dk, dk_lo, dlse, dout;
  ASSERT_CUDA(dq.upload(c.q));
  ASSERT_CUDA(dk.upload(c.k));
  ASSERT_CUDA(dk_lo.upload(c.k_lo));
  ASSERT_CUDA(dlse.upload(c.lse));
  ASSERT_CUDA(dout.upload(c.out));
  p.q = static_cast<const uint16_t*>(dq.ptr), p.k = static_cast<const uint16_t*>(dk.ptr);
  if (p.k_lo) p.k_lo = static_cast<const uint16_t*>(dk_lo.ptr);
  p.lse = static_cast<float*>(dlse.ptr), p.out = static_cast<float*>(dout.ptr);
  ASSERT_CUDA(kernels::summed_attention(p, nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());
  ASSERT_CUDA(dlse.download(c.lse));
  ASSERT_CUDA(dout.download(c.out));
  EXPECT_EQ(c.mismatch(), "");
}

INSTANTIATE_TEST_SUITE_P(Shapes, SummedAttentionGpuTest, ::testing::ValuesIn(summed_shapes()),
                         [](const ::testing::TestParamInfo<SummedShape>& i) {
                           return name(i.param);
                         });

TEST(SummedAttentionGpuTest, RefusesShapesItDoesNotTake) {
  std::string why;
  if (!have_gpu(&why)) GTEST_SKIP() << why;
  std::vector<float> buf(64);
  kernels::SummedAttentionProblem p;
  p.heads = p.kv_heads = 1, p.head_dim = 96, p.n = p.held = 1, p.scale = 0.1f;
  DeviceBuffer d;
  ASSERT_EQ(d.upload(buf), cudaSuccess);
  p.q = p.k = static_cast<const uint16_t*>(d.ptr), p.lse = p.out = static_cast<float*>(d.ptr);
  EXPECT_EQ(kernels::summed_attention(p, nullptr), cudaErrorInvalidValue);  // head_dim 96
  p.head_dim = 256;
  EXPECT_EQ(kernels::summed_attention(p, nullptr), cudaErrorInvalidValue);  // head_dim 256
  p.head_dim = 64, p.k = reinterpret_cast<const uint16_t*>(static_cast<char*>(d.ptr) + 8);
  EXPECT_EQ(kernels::summed_attention(p, nullptr), cudaErrorInvalidValue);  // misaligned
  p.k = static_cast<const uint16_t*>(d.ptr);
  p.k_lo = reinterpret_cast<const uint16_t*>(static_cast<char*>(d.ptr) + 8);
  EXPECT_EQ(kernels::summed_attention(p, nullptr), cudaErrorInvalidValue);  // k_lo misaligned
  p.k_lo = static_cast<const uint16_t*>(d.ptr), p.bf16 = true;
  EXPECT_EQ(kernels::summed_attention(p, nullptr), cudaErrorInvalidValue);  // split keys, bf16 q
  p.k_lo = nullptr, p.bf16 = false, p.heads = p.kv_heads = 70000;
  EXPECT_EQ(kernels::summed_attention(p, nullptr), cudaErrorInvalidValue);  // past a grid's y
}

}  // namespace
}  // namespace kvbench::gpu_test
