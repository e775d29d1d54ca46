// Quantize-on-append's host reference (kernels/kv_append.h, the code the GPU appender runs)
// against the independent paged-cache builder (tests/gpu/paged_cache_builder.cpp, itself
// checked against the CPU codecs by gpu_format_test): a cache appended chunk by chunk, over
// calls that mix prefills and decode steps of different sequences, must hold exactly the
// bytes the builder writes from the whole sequences at once, and decode (kv_paged_decode.h)
// to the values the builder records. Host code; runs without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <functional>
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

// Appends one call's tokens into `got`'s pools (store: their pointers).
using Appender = std::function<void(const kernels::AppendProblem& p,
                                    const kernels::PagedKvStore& store, HostPagedCache& got)>;

// A cache appended chunk by chunk by `append`, over calls mixing prefills and decode chunks,
// holds the builder's bytes and decodes to its values.
void check_chunked_appends(const AppendCase& c, const Appender& append) {
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
    append(p, store, got);
    if (::testing::Test::HasFatalFailure()) return;
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

TEST_P(KvAppendHostTest, ChunkedAppendsWriteTheBuildersBytes) {
  check_chunked_appends(GetParam(),
                        [](const kernels::AppendProblem& p, const kernels::PagedKvStore& store,
                           HostPagedCache&) { kernels::append_kv_host(p, store); });
}

// The pools' bytes, to see what a thread wrote.
std::vector<std::vector<uint8_t>> pool_bytes(const HostPagedCache& c) {
  return {c.k_data, c.v_data, c.k_meta, c.v_meta, c.k_residual, c.v_residual};
}

// kernels::append_kv as the CUDA launcher launches it (append::blocks_x, kThreads, the grid-
// stride loop of append::run_thread), each phase's threads run one at a time in a shuffled
// order; `narrow`: only 5 threads along x, so that each takes several units as the stride
// loop does past 1024 blocks. In calls of up to 3 tokens per sequence, every byte a thread
// changes is checked to be changed by no other thread of its phase (on a GPU they run at
// once: a shared byte would be a race). A write of the value a byte already holds is not
// seen: a race between such a write and another is missed.
void append_as_launched(const kernels::AppendProblem& p, const kernels::PagedKvStore& store,
                        HostPagedCache& got, std::mt19937& rng, bool narrow) {
  namespace ap = kernels::append;
  const bool watch = p.max_new <= 3;
  for (int phase = 0; phase < 2; ++phase) {
    const int blocks = ap::blocks_x(p, store, phase);
    for (int b = 0; b < p.batch && blocks == 0; ++b)
      ASSERT_EQ(ap::unit_count(p, store, phase, b), 0) << "phase " << phase << " not launched";
    const int threads_x = narrow ? std::min(5, blocks * ap::kThreads) : blocks * ap::kThreads;
    struct Thread {
      int b, h, x;
    };
    std::vector<Thread> threads;  // those with a unit (the others return at once)
    for (int b = 0; b < p.batch; ++b)
      for (int h = 0; h < p.kv_heads; ++h)
        for (int x = 0; x < std::min(threads_x, ap::unit_count(p, store, phase, b)); ++x)
          threads.push_back({b, h, x});
    std::shuffle(threads.begin(), threads.end(), rng);
    std::vector<std::vector<int>> owner;  // per pool byte: the thread that changed it, or -1
    std::vector<std::vector<uint8_t>> before;
    if (watch) {
      before = pool_bytes(got);
      for (const auto& pool : before) owner.emplace_back(pool.size(), -1);
    }
    for (size_t i = 0; i < threads.size(); ++i) {
      const Thread& t = threads[i];
      ap::run_thread(p, store, phase, t.b, t.h, t.x, threads_x);
      if (!watch) continue;
      const std::vector<std::vector<uint8_t>> after = pool_bytes(got);
      for (size_t k = 0; k < after.size(); ++k)
        for (size_t j = 0; j < after[k].size(); ++j) {
          if (after[k][j] == before[k][j]) continue;
          ASSERT_LT(owner[k][j], 0) << "pool " << k << " byte " << j << " written by two threads"
                                    << " of phase " << phase;
          owner[k][j] = int(i);
        }
      before = after;
    }
  }
}

// The launch's threads in any order write what the host reference writes: units of a phase
// neither share a byte nor read one another's. Every other call narrow (the stride loop).
TEST_P(KvAppendHostTest, ThreadsInAnyOrderWriteTheBuildersBytes) {
  std::mt19937 rng(5 + int(GetParam().format));
  int calls = 0;
  check_chunked_appends(GetParam(), [&](const kernels::AppendProblem& p,
                                        const kernels::PagedKvStore& store, HostPagedCache& got) {
    append_as_launched(p, store, got, rng, ++calls % 2 == 0);
  });
}

// Launch sizes: max_unit_count, which sizes the grid, bounds every sequence's unit_count (so
// below 1024 blocks each unit has a thread of its own, and a phase with units is launched) at
// lengths around page and window boundaries, chunks of 0 to past two windows.
TEST(KvAppendUnitsTest, TheLaunchCoversEverySequencesUnits) {
  namespace ap = kernels::append;
  for (const AppendCase& c : append_cases()) {
    SCOPED_TRACE(append_case_name(c));
    const int W = c.residual > 0 ? c.residual : 64;
    kernels::PagedKvStore s;
    s.format = c.format, s.page_size = c.page_size, s.residual = c.residual;
    for (int t0 = 0; t0 <= 3 * W + 1; ++t0)
      for (int n = 0; n <= 2 * W + c.page_size + 1; ++n) {
        const int cu[2] = {0, n};
        kernels::AppendProblem p;
        p.batch = 1, p.kv_heads = 1, p.head_dim = c.head_dim, p.max_new = n;
        p.old_lens = &t0, p.cu_new = cu;
        for (int phase = 0; phase < 2; ++phase)
          ASSERT_LE(ap::unit_count(p, s, phase, 0), ap::max_unit_count(p, s, phase))
              << "phase " << phase << ", " << t0 << " held, " << n << " new";
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
