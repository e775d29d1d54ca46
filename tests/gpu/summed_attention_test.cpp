// H2O's prefill-block kernels (kernels/summed_attention.cu) against their host reference
// (summed_attention.h, checked against float64 and the policies' formula by
// tests/unit/summed_attention_test.cpp): random 16-bit q and k, blocks of one query and of
// a tile and one, keys before the block or none, tiles across the diagonal, GQA groups of 1
// and 4, fp16 and bf16, keys split in two fp16 parts (k_lo); lse and out poisoned with NaN
// first. Tensor-core sums run in another
// order and ex2 is approximate, so the bound is relative, not bitwise. Skips without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "device_buffer.h"
#include "kv_encode.h"
#include "summed_attention_launcher.h"

namespace kvbench::gpu_test {
namespace {

#define ASSERT_CUDA(expr) ASSERT_CUDA_WITH(expr, kernels::summed_attention_check(p))

struct Shape {
  int heads, kv_heads, head_dim, n, held;
  bool bf16, split = false;
};

std::string name(const Shape& s) {
  return "h" + std::to_string(s.heads) + "x" + std::to_string(s.kv_heads) + "_d" +
         std::to_string(s.head_dim) + "_n" + std::to_string(s.n) + "_held" +
         std::to_string(s.held) + (s.bf16 ? "_bf16" : "_fp16") + (s.split ? "_split" : "");
}

// gtest prints a parameter by its name, not its bytes.
void PrintTo(const Shape& s, std::ostream* os) { *os << name(s); }

class SummedAttentionGpuTest : public ::testing::TestWithParam<Shape> {};

TEST_P(SummedAttentionGpuTest, MatchesTheHostReference) {
  std::string why;
  if (!have_gpu(&why)) GTEST_SKIP() << why;
  const Shape s = GetParam();
  std::mt19937 rng(3 + s.n + s.held);
  std::normal_distribution<float> normal(0.f, 1.5f);
  auto bits = [&](float x) {
    return s.bf16 ? kernels::encode::bf16_bits(x) : kernels::encode::half_bits(x);
  };
  std::vector<uint16_t> q(size_t(s.heads) * s.n * s.head_dim),
      k(size_t(s.kv_heads) * s.held * s.head_dim), k_lo;
  for (auto& x : q) x = bits(normal(rng));
  for (auto& x : k) {
    const float v = normal(rng);
    x = bits(v);
    if (s.split)  // the remainder of an fp32 key, as paged_cuda::summed_attention_split makes it
      k_lo.push_back(kernels::encode::half_bits((v - kernels::encode::half_value(x)) /
                                                kernels::kSummedLoScale));
  }
  std::vector<float> lse(size_t(s.heads) * s.n, NAN), out(size_t(s.kv_heads) * s.held, NAN);
  std::vector<float> want_lse = lse, want_out = out;
  kernels::SummedAttentionProblem p;
  p.heads = s.heads, p.kv_heads = s.kv_heads, p.head_dim = s.head_dim, p.n = s.n;
  p.held = s.held, p.bf16 = s.bf16, p.scale = float(1.0 / std::sqrt(double(s.head_dim)));
  p.q = q.data(), p.k = k.data(), p.lse = want_lse.data(), p.out = want_out.data();
  if (s.split) p.k_lo = k_lo.data();
  kernels::summed_attention_host(p);

  DeviceBuffer dq, dk, dk_lo, dlse, dout;
  ASSERT_CUDA(dq.upload(q));
  ASSERT_CUDA(dk.upload(k));
  ASSERT_CUDA(dk_lo.upload(k_lo));
  ASSERT_CUDA(dlse.upload(lse));
  ASSERT_CUDA(dout.upload(out));
  p.q = static_cast<const uint16_t*>(dq.ptr), p.k = static_cast<const uint16_t*>(dk.ptr);
  if (s.split) p.k_lo = static_cast<const uint16_t*>(dk_lo.ptr);
  p.lse = static_cast<float*>(dlse.ptr), p.out = static_cast<float*>(dout.ptr);
  ASSERT_CUDA(kernels::summed_attention(p, nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());
  ASSERT_CUDA(dlse.download(lse));
  ASSERT_CUDA(dout.download(out));
  for (size_t i = 0; i < lse.size(); ++i)
    ASSERT_NEAR(lse[i], want_lse[i], 1e-4 * (1 + std::abs(want_lse[i]))) << "query " << i;
  // The sums are of positive terms (no cancellation): relative, so that a key with a tiny sum
  // is checked too (ex2.approx and another order of addition: ~1e-6 relative measured on the
  // host replay).
  for (size_t j = 0; j < out.size(); ++j)
    ASSERT_NEAR(out[j], want_out[j], 1e-4 * std::abs(want_out[j]) + 1e-7) << "key " << j;
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, SummedAttentionGpuTest,
    ::testing::Values(Shape{8, 2, 128, 200, 330, false},        // GQA 4, 130 keys before
                      Shape{8, 2, 64, 200, 330, true},          //   at head_dim 64, bf16
                      Shape{4, 4, 128, 65, 65, false},          // a whole prefill: a tile and one
                      Shape{4, 4, 64, 64, 97, false},           // one tile, 33 keys before
                      Shape{8, 2, 128, 1, 77, false},           // one query sees everything
                      Shape{4, 1, 128, 520, 600, true},         // many tiles, GQA 4, bf16
                      Shape{8, 2, 128, 200, 330, false, true},  // keys split in two
                      Shape{4, 4, 64, 65, 98, false, true},     //   at head_dim 64
                      Shape{8, 1, 128, 130, 200, false},        // GQA 8 (Llama-3-70B's)
                      Shape{8, 1, 64, 130, 200, false, true}),  //   split, at head_dim 64
    [](const ::testing::TestParamInfo<Shape>& i) { return name(i.param); });

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
