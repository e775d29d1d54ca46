// The GPU decode kernels against a float64 reference that attends over exactly the values
// each stored token decodes to (paged_cache_builder), so the only differences left are the
// kernel's fp32 arithmetic, its fast exp2 and the fp16/bf16 output: ||out - ref|| / ||ref||
// must stay under 2e-3 for every format (the output rounding alone is ~3e-4). Outputs are
// poisoned with NaN first, so an element the kernel forgets to write fails the test.
#include <gtest/gtest.h>

#include <cuda_runtime_api.h>

#include <cmath>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "decode_attention.h"
#include "device_buffer.h"
#include "paged_cache_builder.h"

namespace kvbench::gpu_test {
namespace {

using kernels::KvFormat;

#define ASSERT_CUDA(expr) ASSERT_CUDA_WITH(expr, kernels::decode_last_error())

struct Case {
  KvFormat format;
  int head_dim, q_heads, kv_heads, page_size, residual;
  std::vector<int> seq_lens;
  int force_splits;         // 0: the plan's choice
  bool multi_tile = false;  // the v3 main loop (DecodePlan::multi_tile)
  int min_blocks = 0;       // 4: v2 at four blocks per multiprocessor ("v2b")
  int tiles_per_step = 0;   // v3's (DecodePlan::tiles_per_step): 2 is "v3h"
  bool batch_rows = false;  // no seq_rows: sequence b's rings and scales at row b
};

std::string case_name(const Case& c) {
  std::string n = std::string(kernels::format_name(c.format)) + "_d" + std::to_string(c.head_dim) +
                  "_h" + std::to_string(c.q_heads) + "x" + std::to_string(c.kv_heads) + "_p" +
                  std::to_string(c.page_size);
  if (c.residual) n += "_r" + std::to_string(c.residual);
  n += "_s" + std::to_string(c.force_splits);
  if (c.batch_rows) n += "_norows";
  if (c.multi_tile) n += c.tiles_per_step == 2 ? "_v3h" : "_v3";
  if (c.min_blocks == 4) n += "_v2b";
  for (char& ch : n)
    if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return n;
}

// gtest prints parameters in test listings; a vector member would print as raw bytes.
void PrintTo(const Case& c, std::ostream* os) { *os << case_name(c); }

class DecodeAttentionTest : public ::testing::TestWithParam<Case> {};

TEST_P(DecodeAttentionTest, MatchesFloat64Reference) {
  std::string why;
  if (!have_gpu(&why)) GTEST_SKIP() << why;
  const Case& c = GetParam();
  const int B = int(c.seq_lens.size()), D = c.head_dim, group = c.q_heads / c.kv_heads;
  std::mt19937 rng(1234 + int(c.format) * 7 + D + c.q_heads);
  std::vector<std::vector<float>> keys, values;
  for (int T : c.seq_lens) {
    keys.push_back(random_tokens(rng, c.kv_heads, T, D, true));
    values.push_back(random_tokens(rng, c.kv_heads, T, D, false));
  }
  HostPagedCache cache = build_paged_cache(c.format, c.kv_heads, D, c.page_size, c.residual, keys,
                                           values, c.seq_lens, rng);
  // Rings and scales not in batch order, unless the case reads them at the batch's rows.
  const std::vector<int> rows = reversed_rows(B);
  if (!c.batch_rows) move_rows(cache, rows);
  const bool bf16 = c.format == KvFormat::kBf16;
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<uint16_t> q_bits(size_t(B) * c.q_heads * D);
  std::vector<float> q(q_bits.size());
  for (size_t i = 0; i < q.size(); ++i) {
    const float x = normal(rng);
    q_bits[i] = bf16 ? float_to_bf16_bits(x) : float_to_half_bits(x);
    q[i] = bf16 ? bf16_bits_to_float(q_bits[i]) : half_bits_to_float(q_bits[i]);
  }

  DeviceBuffer dq, dout, dtable, dlens, dk, dv, dkm, dvm, dkr, dvr, dks, dvs, dws;
  ASSERT_CUDA(dq.upload(q_bits));
  ASSERT_CUDA(dout.upload(std::vector<uint16_t>(q_bits.size(), 0xffff)));  // NaN poison
  ASSERT_CUDA(dtable.upload(cache.block_table));
  ASSERT_CUDA(dlens.upload(cache.seq_lens));
  DeviceBuffer drows;
  ASSERT_CUDA(drows.upload(rows));
  ASSERT_CUDA(dk.upload(cache.k_data));
  ASSERT_CUDA(dv.upload(cache.v_data));
  ASSERT_CUDA(dkm.upload(cache.k_meta));
  ASSERT_CUDA(dvm.upload(cache.v_meta));
  ASSERT_CUDA(dkr.upload(cache.k_residual));
  ASSERT_CUDA(dvr.upload(cache.v_residual));
  ASSERT_CUDA(dks.upload(cache.k_head_scale));
  ASSERT_CUDA(dvs.upload(cache.v_head_scale));

  kernels::DecodeProblem pr;
  pr.batch = B, pr.q_heads = c.q_heads, pr.kv_heads = c.kv_heads, pr.head_dim = D;
  pr.max_pages_per_seq = cache.max_pages;
  for (int T : c.seq_lens) pr.max_seq_len = std::max(pr.max_seq_len, T);
  pr.block_table = static_cast<const int*>(dtable.ptr);
  pr.seq_lens = static_cast<const int*>(dlens.ptr);
  pr.seq_rows = c.batch_rows ? nullptr : static_cast<const int*>(drows.ptr);
  pr.softmax_scale = 1.f / std::sqrt(float(D));
  pr.q = dq.ptr, pr.out = dout.ptr;
  kernels::PagedKv kv;
  kv.format = c.format, kv.page_size = c.page_size, kv.residual = c.residual;
  kv.k_data = dk.ptr, kv.v_data = dv.ptr, kv.k_meta = dkm.ptr, kv.v_meta = dvm.ptr;
  kv.k_residual = dkr.ptr, kv.v_residual = dvr.ptr;
  kv.k_head_scale = static_cast<const float*>(dks.ptr),
  kv.v_head_scale = static_cast<const float*>(dvs.ptr);
  kernels::DecodePlan plan;
  plan.multi_tile = c.multi_tile, plan.tiles_per_step = c.tiles_per_step;
  plan.min_blocks = c.min_blocks;
  ASSERT_CUDA(kernels::decode_plan(pr, kv, 132, c.force_splits, &plan));
  if (plan.workspace_bytes) ASSERT_CUDA(cudaMalloc(&dws.ptr, plan.workspace_bytes));
  ASSERT_CUDA(kernels::decode_attention(pr, kv, plan, dws.ptr, nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());
  std::vector<uint16_t> out_bits(q_bits.size());
  ASSERT_CUDA(cudaMemcpy(out_bits.data(), dout.ptr, out_bits.size() * 2, cudaMemcpyDeviceToHost));

  double err2 = 0, ref2 = 0;
  for (int b = 0; b < B; ++b) {
    const int T = c.seq_lens[b];
    for (int hq = 0; hq < c.q_heads; ++hq) {
      const int h = hq / group;
      const float* qv = q.data() + (size_t(b) * c.q_heads + hq) * D;
      const float* K = cache.k_decoded[b].data() + size_t(h) * T * D;
      const float* V = cache.v_decoded[b].data() + size_t(h) * T * D;
      std::vector<double> s(T);
      double mx = -INFINITY;
      for (int t = 0; t < T; ++t) {
        double acc = 0;
        for (int d = 0; d < D; ++d) acc += double(qv[d]) * K[size_t(t) * D + d];
        s[t] = acc * pr.softmax_scale;
        mx = std::max(mx, s[t]);
      }
      double sum = 0;
      for (double& x : s) sum += (x = std::exp(x - mx));
      for (int d = 0; d < D; ++d) {
        double ref = 0;
        for (int t = 0; t < T; ++t) ref += s[t] * V[size_t(t) * D + d];
        ref /= sum;
        const uint16_t bits = out_bits[(size_t(b) * c.q_heads + hq) * D + d];
        const double got = bf16 ? bf16_bits_to_float(bits) : half_bits_to_float(bits);
        ASSERT_TRUE(std::isfinite(got))
            << "unwritten or non-finite output at seq " << b << " head " << hq << " channel " << d;
        err2 += (got - ref) * (got - ref);
        ref2 += ref * ref;
      }
    }
  }
  const double rel = std::sqrt(err2 / ref2);
  // bf16 output rounding alone is ~3e-3 relative; fp16 ~3e-4.
  EXPECT_LT(rel, bf16 ? 8e-3 : 2e-3)
      << "relative error " << rel << " with " << plan.num_splits << " splits";
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
}

}  // namespace
}  // namespace kvbench::gpu_test
