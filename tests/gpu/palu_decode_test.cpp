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

#include <cmath>
#include <ostream>
#include <string>
#include <tuple>
#include <vector>

#include "device_buffer.h"
#include "palu_case.h"
#include "palu_decode_launcher.h"

namespace kvbench::gpu_test {
namespace {

#define ASSERT_CUDA(expr) ASSERT_CUDA_WITH(expr, "")

struct Shape {
  int kv, per, d, r;
  bool bf16;
  int group = 1;
  bool evict = false;  // kept lists and tails (palu_case)
  int page = 32;       // tokens per page (the engine's default is 16)
};

std::string shape_name(const Shape& s) {
  return "d" + std::to_string(s.d) + "_r" + std::to_string(s.r) + "_h" + std::to_string(s.kv) +
         "x" + std::to_string(s.per) + (s.group > 1 ? "_g" + std::to_string(s.group) : "") +
         (s.bf16 ? "_bf16" : "_fp16") + (s.evict ? "_evicted" : "") +
         (s.page != 32 ? "_p" + std::to_string(s.page) : "");
}
// gtest prints parameters; the struct's padding bytes would show as noise.
void PrintTo(const Shape& s, std::ostream* os) { *os << shape_name(s); }

class PaluDecodeGpuTest : public ::testing::TestWithParam<Shape> {};

TEST_P(PaluDecodeGpuTest, MatchesTheHostReference) {
  std::string why;
  if (!have_gpu(&why)) GTEST_SKIP() << why;
  const Shape s = GetParam();
  const PaluCase c = palu_case(s.kv, s.per, s.d, s.r, s.bf16, {1, 15, 16, 33, 1000, 2100}, 3 + s.r,
                               s.page, s.group, s.evict);
  std::vector<float> host(c.want.size()), scratch(size_t(2 * c.head_dim + c.rank + c.max_len()));
  // Each attended token's scaled score, as a policy that selects by attention records them.
  const int stride = c.max_len() + 3;
  std::vector<float> host_scores(size_t(c.batch) * c.q_heads * stride, NAN);
  {
    kernels::PaluProblem hp = c.problem(host.data());
    hp.scores = host_scores.data(), hp.score_stride = stride;
    kernels::palu_decode_host(hp, scratch.data());
  }
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
  if (s.evict) {
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
    std::vector<float> got_scores(host_scores.size(), NAN);
    ASSERT_CUDA(scores.upload(got_scores));
    p.scores = scored ? static_cast<float*>(scores.ptr) : nullptr;
    p.score_stride = scored ? stride : 0;
    kernels::PaluPlan plan;
    ASSERT_CUDA(kernels::palu_plan(p, c.max_len(), sms, &plan));
    ASSERT_CUDA(work.upload(std::vector<char>(plan.workspace_bytes)));
    ASSERT_CUDA(out.upload(std::vector<float>(got.size(), NAN)));
    p.out = static_cast<float*>(out.ptr);
    ASSERT_CUDA_WITH(kernels::palu_decode(p, plan, work.ptr, nullptr), kernels::palu_check(p));
    ASSERT_CUDA(cudaDeviceSynchronize());
    ASSERT_CUDA(out.download(got));
    const double bound = s.bf16 ? 1e-2 : 2e-3;
    EXPECT_LT(scaled_error(got, std::vector<double>(host.begin(), host.end())), bound)
        << "splits " << plan.splits;
    EXPECT_LT(scaled_error(got, c.want), bound) << "splits " << plan.splits;
    if (!scored) continue;
    ASSERT_CUDA(scores.download(got_scores));
    std::vector<float> written;
    std::vector<double> expected, wanted;
    for (int b = 0; b < c.batch; ++b)
      for (int qh = 0; qh < c.q_heads; ++qh)
        for (int i = 0; i < stride; ++i) {
          const size_t at = (size_t(b) * c.q_heads + qh) * stride + i;
          if (i >= c.attended(b)) {
            EXPECT_TRUE(std::isnan(got_scores[at])) << "written past the count: " << b << ", " << i;
            continue;
          }
          written.push_back(got_scores[at]), expected.push_back(host_scores[at]);
          wanted.push_back(c.want_scores[(size_t(b) * c.q_heads + qh) * c.max_len() + i]);
        }
    // Both round keys and queries to 16-bit; what is left is fp32 order and the odd rounding
    // that lands on the other side of a 16-bit step.
    EXPECT_LT(scaled_error(written, expected), s.bf16 ? 1e-2 : 2e-3);
    EXPECT_LT(scaled_error(written, wanted), s.bf16 ? 1e-2 : 2e-3);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, PaluDecodeGpuTest,
    ::testing::Values(
        Shape{8, 4, 128, 96, false}, Shape{8, 4, 128, 128, false}, Shape{2, 8, 128, 32, true},
        Shape{4, 2, 64, 64, false}, Shape{2, 1, 64, 96, true}, Shape{8, 4, 128, 128, false, 4},
        Shape{4, 2, 64, 64, true, 2}, Shape{8, 4, 128, 96, false, 1, true},
        Shape{2, 8, 128, 128, true, 1, true}, Shape{4, 2, 64, 64, false, 2, true},
        Shape{8, 4, 128, 128, false, 1, false, 16}, Shape{8, 4, 128, 96, false, 1, true, 16},
        // Pages of 16 with a group (bf16; listed), three query heads per KV head
        // over pages of three tiles.
        Shape{4, 2, 64, 64, true, 2, false, 16}, Shape{4, 2, 64, 64, false, 2, true, 16},
        Shape{2, 3, 64, 96, false, 1, true, 48}),
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
