// Latent-space decode attention on the GPU (kernels/latent_decode.cu) against its host
// reference (latent_decode.h, checked against float64 by tests/unit/latent_decode_test.cpp)
// and float64 itself, the output poisoned with NaN first. The block's reductions sum in another
// order than the host's loop: a relative bound (1e-5 of the output's scale). Skips without a
// GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "device_buffer.h"
#include "latent_case.h"
#include "latent_decode_launcher.h"

namespace kvbench::gpu_test {
namespace {

#define ASSERT_CUDA(expr) ASSERT_CUDA_WITH(expr, "")

TEST(LatentDecodeGpuTest, MatchesTheHostReference) {
  std::string why;
  if (!have_gpu(&why)) GTEST_SKIP() << why;
  for (const LatentShape& s : latent_shapes()) {
    const LatentCase c = latent_case_of(s, {1000, 1, 257, 4096});
    const std::vector<float> host = latent_host_answer(c);
    DeviceBuffer lens, kc, vc, kb, vb, q, out, work;
    ASSERT_CUDA(lens.upload(c.lens));
    ASSERT_CUDA(kc.upload(c.k_coef));
    ASSERT_CUDA(vc.upload(c.v_coef));
    ASSERT_CUDA(kb.upload(c.k_basis));
    ASSERT_CUDA(vb.upload(c.v_basis));
    ASSERT_CUDA(q.upload(c.q));
    std::vector<float> got(c.want.size(), NAN);
    ASSERT_CUDA(out.upload(got));
    kernels::LatentProblem p = c.problem(nullptr);
    p.seq_lens = static_cast<const int*>(lens.ptr);
    p.k_coef = static_cast<const uint16_t*>(kc.ptr),
    p.v_coef = static_cast<const uint16_t*>(vc.ptr);
    p.k_basis = static_cast<const float*>(kb.ptr), p.v_basis = static_cast<const float*>(vb.ptr);
    p.q = static_cast<const float*>(q.ptr), p.out = static_cast<float*>(out.ptr);
    ASSERT_CUDA(work.upload(std::vector<float>(kernels::latent_workspace_bytes(p) / 4)));
    ASSERT_CUDA(kernels::latent_decode(p, work.ptr, nullptr));
    ASSERT_CUDA(cudaDeviceSynchronize());
    ASSERT_CUDA(out.download(got));
    std::vector<double> host_d(host.begin(), host.end());
    EXPECT_LT(scaled_error(got, host_d), 1e-5) << "rank " << s.rank;
    EXPECT_LT(scaled_error(got, c.want), 1e-5) << "rank " << s.rank;
  }
}

TEST(LatentDecodeGpuTest, RejectsBadShapes) {
  kernels::LatentProblem p;
  p.batch = 1, p.q_heads = 3, p.kv_heads = 2, p.head_dim = 128;
  int dummy = 0;
  EXPECT_EQ(kernels::latent_decode(p, &dummy, nullptr), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace kvbench::gpu_test
