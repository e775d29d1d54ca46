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

namespace kvbench::gpu_test {
namespace {

#define ASSERT_CUDA(expr) ASSERT_CUDA_WITH(expr, "")

class PaluDecodeGpuTest : public ::testing::TestWithParam<PaluShape> {};

TEST_P(PaluDecodeGpuTest, MatchesTheHostReference) {
  std::string why;
  if (!have_gpu(&why)) GTEST_SKIP() << why;
  const PaluCase c = palu_case_of(GetParam(), {1, 15, 16, 33, 1000, 2100});
  const PaluHostAnswer host = palu_host_answer(c);
  DeviceBuffer lens, table, kl, vl, kb, vb, coarse, fine, q, out, work, scores;
  ASSERT_CUDA(lens.upload(c.lens));
  ASSERT_CUDA(table.upload(c.table));
  ASSERT_CUDA(kl.upload(c.k_latent));
  ASSERT_CUDA(vl.upload(c.v_latent));
  ASSERT_CUDA(kb.upload(c.k_basis));
  ASSERT_CUDA(vb.upload(c.v_basis));
  ASSERT_CUDA(coarse.upload(c.coarse));
  ASSERT_CUDA(fine.upload(c.fine));
  ASSERT_CUDA(q.upload(c.q));
  std::vector<float> got(c.want.size(), NAN);
  ASSERT_CUDA(out.upload(got));
  kernels::PaluProblem p = c.problem(nullptr);
  p.seq_lens = static_cast<const int*>(lens.ptr),
  p.block_table = static_cast<const int*>(table.ptr);
  p.k_latent = kl.ptr, p.v_latent = vl.ptr, p.k_basis = kb.ptr;
  p.v_basis = static_cast<const float*>(vb.ptr);
  p.rope_coarse = static_cast<const float*>(coarse.ptr);
  p.rope_fine = static_cast<const float*>(fine.ptr);
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
