// The GPU decode kernels against a float64 reference that attends over exactly the values
// each stored token decodes to (decode_case.h), so the only differences left are the
// kernel's fp32 arithmetic, its fast exp2 and the fp16/bf16 output: ||out - ref|| / ||ref||
// must stay under 2e-3 for every format (the output rounding alone is ~3e-4). Outputs are
// poisoned with NaN first, so an element the kernel forgets to write fails the test.
#include <gtest/gtest.h>

#include <cuda_runtime_api.h>

#include <string>
#include <vector>

#include "decode_attention.h"
#include "decode_case.h"
#include "device_buffer.h"

namespace kvbench::gpu_test {
namespace {

using kernels::KvFormat;
using Case = DecodeCase;

#define ASSERT_CUDA(expr) ASSERT_CUDA_WITH(expr, kernels::decode_last_error())

class DecodeAttentionTest : public ::testing::TestWithParam<Case> {};

TEST_P(DecodeAttentionTest, MatchesFloat64Reference) {
  std::string why;
  if (!have_gpu(&why)) GTEST_SKIP() << why;
  const Case& c = GetParam();
  const DecodeInputs in = decode_inputs(c);
  const HostPagedCache& cache = in.cache;

  DeviceBuffer dq, dout, dtable, dlens, drows, dk, dv, dkm, dvm, dkr, dvr, dks, dvs, dws;
  ASSERT_CUDA(dq.upload(in.q_bits));
  const std::vector<uint16_t> poison(in.q_bits.size(), 0xffff);  // NaN
  ASSERT_CUDA(dout.upload(poison));
  ASSERT_CUDA(dtable.upload(cache.block_table));
  ASSERT_CUDA(dlens.upload(cache.seq_lens));
  ASSERT_CUDA(drows.upload(in.rows));
  ASSERT_CUDA(dk.upload(cache.k_data));
  ASSERT_CUDA(dv.upload(cache.v_data));
  ASSERT_CUDA(dkm.upload(cache.k_meta));
  ASSERT_CUDA(dvm.upload(cache.v_meta));
  ASSERT_CUDA(dkr.upload(cache.k_residual));
  ASSERT_CUDA(dvr.upload(cache.v_residual));
  ASSERT_CUDA(dks.upload(cache.k_head_scale));
  ASSERT_CUDA(dvs.upload(cache.v_head_scale));

  kernels::DecodeProblem pr = in.problem(c, dout.ptr);
  pr.block_table = static_cast<const int*>(dtable.ptr);
  pr.seq_lens = static_cast<const int*>(dlens.ptr);
  pr.seq_rows = c.batch_rows ? nullptr : static_cast<const int*>(drows.ptr);
  pr.q = dq.ptr;
  kernels::PagedKv kv = in.kv(c);
  kv.k_data = dk.ptr, kv.v_data = dv.ptr, kv.k_meta = dkm.ptr, kv.v_meta = dvm.ptr;
  kv.k_residual = dkr.ptr, kv.v_residual = dvr.ptr;
  kv.k_head_scale = static_cast<const float*>(dks.ptr),
  kv.v_head_scale = static_cast<const float*>(dvs.ptr);
  kernels::DecodePlan plan = in.plan(c);
  ASSERT_CUDA(kernels::decode_plan(pr, kv, 132, c.force_splits, &plan));
  if (plan.workspace_bytes) ASSERT_CUDA(cudaMalloc(&dws.ptr, plan.workspace_bytes));
  ASSERT_CUDA(kernels::decode_attention(pr, kv, plan, dws.ptr, nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());
  std::vector<uint16_t> out_bits(in.q_bits.size());
  ASSERT_CUDA(cudaMemcpy(out_bits.data(), dout.ptr, out_bits.size() * 2, cudaMemcpyDeviceToHost));

  const DecodeError e = decode_error(c, in, out_bits);
  ASSERT_EQ(e.unwritten, "") << "unwritten or non-finite output";
  EXPECT_LT(e.rel, decode_tolerance(c.format))
      << "relative error " << e.rel << " with " << plan.num_splits << " splits";
}

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  const std::vector<int> lens = {1, 33, 517, 2049};  // odd lengths across page boundaries
  for (KvFormat f :
       {KvFormat::kFp16, KvFormat::kBf16, KvFormat::kInt8, KvFormat::kInt4, KvFormat::kFp8,
        KvFormat::kKivi2, KvFormat::kKivi4, KvFormat::kInt4Asym, KvFormat::kInt2}) {
    const bool kivi = kernels::is_kivi(f);
    for (int D : {64, 128})
      for (auto heads : std::vector<std::pair<int, int>>{{4, 4}, {8, 2}, {28, 4}, {16, 2}})
        for (int splits : {0, 1, 5}) {
          const int page = kivi ? 32 : (D == 64 ? 16 : 32);
          cases.push_back({f, D, heads.first, heads.second, page, kivi ? 64 : 0, lens, splits});
        }
    if (kivi) {
      cases.push_back({f, 128, 32, 8, 16, 128, {1, 100, 129, 1000}, 0});
      // Pages of 64 tokens: four tiles to a page, one value group per token at head_dim 64.
      cases.push_back({f, 64, 8, 2, 64, 64, {1, 100, 129, 1000}, 5});
    } else {
      cases.push_back({f, 128, 32, 8, 64, 0, {1, 100, 129, 1000}, 0});
    }
  }
  // The rings and scales at the batch's own rows (seq_rows null, as the bench launches).
  cases.push_back({KvFormat::kFp16, 128, 32, 8, 32, 0, {1, 100, 129, 1000}, 0});
  cases.back().batch_rows = true;
  cases.push_back({KvFormat::kKivi4, 128, 32, 8, 32, 64, {1, 100, 129, 1000}, 0});
  cases.back().batch_rows = true;
  // Every case again through the v3 (multi-tile) main loop.
  const size_t v2 = cases.size();
  for (size_t i = 0; i < v2; ++i) {
    cases.push_back(cases[i]);
    cases.back().multi_tile = true;
  }
  // And through v3 with two tiles per step where that is not the format's default (the formats
  // the acceptance names; the bench times them).
  for (size_t i = 0; i < v2; ++i) {
    const KvFormat f = cases[i].format;
    if (f != KvFormat::kFp16 && f != KvFormat::kInt4 && f != KvFormat::kKivi4 &&
        f != KvFormat::kKivi2)
      continue;
    cases.push_back(cases[i]);
    cases.back().multi_tile = true, cases.back().tiles_per_step = 2;
  }
  // And through v2 held to four blocks per multiprocessor (its own build, at most 128
  // registers: what spills is in its ptxas report), every format but KIVI's: at head_dim 128
  // every case, at 64 those split five ways.
  for (size_t i = 0; i < v2; ++i) {
    if (kernels::is_kivi(cases[i].format) ||
        (cases[i].head_dim != 128 && cases[i].force_splits != 5))
      continue;
    cases.push_back(cases[i]);
    cases.back().min_blocks = 4;
  }
  // And through v4 (staged through shared memory by cp.async), every quantized case.
  for (size_t i = 0; i < v2; ++i) {
    if (kernels::format_bits(cases[i].format) == 16) continue;
    cases.push_back(cases[i]);
    cases.back().staged = true;
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Formats, DecodeAttentionTest, ::testing::ValuesIn(all_cases()),
                         [](const ::testing::TestParamInfo<Case>& i) {
                           return case_name(i.param);
                         });

TEST(DecodePlanTest, RejectsUnsupportedShapesWithAReason) {
  kernels::DecodeProblem pr;
  pr.batch = 1, pr.q_heads = 8, pr.kv_heads = 8, pr.head_dim = 96, pr.max_seq_len = 10,
  pr.max_pages_per_seq = 1;
  kernels::PagedKv kv;
  kernels::DecodePlan plan;
  EXPECT_EQ(kernels::decode_plan(pr, kv, 132, 0, &plan), cudaErrorInvalidValue);
  EXPECT_NE(std::string(kernels::decode_last_error()).find("unsupported head_dim: 96"),
            std::string::npos);
  pr.head_dim = 128;
  kv.page_size = 24;
  EXPECT_EQ(kernels::decode_plan(pr, kv, 132, 0, &plan), cudaErrorInvalidValue);
  EXPECT_NE(std::string(kernels::decode_last_error()).find("page_size"), std::string::npos);
  // A view that starts 8 bytes into its allocation cannot be read as 16-byte vectors.
  alignas(16) static const uint16_t pool[64] = {};
  int table = 0, len = 1;
  uint16_t q[128], out[128];
  kv.page_size = 16, kv.format = KvFormat::kFp16;
  pr.q = q, pr.out = out, pr.block_table = &table, pr.seq_lens = &len;
  kv.k_data = pool, kv.v_data = pool + 4;
  EXPECT_EQ(kernels::decode_plan(pr, kv, 132, 0, &plan), cudaErrorInvalidValue);
  EXPECT_NE(std::string(kernels::decode_last_error()).find("16-byte aligned"), std::string::npos);
  kv.v_data = pool + 8;
  EXPECT_EQ(kernels::decode_plan(pr, kv, 132, 0, &plan), cudaSuccess)
      << kernels::decode_last_error();
  // Two tiles per step is a v3 option, and the only other count.
  plan.tiles_per_step = 2;
  EXPECT_EQ(kernels::decode_plan(pr, kv, 132, 0, &plan), cudaErrorInvalidValue);
  EXPECT_NE(std::string(kernels::decode_last_error()).find("tiles_per_step"), std::string::npos);
  plan.multi_tile = true, plan.tiles_per_step = 3;
  EXPECT_EQ(kernels::decode_plan(pr, kv, 132, 0, &plan), cudaErrorInvalidValue);
  plan.tiles_per_step = 2;
  EXPECT_EQ(kernels::decode_plan(pr, kv, 132, 0, &plan), cudaSuccess)
      << kernels::decode_last_error();
  // Four blocks per multiprocessor is a v2 option, and the only other bound.
  plan.min_blocks = 4;
  EXPECT_EQ(kernels::decode_plan(pr, kv, 132, 0, &plan), cudaErrorInvalidValue);
  EXPECT_NE(std::string(kernels::decode_last_error()).find("min_blocks"), std::string::npos);
  plan.multi_tile = false, plan.tiles_per_step = 0, plan.min_blocks = 3;
  EXPECT_EQ(kernels::decode_plan(pr, kv, 132, 0, &plan), cudaErrorInvalidValue);
  plan.min_blocks = 4;
  EXPECT_EQ(kernels::decode_plan(pr, kv, 132, 0, &plan), cudaSuccess)
      << kernels::decode_last_error();
  kv.format = KvFormat::kKivi2;  // not built: its v2 loop spills at that bound
  EXPECT_EQ(kernels::decode_plan(pr, kv, 132, 0, &plan), cudaErrorInvalidValue);
  EXPECT_NE(std::string(kernels::decode_last_error()).find("not built for KIVI"),
            std::string::npos);
  // v4 is a loop of its own, for the quantized formats.
  plan.min_blocks = 0, plan.staged = true;
  kv.format = KvFormat::kInt8, kv.k_meta = pool, kv.v_meta = pool;
  EXPECT_EQ(kernels::decode_plan(pr, kv, 132, 0, &plan), cudaSuccess)
      << kernels::decode_last_error();
  plan.multi_tile = true;
  EXPECT_EQ(kernels::decode_plan(pr, kv, 132, 0, &plan), cudaErrorInvalidValue);
  EXPECT_NE(std::string(kernels::decode_last_error()).find("staged"), std::string::npos);
  plan.multi_tile = false, kv.format = KvFormat::kFp16;
  EXPECT_EQ(kernels::decode_plan(pr, kv, 132, 0, &plan), cudaErrorInvalidValue);
  EXPECT_NE(std::string(kernels::decode_last_error()).find("not fp16 or bf16"), std::string::npos);
}

}  // namespace
}  // namespace kvbench::gpu_test
