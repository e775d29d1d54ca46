// Retained-index decode attention on the GPU (kernels/retained_decode.cu) against its host
// reference (retained_decode.h, checked against float64 by tests/unit/retained_decode_test.cpp)
// and float64 itself: every format, GQA group 4, random kept subsets in random order, the
// output poisoned with NaN first. The lanes' partial softmaxes merge in another order than the
// host's single pass, so the bound is relative (1e-5 of the output's scale), not bitwise.
// Skips without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "device_buffer.h"
#include "device_pools.h"
#include "retained_case.h"
#include "retained_decode_launcher.h"

namespace kvbench::gpu_test {
namespace {

#define ASSERT_CUDA(expr) ASSERT_CUDA_WITH(expr, "")

class RetainedDecodeGpuTest : public ::testing::TestWithParam<AppendCase> {};

// A case's pools, tables, lists and fp32 queries on the device.
struct DeviceRetained {
  DevicePools pools;
  kernels::PagedKvStore store;
  DeviceBuffer table, lens, rows, counts, tails, pointers, q;
  std::vector<DeviceBuffer> lists;  // each sequence's in its own allocation, as the cache's

  cudaError_t upload(RetainedCase& r) {
    std::vector<const int*> list_ptrs;
    lists = std::vector<DeviceBuffer>(r.lists.size());
    for (size_t b = 0; b < r.lists.size(); ++b) {
      if (cudaError_t e = lists[b].upload(r.lists[b]); e != cudaSuccess) return e;
      list_ptrs.push_back(static_cast<const int*>(lists[b].ptr));
    }
    for (cudaError_t e :
         {pools.upload(r.cache, &store), table.upload(r.cache.block_table),
          lens.upload(r.cache.seq_lens), rows.upload(r.rows), counts.upload(r.counts),
          tails.upload(r.tails), pointers.upload(list_ptrs), q.upload(r.q)})
      if (e != cudaSuccess) return e;
    return cudaSuccess;
  }

