// Quest's page scores as the paged GPU path computes them (kernels/quest_score.h), host
// reference, against a float64 evaluation of QuestPolicy's rule on the same fp16 bounds:
// sequences with different page counts (so `out` is padded), GQA's query parts of both
// signs taken from the query rows the sequences name, and bounds in separate allocations
// reached through pointer arrays. And the folding
// of a decode step's keys into those bounds (QuestFoldProblem): its directed rounding against
// QuestPolicy's half_bounds bit for bit and against float64, its updates against the rule. And
// the choice of the pages a step reads (QuestSelectProblem): against QuestPolicy's torch rule
// (with NaN and infinite scores too) and against ranks counted pair by pair.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kvbench/kv/quest_policy.h"
#include "quest_case.h"
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
  // Queries of 3 rows, 3 query heads per KV head; the sequences take rows 2, 0 and 1.
  const int G = 3;
  const std::vector<int64_t> rows = {2, 0, 1};
  std::vector<float> q(size_t(3) * H * G * D);
  for (float& x : q) x = normal(rng);
  std::vector<double> pos(size_t(B) * H * D), neg(pos.size());  // the group's means, float64
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (int d = 0; d < D; ++d)
        for (int g = 0; g < G; ++g) {
          const double x = q[((size_t(rows[b]) * H + h) * G + g) * D + d];
          pos[(size_t(b) * H + h) * D + d] += std::max(x, 0.0) / G;
          neg[(size_t(b) * H + h) * D + d] += std::min(x, 0.0) / G;
        }
  std::vector<float> out(size_t(B) * H * most, NAN);
  kernels::QuestScoreProblem p;
  p.batch = B, p.kv_heads = H, p.head_dim = D, p.most = most;
  p.mins = lo_ptr.data(), p.maxs = hi_ptr.data(), p.pages = pages.data();
  p.q = q.data(), p.q_format = kernels::QuestQuery::kFp32, p.group = G, p.rows = rows.data();
  p.out = out.data();
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
          const size_t e = (size_t(t) * H + h) * D + d, part = (size_t(b) * H + h) * D + d;
          want += pos[part] * half(hi[b][e]) + neg[part] * half(lo[b][e]);
        }
        EXPECT_NEAR(got, want, 1e-5 * (1 + std::abs(want))) << b << " " << h << " " << t;
      }
}

// The 16-bit query formats score as their values do in fp32, bit for bit (c10's decoding of
// the bits as the oracle of the kernels' own).
TEST(QuestScoreTest, SixteenBitQueriesScoreAsTheirValues) {
  using kernels::QuestQuery;
  for (QuestQuery format : {QuestQuery::kFp16, QuestQuery::kBf16}) {
    gpu_test::QuestScoreCase c(40);
    const size_t n = size_t(c.B) * c.H * c.most;
    std::vector<float> got(n, NAN), want(n, NAN), unrounded(n, NAN);
    kernels::quest_score_host(c.problem(got.data(), format));
    kernels::quest_score_host(c.problem(unrounded.data(), QuestQuery::kFp32));
    for (size_t i = 0; i < c.q.size(); ++i)
      c.q[i] = format == QuestQuery::kFp16
                   ? float(c10::Half(c.q16[i], c10::Half::from_bits()))
                   : float(c10::BFloat16(c.qbf16[i], c10::BFloat16::from_bits()));
    kernels::quest_score_host(c.problem(want.data(), QuestQuery::kFp32));
    EXPECT_EQ(got, want) << "format " << int(format);
    EXPECT_NE(got, unrounded) << "the rounding changed no score";
  }
}

