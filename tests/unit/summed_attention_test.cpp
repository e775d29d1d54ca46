// H2O's accumulated attention as the paged GPU path computes it (kernels/summed_attention.h),
// host reference: against a float64 evaluation of its definition on the same 16-bit q and k,
// and against the policies' own formula (retention_policy.h's summed_attention) with the
// earlier keys in shuffled order, as a cache under eviction holds them. Blocks with and
// without keys before them, one query, GQA groups of 1 and 4, fp16 and bf16, and fp32 keys
// split in two fp16 parts (k_lo), whose sums must match the fp32 keys'.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "../../src/kv/paged_cache_cuda.h"  // the paged cache's wrapper (private to src/kv)
#include "kvbench/kv/retention_policy.h"
#include "summed_attention.h"

namespace kvbench {
namespace {

struct Case {
  int heads, kv_heads, head_dim, n, held;
  bool bf16, split = false;
};

struct Inputs {
  std::vector<uint16_t> q, k, k_lo;
  std::vector<float> k32;  // the keys' values: k's, or (split) the fp32 keys k and k_lo stand for
  std::vector<float> lse, out;
  kernels::SummedAttentionProblem p;
};

uint16_t bits16(float x, bool bf16) { return bf16 ? c10::BFloat16(x).x : c10::Half(x).x; }
double value(uint16_t bits, bool bf16) { return kernels::summed_value(bf16, bits); }

// Random q and k (scaled so that some probabilities are sharp), lse and out poisoned.
void fill(const Case& c, unsigned seed, Inputs& in) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.5f);
  in.q.resize(size_t(c.heads) * c.n * c.head_dim);
  in.k.resize(size_t(c.kv_heads) * c.held * c.head_dim);
  for (auto& x : in.q) x = bits16(normal(rng), c.bf16);
  in.k32.resize(in.k.size());
  for (size_t i = 0; i < in.k.size(); ++i) {
    const float x = normal(rng);  // an fp32 value no 16-bit type holds, as code times scale
    in.k[i] = bits16(x, c.bf16);
    in.k32[i] = c.split ? x : value(in.k[i], c.bf16);
    if (c.split)
      in.k_lo.push_back(c10::Half((x - float(c10::Half(x))) / kernels::kSummedLoScale).x);
  }
  in.lse.assign(size_t(c.heads) * c.n, NAN);
  in.out.assign(size_t(c.kv_heads) * c.held, NAN);
  auto& p = in.p;
  p.heads = c.heads, p.kv_heads = c.kv_heads, p.head_dim = c.head_dim, p.n = c.n, p.held = c.held,
  p.bf16 = c.bf16, p.scale = float(1.0 / std::sqrt(double(c.head_dim)));
  p.q = in.q.data(), p.k = in.k.data(), p.lse = in.lse.data(), p.out = in.out.data();
  if (c.split) p.k_lo = in.k_lo.data();
}

// The definition in float64: softmax over the keys each query sees, summed per key over the
// group's queries, divided by the group.
std::vector<double> float64_sums(const kernels::SummedAttentionProblem& p,
                                 const std::vector<float>& k32) {
  const int group = p.heads / p.kv_heads, before = p.held - p.n, D = p.head_dim;
  std::vector<double> out(size_t(p.kv_heads) * p.held, 0.0), s(size_t(p.held));
  for (int h = 0; h < p.heads; ++h)
    for (int i = 0; i < p.n; ++i) {
      const int kvh = h / group, seen = before + i + 1;
      double m = -INFINITY, l = 0.0;
      for (int j = 0; j < seen; ++j) {
        double dot = 0.0;
        for (int d = 0; d < D; ++d)
          dot += value(p.q[(size_t(h) * p.n + i) * D + d], p.bf16) *
                 double(k32[(size_t(kvh) * p.held + j) * D + d]);
        s[size_t(j)] = dot * p.scale, m = std::max(m, s[size_t(j)]);
      }
      for (int j = 0; j < seen; ++j) l += std::exp(s[size_t(j)] - m);
      for (int j = 0; j < seen; ++j)
        out[size_t(kvh) * p.held + j] += std::exp(s[size_t(j)] - m) / l / group;
    }
  return out;
}

// gtest prints a parameter by its fields, not its bytes.
void PrintTo(const Case& c, std::ostream* os) {
  *os << c.heads << "x" << c.kv_heads << " heads, d " << c.head_dim << ", n " << c.n << ", held "
      << c.held << (c.bf16 ? ", bf16" : "") << (c.split ? ", split" : "");
}

class SummedAttentionTest : public ::testing::TestWithParam<Case> {};

TEST_P(SummedAttentionTest, HostReferenceMatchesFloat64) {
  const Case c = GetParam();
  Inputs in;
  fill(c, 11 + c.held, in);
  ASSERT_STREQ(kernels::summed_attention_check(in.p), "");
  kernels::summed_attention_host(in.p);
  const std::vector<double> want = float64_sums(in.p, in.k32);
  double total = 0.0;
  for (size_t j = 0; j < want.size(); ++j) {
    ASSERT_NEAR(in.out[j], want[j], 2e-5 * (1.0 + want[j])) << "key " << j;
    total += in.out[j];
  }
  // Each query's probabilities sum to 1: the sums over all keys count the queries.
  EXPECT_NEAR(total, double(c.n) * c.kv_heads, 1e-4 * c.n * c.kv_heads);
}

