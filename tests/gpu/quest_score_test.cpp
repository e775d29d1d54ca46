// Quest's page-scoring kernel (kernels/quest_score.cu) against its host reference
// (quest_score.h, checked against float64 by tests/unit/quest_score_test.cpp): random fp16
// bounds per sequence in separate allocations, page counts from 1 to past a block's four
// warps, padding, the output poisoned with NaN first. The lanes sum strided channels and
// reduce by shuffles, so the bound is relative, not bitwise. And the folding of a step's keys
// into the bounds (quest_fold), which must agree with its host reference bit for bit (the
// same directed rounding and comparisons), and the choice of the pages a step reads (exactly).
// Skips without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "device_buffer.h"
#include "quest_case.h"
#include "quest_score_launcher.h"

namespace kvbench::gpu_test {
namespace {

#define ASSERT_CUDA(expr) ASSERT_CUDA_WITH(expr, "")

void score_case(int D, kernels::QuestQuery format) {
  const QuestScoreCase c(D);
  std::vector<float> want(size_t(c.B) * c.H * c.most), got(want.size(), NAN);
  kernels::QuestScoreProblem p = c.problem(want.data(), format);
  kernels::quest_score_host(p);

  std::vector<DeviceBuffer> lo_buf(c.B), hi_buf(c.B);
  std::vector<const uint16_t*> lo_dev, hi_dev;
  for (int b = 0; b < c.B; ++b) {
    ASSERT_CUDA(lo_buf[b].upload(c.lo[b]));
    ASSERT_CUDA(hi_buf[b].upload(c.hi[b]));
    lo_dev.push_back(static_cast<const uint16_t*>(lo_buf[b].ptr));
    hi_dev.push_back(static_cast<const uint16_t*>(hi_buf[b].ptr));
  }
  DeviceBuffer dlo, dhi, dpages, dq, drows, dout;
  ASSERT_CUDA(dlo.upload(lo_dev));
  ASSERT_CUDA(dhi.upload(hi_dev));
  ASSERT_CUDA(dpages.upload(c.pages));
  if (format == kernels::QuestQuery::kFp32) ASSERT_CUDA(dq.upload(c.q));
  if (format == kernels::QuestQuery::kFp16) ASSERT_CUDA(dq.upload(c.q16));
  if (format == kernels::QuestQuery::kBf16) ASSERT_CUDA(dq.upload(c.qbf16));
  ASSERT_CUDA(drows.upload(c.rows));
  ASSERT_CUDA(dout.upload(got));
  p.mins = static_cast<const uint16_t* const*>(dlo.ptr);
  p.maxs = static_cast<const uint16_t* const*>(dhi.ptr);
  p.pages = static_cast<const int64_t*>(dpages.ptr);
  p.q = dq.ptr, p.rows = static_cast<const int64_t*>(drows.ptr);
  p.out = static_cast<float*>(dout.ptr);
  ASSERT_CUDA(kernels::quest_score(p, nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());
  ASSERT_CUDA(dout.download(got));
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(got[i], want[i], 1e-5 * (1 + std::abs(want[i]))) << "entry " << i;
}

TEST(QuestScoreGpuTest, MatchesTheHostReference) {
  std::string why;
  if (!have_gpu(&why)) GTEST_SKIP() << why;
  // Channels per lane: several (64, 128), one for some lanes (40), none for half of them (16).
  using kernels::QuestQuery;
  for (int D : {16, 40, 64, 128})
    for (QuestQuery format : {QuestQuery::kFp32, QuestQuery::kFp16, QuestQuery::kBf16}) {
      SCOPED_TRACE("head_dim " + std::to_string(D) + ", query format " +
                   std::to_string(int(format)));
      ASSERT_NO_FATAL_FAILURE(score_case(D, format));
    }
}

// Each (sequence, element) is one thread of 256-thread blocks: 1024 elements per sequence,
// then 160 (a block's last 96 threads idle). NaN and infinite keys, fp16's largest values and
// the smallest subnormals among the random ones.
void fold_case(int H, int D) {
  QuestFoldCase c(H, D);
  std::vector<DeviceBuffer> lo_buf(c.B), hi_buf(c.B);
  std::vector<uint16_t*> lo_host, hi_host, lo_dev, hi_dev;
  for (int b = 0; b < c.B; ++b) {
    ASSERT_CUDA(lo_buf[b].upload(c.lo[b]));
    ASSERT_CUDA(hi_buf[b].upload(c.hi[b]));
    lo_dev.push_back(static_cast<uint16_t*>(lo_buf[b].ptr));
    hi_dev.push_back(static_cast<uint16_t*>(hi_buf[b].ptr));
  }
  DeviceBuffer dlo, dhi, dpage, dkeys;
  ASSERT_CUDA(dlo.upload(lo_dev));
  ASSERT_CUDA(dhi.upload(hi_dev));
  ASSERT_CUDA(dpage.upload(c.page));
  ASSERT_CUDA(dkeys.upload(c.keys));
  kernels::QuestFoldProblem p;
  p.batch = c.B, p.kv_heads = H, p.head_dim = D;
  p.mins = static_cast<uint16_t* const*>(dlo.ptr), p.maxs = static_cast<uint16_t* const*>(dhi.ptr);
  p.page = static_cast<const int64_t*>(dpage.ptr), p.keys = static_cast<const float*>(dkeys.ptr);
  ASSERT_CUDA(kernels::quest_fold(p, nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());
  for (int b = 0; b < c.B; ++b)
    lo_host.push_back(c.lo[b].data()), hi_host.push_back(c.hi[b].data());
  kernels::quest_fold_host(c.problem(lo_host.data(), hi_host.data()));
  for (int b = 0; b < c.B; ++b) {
    std::vector<uint16_t> got_lo(c.lo[b].size()), got_hi(c.hi[b].size());
    ASSERT_CUDA(lo_buf[b].download(got_lo));
    ASSERT_CUDA(hi_buf[b].download(got_hi));
    for (size_t i = 0; i < got_lo.size(); ++i) {
      ASSERT_EQ(got_lo[i], c.lo[b][i]) << "sequence " << b << " min " << i;
      ASSERT_EQ(got_hi[i], c.hi[b][i]) << "sequence " << b << " max " << i;
    }
  }
}

TEST(QuestFoldGpuTest, MatchesTheHostReferenceBitForBit) {
  std::string why;
  if (!have_gpu(&why)) GTEST_SKIP() << why;
  for (const auto& [H, D] : {std::pair{8, 128}, std::pair{2, 80}}) {
    SCOPED_TRACE("kv_heads " + std::to_string(H) + ", head_dim " + std::to_string(D));
    ASSERT_NO_FATAL_FAILURE(fold_case(H, D));
  }
}

// The choice against its host reference, exactly: equal scores, NaN and infinities, rows from
// `read` pages to 3001, tokens poisoned with -7 and a guard after them.
TEST(QuestSelectGpuTest, MatchesTheHostReferenceExactly) {
  std::string why;
  if (!have_gpu(&why)) GTEST_SKIP() << why;
  for (const QuestSelectShape& shape : quest_select_shapes()) {
    SCOPED_TRACE(shape.label());
    const QuestSelectCase c(shape.read, shape.page_size, shape.finite, 40 + shape.read);
    std::vector<int32_t> want(c.tokens(), -7), got(c.tokens() + 1, -7);
    kernels::quest_select_host(c.problem(c.scores.data(), c.pages.data(), want.data()));
    DeviceBuffer dscores, dpages, dtokens;
    ASSERT_CUDA(dscores.upload(c.scores));
    ASSERT_CUDA(dpages.upload(c.pages));
    ASSERT_CUDA(dtokens.upload(got));
    ASSERT_CUDA(kernels::quest_select(
        c.problem(static_cast<const float*>(dscores.ptr), static_cast<const int64_t*>(dpages.ptr),
                  static_cast<int32_t*>(dtokens.ptr)),
        nullptr));
    ASSERT_CUDA(cudaDeviceSynchronize());
    ASSERT_CUDA(dtokens.download(got));
    EXPECT_EQ(got.back(), -7) << "written past the tokens";
    got.pop_back();
    ASSERT_EQ(got, want);
  }
}

}  // namespace
}  // namespace kvbench::gpu_test
