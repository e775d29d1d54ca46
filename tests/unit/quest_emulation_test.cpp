// Quest's kernels' own device code (kernels/quest_score_device.h: the scoring warps' strided
// channels and shuffle reduction over queries in each format, the fold's thread per element,
// the choice's radix passes and prefix sums) runs on the CPU with emulated
// blocks and warps (tests/unit/cuda_emulation.h), at the launchers' geometry, on the GPU
// test's cases (tests/gpu/quest_case.h), scores poisoned with NaN first: within 1e-5 of the
// host reference's in-order sums, the fold bit for bit, and the page choice exactly. fp16 bounds
// decode through the host branch of quest_half() here (exact either way); its device line only on a
// GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "quest_case.h"

#include "cuda_emulation.h"  // last before the device header
#include "quest_score_device.h"

namespace kvbench::gpu_test {
namespace {

namespace qd = kernels::quest_device;

TEST(QuestEmulationTest, ScoresMatchTheHostReference) {
  using kernels::QuestQuery;  // each query format at some head sizes (each case takes ~7 s)
  for (const auto& [D, format] :
       {std::pair{16, QuestQuery::kBf16}, std::pair{40, QuestQuery::kFp32},
        std::pair{64, QuestQuery::kBf16}, std::pair{128, QuestQuery::kFp16}}) {
    SCOPED_TRACE("head_dim " + std::to_string(D) + ", query format " + std::to_string(int(format)));
    const QuestScoreCase c(D);
    std::vector<float> want(size_t(c.B) * c.H * c.most), got(want.size(), NAN);
    kernels::quest_score_host(c.problem(want.data(), format));
    const kernels::QuestScoreProblem p = c.problem(got.data(), format);
    launch_emulated(EmulatedIndex{unsigned(c.most + qd::kWarps - 1) / qd::kWarps, unsigned(c.B), 1},
                    32 * qd::kWarps, [&] { qd::score_body(p); });
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_NEAR(got[i], want[i], 1e-5 * (1 + std::abs(want[i]))) << "entry " << i;
  }
}

TEST(QuestEmulationTest, FoldMatchesTheHostReferenceBitForBit) {
  for (const auto& [H, D] : {std::pair{8, 128}, std::pair{2, 80}}) {
    SCOPED_TRACE("kv_heads " + std::to_string(H) + ", head_dim " + std::to_string(D));
    QuestFoldCase host(H, D), emulated(H, D);
    std::vector<uint16_t*> host_lo, host_hi, lo, hi;
    for (int b = 0; b < host.B; ++b) {
      host_lo.push_back(host.lo[b].data()), host_hi.push_back(host.hi[b].data());
      lo.push_back(emulated.lo[b].data()), hi.push_back(emulated.hi[b].data());
    }
    kernels::quest_fold_host(host.problem(host_lo.data(), host_hi.data()));
    const kernels::QuestFoldProblem p = emulated.problem(lo.data(), hi.data());
    launch_emulated(EmulatedIndex{unsigned(host.row + qd::kFoldThreads - 1) / qd::kFoldThreads,
                                  unsigned(host.B), 1},
                    qd::kFoldThreads, [&] { qd::fold_body(p); });
    for (int b = 0; b < host.B; ++b) {
      ASSERT_EQ(emulated.lo[b], host.lo[b]) << "sequence " << b << " mins";
      ASSERT_EQ(emulated.hi[b], host.hi[b]) << "sequence " << b << " maxs";
    }
    EXPECT_NE(host.lo[3], QuestFoldCase(H, D).lo[3]) << "the fold changed no bound";
  }
}

// The choice's 256-thread blocks: radix passes over keys with many equal ones, runs of up to
// 12 candidates per thread, two block-wide prefix sums; tokens poisoned with -7, a guard after.
TEST(QuestEmulationTest, SelectMatchesTheHostReferenceExactly) {
  for (const QuestSelectShape& shape : quest_select_shapes()) {
    SCOPED_TRACE(shape.label());
    const QuestSelectCase c(shape.read, shape.page_size, shape.finite, 40 + shape.read);
    std::vector<int32_t> want(c.tokens(), -7), got(c.tokens() + 1, -7);
    kernels::quest_select_host(c.problem(c.scores.data(), c.pages.data(), want.data()));
    const kernels::QuestSelectProblem p = c.problem(c.scores.data(), c.pages.data(), got.data());
    launch_emulated(EmulatedIndex{unsigned(c.H), unsigned(c.B), 1}, qd::kSelectThreads,
                    [&] { qd::select_body(p); });
    EXPECT_EQ(got.back(), -7) << "written past the tokens";
    got.pop_back();
    ASSERT_EQ(got, want);
  }
}

}  // namespace
}  // namespace kvbench::gpu_test