// The tolerance above sees fp16 rounding: split keys read without their remainders (plain
// fp16 keys, what the kernels would read unsplit) miss it.
TEST(SummedAttentionSplitTest, WithoutTheRemaindersTheSumsMissTheBound) {
  Inputs in;
  fill(Case{8, 2, 16, 37, 66, false, true}, 5, in);
  in.p.k_lo = nullptr;
  kernels::summed_attention_host(in.p);
  const std::vector<double> want = float64_sums(in.p, in.k32);
  double worst = 0.0;
  for (size_t j = 0; j < want.size(); ++j)
    worst = std::max(worst, std::abs(in.out[j] - want[j]) / (1.0 + want[j]));
  EXPECT_GT(worst, 2e-5);
}

// The paged cache's wrapper on the CPU (its kernels' host twin): split keys agree with the
// fp32 formula, and a key past fp16's range (a dequantized code whose scale rounded up)
// saturates instead of making the head's sums NaN.
TEST(SummedAttentionSplitTest, TheWrapperSplitsKeysAndSaturatesPastFp16) {
  auto gen = at::detail::createCPUGenerator(9);
  const at::Tensor q = at::randn({8, 40, 32}, gen).to(at::kHalf);
  at::Tensor k = at::randn({2, 50, 32}, gen);  // fp32 keys, no fp16 values
  const at::Tensor pos = at::arange(50, at::kLong).expand({2, 50});
  const at::Tensor want = summed_attention(q.to(at::kFloat), k, pos, 10);
  const at::Tensor got = paged_cuda::summed_attention_split(q, k, pos, 10);
  EXPECT_LT((got - want).abs().max().item<double>(), 2e-5 * (1 + want.abs().max().item<double>()));
  k[1][7][3] = 70000.f;
  EXPECT_TRUE(at::isfinite(paged_cuda::summed_attention_split(q, k, pos, 10)).all().item<bool>());
}

// The policies' formula on the same values, with the keys before the block shuffled (their
// positions too): the kernels' reading of the contract (query i sees the first held - n + i + 1
// keys) must give what the positions say.
TEST_P(SummedAttentionTest, HostReferenceMatchesThePolicyFormula) {
  const Case c = GetParam();
  Inputs in;
  fill(c, 23 + c.n, in);
  const int before = c.held - c.n, D = c.head_dim;
  // Positions: the earlier keys hold distinct positions below `start` in a shuffled order.
  const int64_t start = 3 * before + 5;
  std::vector<int64_t> earlier(size_t(3 * before + 5));
  std::iota(earlier.begin(), earlier.end(), 0);
  std::mt19937 rng(7);
  std::shuffle(earlier.begin(), earlier.end(), rng);
  std::vector<int64_t> pos(size_t(c.kv_heads) * c.held);
  for (int h = 0; h < c.kv_heads; ++h)
    for (int j = 0; j < c.held; ++j)
      pos[size_t(h) * c.held + j] = j < before ? earlier[size_t(j)] : start + (j - before);
  kernels::summed_attention_host(in.p);

  auto to_float = [&](const std::vector<uint16_t>& bits, std::vector<int64_t> shape) {
    std::vector<float> v(bits.size());
    for (size_t i = 0; i < v.size(); ++i) v[i] = float(value(bits[i], c.bf16));
    return at::tensor(v).view(shape);
  };
  const at::Tensor q = to_float(in.q, {c.heads, c.n, D});
  const at::Tensor k = at::tensor(in.k32).view({c.kv_heads, c.held, D});
  const at::Tensor want =
      summed_attention(q, k, at::tensor(pos).view({c.kv_heads, c.held}), start).contiguous();
  const float* w = want.data_ptr<float>();
  for (size_t j = 0; j < in.out.size(); ++j)
    ASSERT_NEAR(in.out[j], w[j], 2e-5 * (1.0 + std::abs(w[j]))) << "key " << j;
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, SummedAttentionTest,
    ::testing::Values(Case{8, 2, 16, 37, 66, false},         // GQA 4, 29 keys before the block
                      Case{3, 3, 24, 20, 20, false},         // a whole prefill, no GQA
                      Case{4, 1, 32, 1, 9, false},           // one query sees everything
                      Case{4, 2, 16, 70, 75, true},          // bf16
                      Case{8, 2, 16, 37, 66, false, true}),  // fp32 keys split in two
    [](const ::testing::TestParamInfo<Case>& i) {
      const Case& c = i.param;
      return "h" + std::to_string(c.heads) + "x" + std::to_string(c.kv_heads) + "_n" +
             std::to_string(c.n) + "_held" + std::to_string(c.held) + (c.bf16 ? "_bf16" : "") +
             (c.split ? "_split" : "");
    });

TEST(SummedAttentionCheckTest, RefusesBadProblems) {
  Inputs in;
  fill(Case{4, 2, 16, 5, 9, false}, 1, in);
  EXPECT_STREQ(kernels::summed_attention_check(in.p), "");
  kernels::SummedAttentionProblem p = in.p;
  p.held = 4;
  EXPECT_STREQ(kernels::summed_attention_check(p), "the block's n keys must be among the held");
  p = in.p, p.kv_heads = 3;
  EXPECT_STREQ(kernels::summed_attention_check(p), "heads must be a multiple of kv_heads");
  p = in.p, p.lse = nullptr;
  EXPECT_STREQ(kernels::summed_attention_check(p), "a required pointer is null");
  p = in.p, p.scale = 0.f;
  EXPECT_STREQ(kernels::summed_attention_check(p), "scale must be positive and finite");
  p = in.p, p.scale = std::numeric_limits<float>::infinity();
  EXPECT_STREQ(kernels::summed_attention_check(p), "scale must be positive and finite");
  p = in.p, p.k_lo = in.k.data(), p.bf16 = true;
  EXPECT_STREQ(kernels::summed_attention_check(p), "k_lo needs fp16 q and k");
  EXPECT_TRUE(kernels::summed_attention_gpu_shape(128));
  EXPECT_FALSE(kernels::summed_attention_gpu_shape(96));
}

}  // namespace
}  // namespace kvbench
