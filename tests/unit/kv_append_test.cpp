// Quantize-on-append's host reference (kernels/kv_append.h, the code the GPU appender runs)
// against the independent paged-cache builder (tests/gpu/paged_cache_builder.cpp, itself
// checked against the CPU codecs by gpu_format_test): a cache appended chunk by chunk, over
// calls that mix prefills and decode steps of different sequences, must hold exactly the
// bytes the builder writes from the whole sequences at once, and decode (kv_paged_decode.h)
// to the values the builder records. Host code; runs without a GPU.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "append_schedule.h"
#include "kv_append.h"
#include "kv_paged_decode.h"
#include "paged_cache_builder.h"

namespace kvbench::gpu_test {
namespace {

using kernels::KvFormat;

class KvAppendHostTest : public ::testing::TestWithParam<AppendCase> {};

TEST_P(KvAppendHostTest, ChunkedAppendsWriteTheBuildersBytes) {
  const AppendCase& c = GetParam();
  const int kv_heads = 2, D = c.head_dim, P = c.page_size, R = c.residual;
  const bool kivi = kernels::is_kivi(c.format), bf16 = c.format == KvFormat::kBf16;
  // Lengths around page and window boundaries; prefills of 0, inside the window, past it.
  const int W = R > 0 ? R : 64;
  const std::vector<int> lens = {300, 37, 2 * W + 1, W, 1}, prefill = {0, 37, W + 5, 3, 1};
  std::mt19937 rng(11 + int(c.format) * 3 + D);
  const SequenceTokens x = rounded_tokens(rng, lens, kv_heads, D, bf16);
  const auto &keys = x.keys, &values = x.values;
  const HostPagedCache want =
      build_paged_cache(c.format, kv_heads, D, P, R, keys, values, lens, rng);

  // The same pools, poisoned the same way, filled by appends instead; each sequence's ring
  // and fp8 scale row is the reverse of its batch index (AppendProblem::seq_rows).
  const std::vector<int> rows = reversed_rows(int(lens.size()));
  HostPagedCache got = want;
  move_rows(got, rows);
  poison(got);
  const kernels::PagedKvStore store = store_of(got);
  const auto calls = append_schedule(keys, values, lens, prefill, kv_heads, D, bf16);
  ASSERT_GT(calls.size(), 10u);  // many calls, mixing prefills and decode chunks
  for (const AppendCall& call : calls) {
    kernels::AppendProblem p = problem_of(call, want);
    p.seq_rows = rows.data();
    ASSERT_STREQ(kernels::append_check(p, store), "");
    kernels::append_kv_host(p, store);
  }

  EXPECT_TRUE(got.k_data == want.k_data) << "key codes differ";
  EXPECT_TRUE(got.v_data == want.v_data) << "value codes differ";
  EXPECT_TRUE(got.k_meta == want.k_meta) << "key scales differ";
  EXPECT_TRUE(got.v_meta == want.v_meta) << "value scales differ";
  // Every stored token decodes to what the builder says it does (the CPU paged cache's input).
  std::vector<float> row(D);
  for (int b = 0; b < int(lens.size()); ++b)
    for (bool key : {true, false})
      for (int h = 0; h < kv_heads; ++h)
        for (int t = 0; t < lens[b]; ++t) {
          kernels::decode_paged_token(store, want.block_table.data() + b * want.max_pages, kv_heads,
                                      D, rows[b], key, h, t, lens[b], row.data());
          const float* w =
              (key ? want.k_decoded : want.v_decoded)[b].data() + (size_t(h) * lens[b] + t) * D;
          for (int d = 0; d < D; ++d)
            ASSERT_EQ(row[d], w[d]) << (key ? "key" : "value") << " of seq " << b << " head " << h
                                    << " token " << t << " channel " << d;
          // A warp's lanes decode a token in channel slices (the retained-index kernel): the
          // slices put together are the row.
          for (int d0 = 0; d0 < D; d0 += D / 32) {
            float part[4];
            kernels::decode_paged_channels(store, want.block_table.data() + b * want.max_pages,
                                           kv_heads, D, rows[b], key, h, t, lens[b], d0,
                                           d0 + D / 32, part);
            for (int j = 0; j < D / 32; ++j)
              ASSERT_EQ(part[j], row[d0 + j]) << "slice at channel " << d0 + j << " token " << t;
          }
        }
  if (!kivi) return;
  // Ring slots of tokens still in the window (others hold tokens that have left it).
  for (int b = 0; b < int(lens.size()); ++b) {
    const int T = lens[b];
    for (bool key : {true, false})
      for (int t = key ? T - T % R : std::max(0, T - R); t < T; ++t)
        for (int h = 0; h < kv_heads; ++h) {
          const size_t off = ((size_t(b) * kv_heads + h) * R + t % R) * D * 2;
          const size_t got_off = ((size_t(rows[b]) * kv_heads + h) * R + t % R) * D * 2;
          const auto& g = key ? got.k_residual : got.v_residual;
          const auto& w = key ? want.k_residual : want.v_residual;
          ASSERT_EQ(std::memcmp(g.data() + got_off, w.data() + off, D * 2), 0)
              << (key ? "key" : "value") << " ring of seq " << b << " token " << t;
        }
  }
}

INSTANTIATE_TEST_SUITE_P(Formats, KvAppendHostTest, ::testing::ValuesIn(append_cases()),
                         [](const ::testing::TestParamInfo<AppendCase>& i) {
                           return append_case_name(i.param);
                         });

TEST(KvAppendCheckTest, SaysWhatIsWrong) {
  int table = 0, lens = 0, cu[2] = {0, 1};
  uint16_t x[128] = {};
  uint8_t pool[1] = {};
  kernels::AppendProblem p;
  p.batch = 1, p.kv_heads = 1, p.head_dim = 80, p.max_pages_per_seq = 1, p.max_new = 1;
  p.block_table = &table, p.old_lens = &lens, p.cu_new = cu, p.k = x, p.v = x;
  kernels::PagedKvStore s;
  s.format = KvFormat::kKivi2, s.page_size = 32, s.residual = 48;
  s.k_data = s.v_data = s.k_meta = s.v_meta = s.k_residual = s.v_residual = pool;
  EXPECT_STREQ(kernels::append_check(p, s), "head_dim must be a positive multiple of 32");
  p.head_dim = 128;
  EXPECT_NE(std::string(kernels::append_check(p, s)).find("residual"), std::string::npos);
  s.residual = 64;
  EXPECT_STREQ(kernels::append_check(p, s), "");
  s.format = KvFormat::kFp8;
  EXPECT_NE(std::string(kernels::append_check(p, s)).find("fp8"), std::string::npos);
}

}  // namespace
}  // namespace kvbench::gpu_test
