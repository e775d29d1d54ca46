// Palu's decode kernel (kernels/palu_decode.cu) against its host reference (palu_decode.h,
// checked against float64 by tests/unit/palu_paged_cache_test.cpp) and float64 itself, the
// output poisoned with NaN first, pages unmapped by any table NaN (a read past a sequence or
// of a wrong page shows). The kernel rounds its probabilities to 16-bit for the tensor cores
// and sums in another order: bound 2e-3 of the output's scale (fp16), 1e-2 (bf16), as the
// paged decode kernel's. Lengths: a single token, a part tile, a tile and a page boundary,
// several splits; the `_evicted` shapes attend kept lists and tails (tokens gathered from their
// slots, rotated at their positions). The second pass also writes each attended token's scaled
// score (what H2O, TOVA and ScissorHands record) into a NaN-poisoned array. Skips without a GPU.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "device_buffer.h"
#include "palu_check.h"
#include "palu_decode_launcher.h"
#include "sixteen_bit.h"

namespace kvbench::gpu_test {
namespace {

#define ASSERT_CUDA(expr) ASSERT_CUDA_WITH(expr, "")

// A case's inputs in device memory, and its problem reading them there (q and out unset).
struct DevicePalu {
  DeviceBuffer lens, table, kl, vl, kb, vb, coarse, fine;
  cudaError_t upload(const PaluCase& c) {
    for (cudaError_t e :
         {lens.upload(c.lens), table.upload(c.table), kl.upload(c.k_latent), vl.upload(c.v_latent),
          kb.upload(c.k_basis), vb.upload(c.v_basis), coarse.upload(c.coarse), fine.upload(c.fine)})
      if (e != cudaSuccess) return e;
    return cudaSuccess;
  }
  kernels::PaluProblem problem(const PaluCase& c) const {
    kernels::PaluProblem p = c.problem(nullptr);
    p.q = nullptr;
    p.seq_lens = static_cast<const int*>(lens.ptr),
    p.block_table = static_cast<const int*>(table.ptr);
    p.k_latent = kl.ptr, p.v_latent = vl.ptr, p.k_basis = kb.ptr;
    p.v_basis = static_cast<const float*>(vb.ptr);
    p.rope_coarse = static_cast<const float*>(coarse.ptr);
    p.rope_fine = static_cast<const float*>(fine.ptr);
    return p;
  }
};

class PaluDecodeGpuTest : public ::testing::TestWithParam<PaluShape> {};

TEST_P(PaluDecodeGpuTest, MatchesTheHostReference) {
  std::string why;
  if (!have_gpu(&why)) GTEST_SKIP() << why;
  const PaluCase c = palu_case_of(GetParam(), {1, 15, 16, 33, 1000, 2100});
  const PaluHostAnswer host = palu_host_answer(c);
  DevicePalu on;
  DeviceBuffer q, out, work, scores;
  ASSERT_CUDA(on.upload(c));
  ASSERT_CUDA(q.upload(c.q));
  std::vector<float> got(c.want.size(), NAN);
  ASSERT_CUDA(out.upload(got));
  kernels::PaluProblem p = on.problem(c);
  p.q = static_cast<const float*>(q.ptr), p.out = static_cast<float*>(out.ptr);
  // Kept lists: each list in device memory, then the array of their device addresses.
  std::vector<DeviceBuffer> lists(c.lists.size());
  DeviceBuffer list_ptrs, counts, tails;
  if (GetParam().evict) {
    std::vector<const int*> ptrs;
    for (size_t b = 0; b < c.lists.size(); ++b) {
      if (!c.lists[b].empty()) ASSERT_CUDA(lists[b].upload(c.lists[b]));
      ptrs.push_back(c.lists[b].empty() ? nullptr : static_cast<const int*>(lists[b].ptr));
    }
    ASSERT_CUDA(list_ptrs.upload(ptrs));
    ASSERT_CUDA(counts.upload(c.counts));
    ASSERT_CUDA(tails.upload(c.tails));
    p.kept_lists = static_cast<const int* const*>(list_ptrs.ptr);
    p.kept_counts = static_cast<const int*>(counts.ptr);
    p.tail_start = static_cast<const int*>(tails.ptr);
  }
  for (const int sms : {1, 132}) {  // one split per sequence, and several
    // The scores too, on the second pass (poisoned: an entry past a count stays NaN).
    const bool scored = sms > 1;
    std::vector<float> got_scores(host.scores.size(), NAN);
    ASSERT_CUDA(scores.upload(got_scores));
    p.scores = scored ? static_cast<float*>(scores.ptr) : nullptr;
    p.score_stride = scored ? host.stride : 0;
    kernels::PaluPlan plan;
    ASSERT_CUDA(kernels::palu_plan(p, c.max_len(), sms, &plan));
    ASSERT_CUDA(work.upload(std::vector<char>(plan.workspace_bytes)));
    ASSERT_CUDA(out.upload(std::vector<float>(got.size(), NAN)));
    p.out = static_cast<float*>(out.ptr);
    ASSERT_CUDA_WITH(kernels::palu_decode(p, plan, work.ptr, nullptr), kernels::palu_check(p));
    ASSERT_CUDA(cudaDeviceSynchronize());
    ASSERT_CUDA(out.download(got));
    if (scored) ASSERT_CUDA(scores.download(got_scores));
    expect_palu_answer(c, host, got, scored ? &got_scores : nullptr,
                       "splits " + std::to_string(plan.splits));
  }
}

// 16-bit queries and outputs in the latents' type, as the cache hands a model of that dtype's:
// each output is the kernel's fp32 output over the same query values rounded once, bit for bit
// (the same code in the same order), at one split and at several.
TEST_P(PaluDecodeGpuTest, SixteenBitQueriesGiveTheFp32OutputsRounded) {
  std::string why;
  if (!have_gpu(&why)) GTEST_SKIP() << why;
  if (GetParam().evict) GTEST_SKIP() << "the kept lists change nothing at the queries' ends";
  PaluCase c = palu_case_of(GetParam(), {1, 33, 1000, 2100});
  const std::vector<uint16_t> q16 = bits16(c.q, c.bf16);
  c.q = values16(q16, c.bf16);
  DevicePalu on;
  DeviceBuffer q, q_half, out, out_half, work;
  ASSERT_CUDA(on.upload(c));
  ASSERT_CUDA(q.upload(c.q));
  ASSERT_CUDA(q_half.upload(q16));
  kernels::PaluProblem p = on.problem(c);
  for (const int sms : {1, 132}) {
    SCOPED_TRACE("sms " + std::to_string(sms));
    std::vector<float> got32(c.want.size(), NAN);
    std::vector<uint16_t> got16(c.want.size(), 0xffff);
    ASSERT_CUDA(out.upload(got32));
    ASSERT_CUDA(out_half.upload(got16));
    kernels::PaluPlan plan;
    p.q = static_cast<const float*>(q.ptr), p.out = static_cast<float*>(out.ptr);
    p.q16 = nullptr, p.out16 = nullptr;
    ASSERT_CUDA(kernels::palu_plan(p, c.max_len(), sms, &plan));
    ASSERT_CUDA(work.upload(std::vector<char>(plan.workspace_bytes)));
    ASSERT_CUDA_WITH(kernels::palu_decode(p, plan, work.ptr, nullptr), kernels::palu_check(p));
    p.q = nullptr, p.out = nullptr;
    p.q16 = static_cast<const uint16_t*>(q_half.ptr);
    p.out16 = static_cast<uint16_t*>(out_half.ptr);
    ASSERT_CUDA_WITH(kernels::palu_decode(p, plan, work.ptr, nullptr), kernels::palu_check(p));
    ASSERT_CUDA(cudaDeviceSynchronize());
    ASSERT_CUDA(out.download(got32));
    ASSERT_CUDA(out_half.download(got16));
    expect_rounded(got32, got16, c.bf16);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, PaluDecodeGpuTest, ::testing::ValuesIn(palu_shapes()),
                         [](const auto& i) { return shape_name(i.param); });

TEST(PaluDecodeGpuErrorsTest, RejectsBadProblems) {
  const PaluCase c = palu_case(2, 4, 64, 32, false, {40}, 1);
  std::vector<float> out(c.q.size());
  kernels::PaluProblem p = c.problem(out.data());
  kernels::PaluPlan plan;
  p.rank = 48;
  EXPECT_EQ(kernels::palu_plan(p, c.max_len(), 132, &plan), cudaErrorInvalidValue);
  p.rank = 32;
  // RoPE tables shorter than the longest sequence.
  EXPECT_EQ(kernels::palu_plan(p, 100 * c.max_len(), 132, &plan), cudaErrorInvalidValue);
  EXPECT_EQ(kernels::palu_decode(p, plan, nullptr, nullptr), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace kvbench::gpu_test
