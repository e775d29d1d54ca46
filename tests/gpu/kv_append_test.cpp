// The GPU appender (kernels/kv_append.cu) against its host reference (kv_append.h, itself
// checked byte for byte against the paged-cache builder by tests/unit/kv_append_test.cpp):
// the same calls (prefills and decode chunks of several sequences) on pools poisoned with
// 0xff must leave identical bytes, codes, scales and rings alike; the device dequantizer
// (prefill's reader) must return exactly the host decoder's values. Skips without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "append_schedule.h"
#include "device_buffer.h"
#include "device_pools.h"
#include "kv_append_launcher.h"
#include "kv_paged_decode.h"
#include "kv_paged_decode_launcher.h"
#include "paged_cache_builder.h"

namespace kvbench::gpu_test {
namespace {

using kernels::KvFormat;

#define ASSERT_CUDA(expr) ASSERT_CUDA_WITH(expr, kernels::append_last_error())

class KvAppendGpuTest : public ::testing::TestWithParam<AppendCase> {};

TEST_P(KvAppendGpuTest, MatchesTheHostAppenderByteForByte) {
  std::string why;
  if (!have_gpu(&why)) GTEST_SKIP() << why;
  const AppendCase& c = GetParam();
  const int kv_heads = 4, D = c.head_dim, P = c.page_size, R = c.residual;
  const bool bf16 = c.format == KvFormat::kBf16;
  const int W = R > 0 ? R : 64;  // lengths around the window (pages when there is none)
  const std::vector<int> lens = {1000, 37, 2 * W + 1, W, 1, 3 * W - 1, 513};
  const std::vector<int> prefill = {900, 0, W + 5, 3, 1, 0, 512};
  std::mt19937 rng(29 + int(c.format) * 5 + D);
  const SequenceTokens x = rounded_tokens(rng, lens, kv_heads, D, bf16);
  const auto &keys = x.keys, &values = x.values;
  HostPagedCache host = build_paged_cache(c.format, kv_heads, D, P, R, keys, values, lens, rng);
  const std::vector<int> rows = reversed_rows(int(lens.size()));  // exercises seq_rows
  move_rows(host, rows);
  poison(host);
  HostPagedCache device_result = host;  // poisoned copies of the same pools

  DevicePools pools;
  kernels::PagedKvStore dev;
  ASSERT_CUDA(pools.upload(host, &dev));
  DeviceBuffer table, seq_rows;
  ASSERT_CUDA(table.upload(host.block_table));
  ASSERT_CUDA(seq_rows.upload(rows));

  const kernels::PagedKvStore on_host = store_of(host);
  for (const AppendCall& call : append_schedule(keys, values, lens, prefill, kv_heads, D, bf16)) {
    kernels::AppendProblem p = problem_of(call, host);
    p.seq_rows = rows.data();
    kernels::append_kv_host(p, on_host);
    DeviceBuffer old_lens, cu_new, k, v;
    ASSERT_CUDA(old_lens.upload(call.old_lens));
    ASSERT_CUDA(cu_new.upload(call.cu_new));
    ASSERT_CUDA(k.upload(call.k));
    ASSERT_CUDA(v.upload(call.v));
    kernels::AppendProblem dp = p;
    dp.block_table = static_cast<const int*>(table.ptr);
    dp.old_lens = static_cast<const int*>(old_lens.ptr);
    dp.cu_new = static_cast<const int*>(cu_new.ptr);
    dp.seq_rows = static_cast<const int*>(seq_rows.ptr);
    dp.k = k.ptr, dp.v = v.ptr;
    ASSERT_CUDA(kernels::append_kv(dp, dev, nullptr));
    ASSERT_CUDA(cudaDeviceSynchronize());  // the inputs are freed at the end of the loop body
  }
  ASSERT_CUDA(pools.download(device_result));
  EXPECT_TRUE(device_result.k_data == host.k_data) << "key codes differ";
  EXPECT_TRUE(device_result.v_data == host.v_data) << "value codes differ";
  EXPECT_TRUE(device_result.k_meta == host.k_meta) << "key scales differ";
  EXPECT_TRUE(device_result.v_meta == host.v_meta) << "value scales differ";
  EXPECT_TRUE(device_result.k_residual == host.k_residual) << "key rings differ";
  EXPECT_TRUE(device_result.v_residual == host.v_residual) << "value rings differ";

  // The device dequantizer reads back exactly what the host decoder does.
  for (int b = 0; b < int(lens.size()); ++b) {
    const int T = lens[b];
    DeviceBuffer k_out, v_out;
    std::vector<float> k_got(size_t(kv_heads) * T * D, NAN), v_got(k_got);
    ASSERT_CUDA(k_out.upload(k_got));  // NaN poison
    ASSERT_CUDA(v_out.upload(v_got));
    ASSERT_CUDA(kernels::dequantize_paged(
        dev, static_cast<const int*>(table.ptr) + b * host.max_pages, kv_heads, D, rows[b], T,
        static_cast<float*>(k_out.ptr), static_cast<float*>(v_out.ptr), nullptr));
    ASSERT_CUDA(k_out.download(k_got));
    ASSERT_CUDA(v_out.download(v_got));
    std::vector<float> want(D);
    for (bool key : {true, false})
      for (int h = 0; h < kv_heads; ++h)
        for (int t = 0; t < T; ++t) {
          kernels::decode_paged_token(on_host, host.block_table.data() + b * host.max_pages,
                                      kv_heads, D, rows[b], key, h, t, T, want.data());
          const float* got = (key ? k_got : v_got).data() + (size_t(h) * T + t) * D;
          for (int d = 0; d < D; ++d)
            ASSERT_EQ(got[d], want[d]) << (key ? "key" : "value") << " of seq " << b << " head "
                                       << h << " token " << t << " channel " << d;
        }
  }
}

INSTANTIATE_TEST_SUITE_P(Formats, KvAppendGpuTest, ::testing::ValuesIn(append_cases()),
                         [](const ::testing::TestParamInfo<AppendCase>& i) {
                           return append_case_name(i.param);
                         });

TEST(KvAppendLaunchTest, RejectsBadShapesWithAReason) {
  kernels::AppendProblem p;
  p.batch = 1, p.kv_heads = 1, p.head_dim = 96;
  kernels::PagedKvStore s;
  EXPECT_EQ(kernels::append_kv(p, s, nullptr), cudaErrorInvalidValue);
  EXPECT_STRNE(kernels::append_last_error(), "");
}

}  // namespace
}  // namespace kvbench::gpu_test