  // r's problem over these buffers, `tokens` per warp step, writing fp32 to `out`.
  kernels::RetainedProblem problem(const RetainedCase& r, int tokens, float* out) const {
    kernels::RetainedProblem p = r.problem(out);
    p.tokens_per_step = tokens;
    p.block_table = static_cast<const int*>(table.ptr);
    p.seq_lens = static_cast<const int*>(lens.ptr);
    p.seq_rows = static_cast<const int*>(rows.ptr);
    p.kept_lists = static_cast<const int* const*>(pointers.ptr);
    p.kept_counts = static_cast<const int*>(counts.ptr);
    p.tail_start = static_cast<const int*>(tails.ptr);
    p.q = static_cast<const float*>(q.ptr);
    return p;
  }
};

TEST_P(RetainedDecodeGpuTest, MatchesTheHostReference) {
  std::string why;
  if (!have_gpu(&why)) GTEST_SKIP() << why;
  const AppendCase& c = GetParam();
  RetainedCase r = retained_case(c, {1000, 37, 129, 1, 513}, 2, 4, 0.25, 41 + int(c.format));
  std::vector<float> host_out(r.want.size());
  const kernels::PagedKvStore on_host = store_of(r.cache);
  kernels::retained_decode_host(r.problem(host_out.data()), on_host);

  DeviceRetained on;
  ASSERT_CUDA(on.upload(r));
  const kernels::PagedKvStore& dev = on.store;
  DeviceBuffer out, scores;
  // Every main loop: one token's loads per warp step, two, four (tokens_per_step).
  for (const int tokens : {1, 2, 4}) {
    SCOPED_TRACE("tokens_per_step " + std::to_string(tokens));
    std::vector<float> got(r.want.size(), NAN);
    ASSERT_CUDA(out.upload(got));
    kernels::RetainedProblem p = on.problem(r, tokens, static_cast<float*>(out.ptr));
    // The scores for selection policies too, poisoned: entries past a kept count stay NaN.
    const int stride = r.max_kept + 3;
    std::vector<float> got_scores(r.want_scores.size() * size_t(stride), NAN);
    ASSERT_CUDA(scores.upload(got_scores));
    p.scores = static_cast<float*>(scores.ptr), p.score_stride = stride;
    ASSERT_CUDA(kernels::retained_decode(p, dev, nullptr));
    ASSERT_CUDA(cudaDeviceSynchronize());
    ASSERT_CUDA(out.download(got));
    ASSERT_CUDA(scores.download(got_scores));
    for (size_t row = 0; row < r.want_scores.size(); ++row)
      for (int i = 0; i < stride; ++i) {
        const float g = got_scores[row * stride + size_t(i)];
        if (i >= int(r.want_scores[row].size())) {
          ASSERT_TRUE(std::isnan(g)) << "row " << row << " entry " << i << " past the kept count";
        } else {
          const double w = r.want_scores[row][size_t(i)];
          ASSERT_NEAR(g, w, 1e-5 * std::max(1.0, std::fabs(w))) << "row " << row << " token " << i;
        }
      }
    std::vector<double> host_d(host_out.begin(), host_out.end());
    EXPECT_LT(scaled_error(got, host_d), 1e-5);
    EXPECT_LT(scaled_error(got, r.want), 1e-5);
  }
}

// 16-bit queries and outputs, as the paged cache hands the model's own: each output is the
// kernel's fp32 output over the same query values rounded once, bit for bit (the same code in
// the same order), every loop; bf16 queries with the bf16 format, fp16 with the others.
TEST_P(RetainedDecodeGpuTest, SixteenBitQueriesGiveTheFp32OutputsRounded) {
  std::string why;
  if (!have_gpu(&why)) GTEST_SKIP() << why;
  const AppendCase& c = GetParam();
  const bool bf16 = c.format == kernels::KvFormat::kBf16;
  RetainedCase r = retained_case(c, {1000, 37, 129, 1, 513}, 2, 4, 0.25, 53 + int(c.format));
  const std::vector<uint16_t> q16 = bits16(r.q, bf16);
  r.q = values16(q16, bf16);
  DeviceRetained on;
  ASSERT_CUDA(on.upload(r));
  const kernels::PagedKvStore& dev = on.store;
  DeviceBuffer q_half, out, out_half;
  ASSERT_CUDA(q_half.upload(q16));
  for (const int tokens : {1, 2, 4}) {
    SCOPED_TRACE("tokens_per_step " + std::to_string(tokens));
    std::vector<float> got32(r.want.size(), NAN);
    std::vector<uint16_t> got16(r.want.size(), 0xffff);
    ASSERT_CUDA(out.upload(got32));
    ASSERT_CUDA(out_half.upload(got16));
    kernels::RetainedProblem p = on.problem(r, tokens, static_cast<float*>(out.ptr));
    ASSERT_CUDA(kernels::retained_decode(p, dev, nullptr));
    use_16_bit(p, static_cast<const uint16_t*>(q_half.ptr), static_cast<uint16_t*>(out_half.ptr),
               bf16);
    ASSERT_CUDA(kernels::retained_decode(p, dev, nullptr));
    ASSERT_CUDA(cudaDeviceSynchronize());
    ASSERT_CUDA(out.download(got32));
    ASSERT_CUDA(out_half.download(got16));
    expect_rounded(got32, got16, bf16);
  }
}

// The appender's cases, and the 16-bit formats at the other head_dim too: the multi-token loop
// reads their rows with a load of its own per head_dim (8 bytes a lane at 128, 4 at 64).
std::vector<AppendCase> retained_cases() {
  std::vector<AppendCase> cases = append_cases();
  cases.push_back({kernels::KvFormat::kFp16, 64, 32, 0});
  cases.push_back({kernels::KvFormat::kBf16, 128, 16, 0});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Formats, RetainedDecodeGpuTest, ::testing::ValuesIn(retained_cases()),
                         [](const ::testing::TestParamInfo<AppendCase>& i) {
                           return append_case_name(i.param);
                         });

TEST(RetainedDecodeLaunchTest, RejectsBadShapes) {
  kernels::RetainedProblem p;
  p.batch = 1, p.q_heads = 3, p.kv_heads = 2, p.head_dim = 128;
  EXPECT_EQ(kernels::retained_decode(p, kernels::PagedKvStore{}, nullptr), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace kvbench::gpu_test
