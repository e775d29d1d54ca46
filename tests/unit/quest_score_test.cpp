// Quest's page scores as the paged GPU path computes them (kernels/quest_score.h), host
// reference, against a float64 evaluation of QuestPolicy's rule on the same fp16 bounds:
// sequences with different page counts (so `out` is padded), GQA's query parts of both
// signs, and bounds in separate allocations reached through pointer arrays.
#include <gtest/gtest.h>

#include <c10/util/Half.h>

#include <cmath>
#include <random>
#include <vector>

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
}

}  // namespace
}  // namespace kvbench
