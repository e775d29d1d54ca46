// Retained-index decode attention's host reference (kernels/retained_decode.h, the code the GPU
// kernel runs per lane) against float64 attention over the builder's decoded values of the
// kept tokens, for every format: random subsets in random order, GQA groups, page and window
// boundaries. Keeping every token must give ordinary decode attention. Host code; no GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "retained_case.h"
#include "retained_decode.h"

namespace kvbench::gpu_test {
namespace {

const std::vector<int> kLens = {300, 37, 129, 1};

class RetainedDecodeHostTest : public ::testing::TestWithParam<AppendCase> {};

// fp32 accumulation of up to 300 terms against float64: relative error below 1e-5 of the
// output's scale (measured ~1e-7); a wrong index, head or scale is off by order 1.
TEST_P(RetainedDecodeHostTest, MatchesFloat64AttentionOverTheKeptTokens) {
  const AppendCase& c = GetParam();
  for (double fraction : {0.3, 1.0}) {
    RetainedCase r = retained_case(c, kLens, 2, 4, fraction, 17 + int(c.format));
    std::vector<float> out(r.want.size(), NAN);  // poisoned: an unwritten output shows
    const kernels::PagedKvStore s = store_of(r.cache);
    const kernels::RetainedProblem p = r.problem(out.data());
    ASSERT_STREQ(kernels::retained_check(p, s), "");
    kernels::retained_decode_host(p, s);
    EXPECT_LT(scaled_error(out, r.want), 1e-5) << "fraction " << fraction;
  }
}

// The scores written for selection policies are each kept token's scaled score, in the kept
// order, and nothing past a sequence's kept count (poisoned entries stay NaN).
TEST_P(RetainedDecodeHostTest, WritesEachKeptTokensScore) {
  const AppendCase& c = GetParam();
  RetainedCase r = retained_case(c, kLens, 2, 4, 0.3, 23 + int(c.format));
  std::vector<float> out(r.want.size());
  const int stride = r.max_kept + 3;
  std::vector<float> scores(size_t(r.want_scores.size()) * stride, NAN);
  kernels::RetainedProblem p = r.problem(out.data());
  p.scores = scores.data(), p.score_stride = stride;
  const kernels::PagedKvStore s = store_of(r.cache);
  ASSERT_STREQ(kernels::retained_check(p, s), "");
  kernels::retained_decode_host(p, s);
  for (size_t row = 0; row < r.want_scores.size(); ++row) {
    const std::vector<double>& want = r.want_scores[row];
    for (int i = 0; i < stride; ++i) {
      const float got = scores[row * stride + size_t(i)];
      if (i >= int(want.size())) {
        ASSERT_TRUE(std::isnan(got)) << "row " << row << " entry " << i << " past the kept count";
      } else {
        ASSERT_NEAR(got, want[size_t(i)], 1e-5 * std::max(1.0, std::fabs(want[size_t(i)])))
            << "row " << row << " kept token " << i;
      }
    }
  }
}

// The kept subset matters: the same problem with one head's subset swapped for another head's
// is far off, so the bound above separates right from wrong.
TEST_P(RetainedDecodeHostTest, AnotherSubsetGivesAnotherAnswer) {
  const AppendCase& c = GetParam();
  RetainedCase r = retained_case(c, kLens, 2, 2, 0.3, 5 + int(c.format));
  const int m = r.counts[0];
  ASSERT_GT(m, 10);
  std::swap_ranges(r.lists[0].begin(), r.lists[0].begin() + m, r.lists[0].begin() + m);
  std::vector<float> out(r.want.size());
  kernels::PagedKvStore s = store_of(r.cache);
  kernels::retained_decode_host(r.problem(out.data()), s);
  EXPECT_GT(scaled_error(out, r.want), 1e-2);
}

INSTANTIATE_TEST_SUITE_P(Formats, RetainedDecodeHostTest, ::testing::ValuesIn(append_cases()),
                         [](const ::testing::TestParamInfo<AppendCase>& i) {
                           return append_case_name(i.param);
                         });

TEST(RetainedCheckTest, SaysWhatIsWrong) {
  int i = 0;
  float f = 0;
  alignas(8) uint8_t pool[16] = {};
  kernels::RetainedProblem p;
  const int* list = &i;
  p.batch = 1, p.q_heads = 6, p.kv_heads = 4, p.head_dim = 128, p.max_pages_per_seq = 1;
  p.block_table = p.seq_lens = p.kept_counts = p.tail_start = &i;
  p.kept_lists = &list, p.q = &f, p.out = &f;
  kernels::PagedKvStore s;
  s.k_data = s.v_data = pool;
  EXPECT_STREQ(kernels::retained_check(p, s), "q_heads must be a multiple of kv_heads");
  p.q_heads = 8;
  EXPECT_STREQ(kernels::retained_check(p, s), "");
  p.head_dim = 256;
  EXPECT_STREQ(kernels::retained_check(p, s), "head_dim must be 32, 64, 96 or 128");
  p.head_dim = 64, p.scores = &f;
  EXPECT_STREQ(kernels::retained_check(p, s), "scores need score_stride >= every kept count");
  p.scores = nullptr;
  for (const int tokens : {2, 4}) {
    p.tokens_per_step = tokens;
    EXPECT_STREQ(kernels::retained_check(p, s), "");
  }
  s.k_data = pool + 4;  // a view 4 bytes into its pool: the one-token loop only
  EXPECT_STREQ(kernels::retained_check(p, s),
               "2 or 4 tokens per step need pools on 8-byte boundaries");
  s.k_data = pool;
  for (const int tokens : {0, 3, 8}) {
    p.tokens_per_step = tokens;
    EXPECT_STREQ(kernels::retained_check(p, s), "tokens_per_step must be 1, 2 or 4");
  }
  p.tokens_per_step = 1, p.kept_lists = nullptr;
  EXPECT_STREQ(kernels::retained_check(p, s), "a required pointer is null");
}

}  // namespace
}  // namespace kvbench::gpu_test
