// Quest's page-scoring kernel (kernels/quest_score.cu) against its host reference
// (quest_score.h, checked against float64 by tests/unit/quest_score_test.cpp): random fp16
// bounds per sequence in separate allocations, page counts from 1 to past a block's four
// warps, padding, the output poisoned with NaN first. The lanes sum strided channels and
// reduce by shuffles, so the bound is relative, not bitwise. Skips without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
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
  for (int D : {64, 128}) {
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

}  // namespace
}  // namespace kvbench::gpu_test
