// Latent-space decode attention's host reference (kernels/latent_decode.h, the phases the GPU
// kernel runs) against float64 attention over the reconstructed keys and values: GQA, latent
// groups of 1 and 2 KV heads, ranks below and at group * head_dim, sequences of different
// lengths. Host code; no GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "latent_case.h"
#include "latent_decode.h"

namespace kvbench::gpu_test {
namespace {

struct Shape {
  int kv_heads, q_per_kv, head_dim, group, rank;
};

class LatentDecodeHostTest : public ::testing::TestWithParam<Shape> {};

// fp32 sums of up to 300 x rank terms against float64: 1e-5 of the output's scale (measured
// ~1e-7); a wrong head row, group or basis is off by order 1.
TEST_P(LatentDecodeHostTest, MatchesFloat64AttentionOverReconstructedTokens) {
  const Shape s = GetParam();
  const LatentCase c =
      latent_case(s.kv_heads, s.q_per_kv, s.head_dim, s.group, s.rank, {300, 1, 77}, 3 + s.rank);
  std::vector<float> out(c.want.size(), NAN), scratch(c.max_tokens + 2 * c.rank);
  const kernels::LatentProblem p = c.problem(out.data());
  ASSERT_STREQ(kernels::latent_check(p), "");
  kernels::latent_decode_host(p, scratch.data());
  EXPECT_LT(scaled_error(out, c.want), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Shapes, LatentDecodeHostTest,
                         ::testing::Values(Shape{2, 4, 128, 1, 64}, Shape{4, 2, 64, 2, 90},
                                           Shape{2, 1, 64, 1, 64}, Shape{4, 4, 128, 2, 256}),
                         [](const ::testing::TestParamInfo<Shape>& i) {
                           return "kv" + std::to_string(i.param.kv_heads) + "_d" +
                                  std::to_string(i.param.head_dim) + "_g" +
                                  std::to_string(i.param.group) + "_r" +
                                  std::to_string(i.param.rank);
                         });

TEST(LatentCheckTest, SaysWhatIsWrong) {
  LatentCase c = latent_case(4, 2, 64, 2, 32, {5}, 1);
  std::vector<float> out(c.want.size());
  kernels::LatentProblem p = c.problem(out.data());
  EXPECT_STREQ(kernels::latent_check(p), "");
  p.group = 3;
  EXPECT_STREQ(kernels::latent_check(p), "group must divide kv_heads");
  p.group = 2, p.rank = 129;
  EXPECT_STREQ(kernels::latent_check(p), "rank must be in [1, min(1024, group * head_dim)]");
}

}  // namespace
}  // namespace kvbench::gpu_test
