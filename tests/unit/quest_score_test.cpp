// Quest's page scores as the paged GPU path computes them (kernels/quest_score.h), host
// reference, against a float64 evaluation of QuestPolicy's rule on the same fp16 bounds:
// sequences with different page counts (so `out` is padded), GQA's query parts of both
// signs, and bounds in separate allocations reached through pointer arrays. And the folding
// of a decode step's keys into those bounds (QuestFoldProblem): its directed rounding against
// QuestPolicy's half_bounds bit for bit and against float64, its updates against the rule.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <c10/util/Half.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "kvbench/kv/quest_policy.h"
#include "quest_score.h"

namespace kvbench {
namespace {

TEST(QuestScoreTest, HostReferenceMatchesFloat64) {
  const int B = 3, H = 2, D = 96, most = 11;
  const std::vector<int64_t> pages = {11, 4, 7};
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<std::vector<uint16_t>> lo(B), hi(B);
  std::vector<const uint16_t*> lo_ptr, hi_ptr;
  for (int b = 0; b < B; ++b) {
    for (int64_t i = 0; i < pages[b] * H * D; ++i) {
      const float a = normal(rng), c = normal(rng);
      lo[b].push_back(c10::Half(std::min(a, c)).x), hi[b].push_back(c10::Half(std::max(a, c)).x);
    }
    lo_ptr.push_back(lo[b].data()), hi_ptr.push_back(hi[b].data());
  }
  std::vector<float> pos(size_t(B) * H * D), neg(pos.size());
  for (size_t i = 0; i < pos.size(); ++i)
    pos[i] = std::abs(normal(rng)), neg[i] = -std::abs(normal(rng));
  std::vector<float> out(size_t(B) * H * most, NAN);
  kernels::QuestScoreProblem p;
  p.batch = B, p.kv_heads = H, p.head_dim = D, p.most = most;
  p.mins = lo_ptr.data(), p.maxs = hi_ptr.data(), p.pages = pages.data();
  p.pos = pos.data(), p.neg = neg.data(), p.out = out.data();
  ASSERT_STREQ(kernels::quest_score_check(p), "");
  kernels::quest_score_host(p);
  auto half = [](uint16_t x) { return double(float(c10::Half(x, c10::Half::from_bits()))); };
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (int t = 0; t < most; ++t) {
        const float got = out[(size_t(b) * H + h) * most + t];
        if (t >= pages[b]) {
          EXPECT_EQ(got, 0.f) << "padding of sequence " << b;
          continue;
        }
        double want = 0;
        for (int d = 0; d < D; ++d) {
          const size_t e = (size_t(t) * H + h) * D + d, q = (size_t(b) * H + h) * D + d;
          want += pos[q] * half(hi[b][e]) + neg[q] * half(lo[b][e]);
        }
        EXPECT_NEAR(got, want, 1e-5 * (1 + std::abs(want))) << b << " " << h << " " << t;
      }
}

TEST(QuestScoreTest, ChecksSayWhatIsMissing) {
  kernels::QuestScoreProblem p;
  EXPECT_STRNE(kernels::quest_score_check(p), "");
  p.batch = p.kv_heads = p.head_dim = p.most = 1;
  EXPECT_STREQ(kernels::quest_score_check(p), "a required pointer is null");
  p.batch = 65536;  // a grid's y
  EXPECT_STREQ(kernels::quest_score_check(p), "at most 65535 sequences (a grid's y)");
}

// fp16 bits on one integer line (-0 and +0 both at 0), so adjacent values differ by one.
int ordered(uint16_t h) { return (h & 0x8000u) ? -int(h & 0x7fffu) : int(h); }

std::vector<float> rounding_inputs() {
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> x = {0.f,
                          -0.f,
                          1e-8f,
                          -1e-8f,
                          2.9802322e-8f,
                          -2.9802322e-8f,
                          5.9604645e-8f,
                          8.9e-8f,
                          -8.9e-8f,
                          6.1e-5f,
                          -6.1035156e-5f,
                          1.f,
                          1.00048828125f,
                          -1.00048828125f,
                          1.0001f,
                          -2.0001f,
                          65504.f,
                          65519.f,
                          65520.f,
                          -65520.f,
                          70000.f,
                          -70000.f,
                          3e38f,
                          inf,
                          -inf};
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_int_distribution<int> scale(-26, 17);
  for (int i = 0; i < 20000; ++i) x.push_back(std::ldexp(normal(rng), scale(rng)));
  return x;
}

TEST(QuestFoldTest, RoundsLikeHalfBoundsAndBracketsEveryValue) {
  const std::vector<float> x = rounding_inputs();
  const at::Tensor t = at::tensor(x);
  for (bool down : {true, false}) {
    const at::Tensor torch_bits = half_bounds(t, down).view(at::kShort).contiguous();
    const int16_t* want = torch_bits.data_ptr<int16_t>();
    for (size_t i = 0; i < x.size(); ++i)
      ASSERT_EQ(kernels::quest_half_toward(x[i], down), uint16_t(want[i]))
          << "x " << x[i] << (down ? " down" : " up");
  }
  for (const float v : x) {  // down <= x <= up, as adjacent fp16 values (or one, exact)
    const uint16_t lo = kernels::quest_half_toward(v, true),
                   hi = kernels::quest_half_toward(v, false);
    const double vl = kernels::encode::half_value(lo), vh = kernels::encode::half_value(hi);
    EXPECT_LE(vl, double(v)) << v;
    EXPECT_GE(vh, double(v)) << v;
    const int gap = ordered(hi) - ordered(lo);
    EXPECT_EQ(gap, vl == double(v) && vh == double(v) ? 0 : 1) << v;
  }
}

TEST(QuestFoldTest, FoldsEachKeyIntoItsOwnPageOnly) {
  const int B = 3, H = 2, D = 40, row = H * D;
  const std::vector<int64_t> pages = {3, 5, 4}, page = {2, 0, 3};
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<std::vector<uint16_t>> lo(B), hi(B);
  std::vector<uint16_t*> lo_ptr, hi_ptr;
  for (int b = 0; b < B; ++b) {
    for (int64_t i = 0; i < pages[b] * row; ++i) {
      const bool empty = (i / row) % 2 == 1;  // a page no key has reached yet: (+inf, -inf)
      const float a = normal(rng), c = normal(rng);
      lo[b].push_back(empty ? 0x7c00u : c10::Half(std::min(a, c)).x);
      hi[b].push_back(empty ? 0xfc00u : c10::Half(std::max(a, c)).x);
    }
    lo_ptr.push_back(lo[b].data()), hi_ptr.push_back(hi[b].data());
  }
  std::vector<float> keys(size_t(B) * row);
  for (float& k : keys) k = 1.5f * normal(rng);
  keys[5] = keys[row + 9] = NAN;  // a NaN key leaves its bounds as they were
  const std::vector<std::vector<uint16_t>> lo0 = lo, hi0 = hi;
  kernels::QuestFoldProblem p;
  p.batch = B, p.kv_heads = H, p.head_dim = D;
  p.mins = lo_ptr.data(), p.maxs = hi_ptr.data(), p.page = page.data(), p.keys = keys.data();
  kernels::quest_fold_host(p);
  for (int b = 0; b < B; ++b)
    for (int64_t i = 0; i < pages[b] * row; ++i) {
      if (i / row != page[b]) {  // other pages untouched
        ASSERT_EQ(lo[b][i], lo0[b][i]) << b << " " << i;
        ASSERT_EQ(hi[b][i], hi0[b][i]) << b << " " << i;
        continue;
      }
      const double x = keys[size_t(b) * row + i % row];
      if (std::isnan(x)) {
        ASSERT_EQ(lo[b][i], lo0[b][i]) << b << " " << i;
        ASSERT_EQ(hi[b][i], hi0[b][i]) << b << " " << i;
        continue;
      }
      const double old_lo = kernels::encode::half_value(lo0[b][i]),
                   old_hi = kernels::encode::half_value(hi0[b][i]);
      const double got_lo = kernels::encode::half_value(lo[b][i]),
                   got_hi = kernels::encode::half_value(hi[b][i]);
      EXPECT_LE(got_lo, x);  // the bounds hold the key, and what they held
      EXPECT_GE(got_hi, x);
      EXPECT_LE(got_lo, old_lo);
      EXPECT_GE(got_hi, old_hi);
      // Tight: the key's fp16 neighbour on that side, or the old bound when it was tighter.
      const double rd = kernels::encode::half_value(kernels::quest_half_toward(float(x), true)),
                   ru = kernels::encode::half_value(kernels::quest_half_toward(float(x), false));
      EXPECT_EQ(got_lo, std::min(old_lo, rd)) << b << " " << i;
      EXPECT_EQ(got_hi, std::max(old_hi, ru)) << b << " " << i;
    }
}

TEST(QuestFoldTest, ChecksSayWhatIsMissing) {
  kernels::QuestFoldProblem p;
  EXPECT_STRNE(kernels::quest_fold_check(p), "");
  p.batch = p.kv_heads = p.head_dim = 1;
  EXPECT_STREQ(kernels::quest_fold_check(p), "a required pointer is null");
}

}  // namespace
}  // namespace kvbench