TEST(QuestScoreTest, ChecksSayWhatIsMissing) {
  kernels::QuestScoreProblem p;
  EXPECT_STRNE(kernels::quest_score_check(p), "");
  p.batch = p.kv_heads = p.head_dim = p.most = 1;
  EXPECT_STREQ(kernels::quest_score_check(p), "group must be positive");
  p.group = 1;
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

// The choice's tokens for (b, h): [read - 1, page_size] of `tokens`.
std::vector<int32_t> row_tokens(const std::vector<int32_t>& tokens,
                                const gpu_test::QuestSelectCase& c, int b, int h) {
  const size_t n = size_t(c.read - 1) * c.P, at = (size_t(b) * c.H + h) * n;
  return {tokens.begin() + long(at), tokens.begin() + long(at + n)};
}

TEST(QuestSelectTest, HostReferenceMatchesTheTorchRule) {
  for (const gpu_test::QuestSelectShape& shape : gpu_test::quest_select_shapes()) {
    SCOPED_TRACE(shape.label());
    const int read = shape.read, P = shape.page_size;
    const gpu_test::QuestSelectCase c(read, P, shape.finite, 3 + read);
    std::vector<int32_t> got(c.tokens(), -7);
    const kernels::QuestSelectProblem p = c.problem(c.scores.data(), c.pages.data(), got.data());
    ASSERT_STREQ(kernels::quest_select_check(p), "");
    kernels::quest_select_host(p);
    // QuestPolicy's torch formulation: the newest page forced in, the padding out, two sorts.
    const QuestPolicy quest(int64_t(read) * P, P, 0);
    const at::Tensor bounds = at::tensor(c.scores).view({c.B, c.H, c.most});
    const at::Tensor chosen = quest.select_pages(bounds, at::tensor(c.pages));
    ASSERT_EQ(chosen.sizes(), (std::vector<int64_t>{c.B, c.H, read}));
    for (int b = 0; b < c.B; ++b)
      for (int h = 0; h < c.H; ++h) {
        ASSERT_EQ(chosen[b][h][read - 1].item<int64_t>(), c.pages[b] - 1) << "the newest page";
        std::vector<int32_t> want;
        for (int i = 0; i + 1 < read; ++i)
          for (int j = 0; j < P; ++j)
            want.push_back(int32_t(chosen[b][h][i].item<int64_t>() * P + j));
        ASSERT_EQ(row_tokens(got, c, b, h), want) << "sequence " << b << ", head " << h;
      }
  }
}

// NaN above every number and equal to another NaN, +0 == -0, the earlier of equal scores:
// the rank of each candidate counted pairwise (no sort, no order key).
TEST(QuestSelectTest, HostReferenceRanksNanInfinityAndSignedZeroAsAStableSort) {
  const gpu_test::QuestSelectCase c(9, 4, /*finite=*/false, 17);
  std::vector<int32_t> got(c.tokens(), -7);
  kernels::quest_select_host(c.problem(c.scores.data(), c.pages.data(), got.data()));
  auto above = [](float x, float y) {  // x ranks above y
    return std::isnan(x) ? !std::isnan(y) : !std::isnan(y) && x > y;
  };
  auto same = [](float x, float y) { return std::isnan(x) ? std::isnan(y) : x == y; };
  int nans = 0;
  for (int b = 0; b < c.B; ++b)
    for (int h = 0; h < c.H; ++h) {
      const float* s = c.scores.data() + (size_t(b) * c.H + h) * c.most;
      std::vector<int32_t> want;
      for (int i = 0; i + 1 < c.pages[b]; ++i) {
        int rank = 0;
        for (int j = 0; j + 1 < c.pages[b]; ++j)
          rank += above(s[j], s[i]) || (same(s[j], s[i]) && j < i);
        nans += std::isnan(s[i]);
        if (rank < c.read - 1)
          for (int k = 0; k < c.P; ++k) want.push_back(i * c.P + k);
      }
      ASSERT_EQ(row_tokens(got, c, b, h), want) << "sequence " << b << ", head " << h;
    }
  EXPECT_GT(nans, 0) << "the case has no NaN scores";
}

TEST(QuestSelectTest, ChecksSayWhatIsWrong) {
  kernels::QuestSelectProblem p;
  EXPECT_STRNE(kernels::quest_select_check(p), "");
  p.batch = p.kv_heads = p.page_size = 1, p.most = 4, p.read = 1;
  EXPECT_STREQ(kernels::quest_select_check(p), "read must be in [2, most]");
  p.read = 2;
  EXPECT_STREQ(kernels::quest_select_check(p), "a required pointer is null");
  p.page_size = 1 << 30;
  EXPECT_STREQ(kernels::quest_select_check(p), "2^31 tokens or more");
}

}  // namespace
}  // namespace kvbench
