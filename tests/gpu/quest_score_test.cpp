// Quest's page-scoring kernel (kernels/quest_score.cu) against its host reference
// (quest_score.h, checked against float64 by tests/unit/quest_score_test.cpp): random fp16
// bounds per sequence in separate allocations, page counts from 1 to past a block's four
// warps, padding, the output poisoned with NaN first. The lanes sum strided channels and
// reduce by shuffles, so the bound is relative, not bitwise. And the folding of a step's keys
// into the bounds (quest_fold), which must agree with its host reference bit for bit (the
// same directed rounding and comparisons). Skips without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "device_buffer.h"
#include "kv_encode.h"
#include "quest_score_launcher.h"

namespace kvbench::gpu_test {
namespace {

#define ASSERT_CUDA(expr) ASSERT_CUDA_WITH(expr, "")

TEST(QuestScoreGpuTest, MatchesTheHostReference) {
  std::string why;
  if (!have_gpu(&why)) GTEST_SKIP() << why;
  // Channels per lane: several (64, 128), one for some lanes (40), none for half of them (16).
  for (int D : {16, 40, 64, 128}) {
    SCOPED_TRACE("head_dim " + std::to_string(D));
    const int B = 4, H = 8;
    const std::vector<int64_t> pages = {1, 513, 6, 37};
    const int most = 513;
    std::mt19937 rng(9 + D);
    std::normal_distribution<float> normal(0.f, 1.f);
    std::vector<std::vector<uint16_t>> lo(B), hi(B);
    std::vector<const uint16_t*> lo_host, hi_host, lo_dev, hi_dev;
    std::vector<DeviceBuffer> lo_buf(B), hi_buf(B);
    for (int b = 0; b < B; ++b) {
      for (int64_t i = 0; i < pages[b] * H * D; ++i) {
        const float a = normal(rng), c = normal(rng);
        lo[b].push_back(kernels::encode::half_bits(std::min(a, c)));
        hi[b].push_back(kernels::encode::half_bits(std::max(a, c)));
      }
      lo_host.push_back(lo[b].data()), hi_host.push_back(hi[b].data());
      ASSERT_CUDA(lo_buf[b].upload(lo[b]));
      ASSERT_CUDA(hi_buf[b].upload(hi[b]));
      lo_dev.push_back(static_cast<const uint16_t*>(lo_buf[b].ptr));
      hi_dev.push_back(static_cast<const uint16_t*>(hi_buf[b].ptr));
    }
    std::vector<float> pos(size_t(B) * H * D), neg(pos.size());
    for (size_t i = 0; i < pos.size(); ++i)
      pos[i] = std::abs(normal(rng)), neg[i] = -std::abs(normal(rng));
    std::vector<float> want(size_t(B) * H * most), got(want.size(), NAN);
    kernels::QuestScoreProblem p;
    p.batch = B, p.kv_heads = H, p.head_dim = D, p.most = most;
    p.mins = lo_host.data(), p.maxs = hi_host.data(), p.pages = pages.data();
    p.pos = pos.data(), p.neg = neg.data(), p.out = want.data();
    kernels::quest_score_host(p);

    DeviceBuffer dlo, dhi, dpages, dpos, dneg, dout;
    ASSERT_CUDA(dlo.upload(lo_dev));
    ASSERT_CUDA(dhi.upload(hi_dev));
    ASSERT_CUDA(dpages.upload(pages));
    ASSERT_CUDA(dpos.upload(pos));
    ASSERT_CUDA(dneg.upload(neg));
    ASSERT_CUDA(dout.upload(got));
    p.mins = static_cast<const uint16_t* const*>(dlo.ptr);
    p.maxs = static_cast<const uint16_t* const*>(dhi.ptr);
    p.pages = static_cast<const int64_t*>(dpages.ptr);
    p.pos = static_cast<const float*>(dpos.ptr), p.neg = static_cast<const float*>(dneg.ptr);
    p.out = static_cast<float*>(dout.ptr);
    ASSERT_CUDA(kernels::quest_score(p, nullptr));
    ASSERT_CUDA(cudaDeviceSynchronize());
    ASSERT_CUDA(dout.download(got));
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_NEAR(got[i], want[i], 1e-5 * (1 + std::abs(want[i]))) << "entry " << i;
  }
}

// Each (sequence, element) is one thread of 256-thread blocks: 1024 elements per sequence,
// then 160 (a block's last 96 threads idle). NaN and infinite keys, fp16's largest values and
// the smallest subnormals among the random ones.
void fold_case(int H, int D) {
  const int B = 5, row = H * D;
  const std::vector<int64_t> pages = {1, 7, 3, 40, 2}, page = {0, 6, 1, 39, 1};
  std::mt19937 rng(21 + D);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<std::vector<uint16_t>> lo(B), hi(B);
  std::vector<DeviceBuffer> lo_buf(B), hi_buf(B);
  std::vector<uint16_t*> lo_host, hi_host, lo_dev, hi_dev;
  for (int b = 0; b < B; ++b) {
    for (int64_t i = 0; i < pages[b] * row; ++i) {
      const bool empty = i % 3 == 0;  // as grown: +inf mins, -inf maxs
      const float a = normal(rng), c = normal(rng);
      lo[b].push_back(empty ? 0x7c00u : kernels::encode::half_bits(std::min(a, c)));
      hi[b].push_back(empty ? 0xfc00u : kernels::encode::half_bits(std::max(a, c)));
    }
    ASSERT_CUDA(lo_buf[b].upload(lo[b]));
    ASSERT_CUDA(hi_buf[b].upload(hi[b]));
    lo_dev.push_back(static_cast<uint16_t*>(lo_buf[b].ptr));
    hi_dev.push_back(static_cast<uint16_t*>(hi_buf[b].ptr));
  }
  std::vector<float> keys(size_t(B) * row);
  const float edges[] = {0.f,       -0.f,     1e-8f,    -1e-8f,    65519.f,
                         70000.f,   -70000.f, 65504.f,  -65520.f,  0x1p-25f,
                         -0x1p-25f, NAN,      INFINITY, -INFINITY, 1.00048828125f};
  const size_t n_edges = sizeof(edges) / sizeof(edges[0]);
  for (size_t i = 0; i < keys.size(); ++i)
    keys[i] = i % 97 < n_edges ? edges[i % 97] : std::ldexp(normal(rng), int(i % 23) - 12);
  DeviceBuffer dlo, dhi, dpage, dkeys;
  ASSERT_CUDA(dlo.upload(lo_dev));
  ASSERT_CUDA(dhi.upload(hi_dev));
  ASSERT_CUDA(dpage.upload(page));
  ASSERT_CUDA(dkeys.upload(keys));
  kernels::QuestFoldProblem p;
  p.batch = B, p.kv_heads = H, p.head_dim = D;
  p.mins = static_cast<uint16_t* const*>(dlo.ptr), p.maxs = static_cast<uint16_t* const*>(dhi.ptr);
  p.page = static_cast<const int64_t*>(dpage.ptr), p.keys = static_cast<const float*>(dkeys.ptr);
  ASSERT_CUDA(kernels::quest_fold(p, nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());
  for (int b = 0; b < B; ++b) lo_host.push_back(lo[b].data()), hi_host.push_back(hi[b].data());
  p.mins = lo_host.data(), p.maxs = hi_host.data(), p.page = page.data(), p.keys = keys.data();
  kernels::quest_fold_host(p);
  for (int b = 0; b < B; ++b) {
    std::vector<uint16_t> got_lo(lo[b].size()), got_hi(hi[b].size());
    ASSERT_CUDA(lo_buf[b].download(got_lo));
    ASSERT_CUDA(hi_buf[b].download(got_hi));
    for (size_t i = 0; i < got_lo.size(); ++i) {
      ASSERT_EQ(got_lo[i], lo[b][i]) << "sequence " << b << " min " << i;
      ASSERT_EQ(got_hi[i], hi[b][i]) << "sequence " << b << " max " << i;
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

}  // namespace
}  // namespace kvbench::gpu_test
