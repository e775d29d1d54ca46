// kvproj's latent-space decode kernel itself (kernels/latent_decode_device.h: scores a warp per
// token reduced with shuffles, the block's max and sum through shared memory, value sums over
// the rank, the projection back) runs on the CPU with emulated blocks and warps
// (tests/unit/cuda_emulation.h), on the GPU test's shapes (latent_case.h: ranks 64, 179 and 256,
// groups of 1, 2 and 4 KV heads) over shorter sequences (a token, part warps, several passes of
// the block's warps), against the host reference and float64 with the GPU test's bound.
#include <gtest/gtest.h>

#include <cuda_fp16.h>

#include <cmath>
#include <string>
#include <vector>

#include "latent_case.h"
#include "latent_decode_launcher.h"

#define KVB_EMULATE_WITH_CUDA_TYPES 1
#include "cuda_emulation.h"  // last before the device header
#include "latent_decode_device.h"

namespace kvbench::gpu_test {
namespace {

TEST(LatentEmulationTest, TheKernelMatchesTheHostReference) {
  namespace ld = kernels::latent_device;
  for (const LatentShape& s : latent_shapes()) {
    const LatentCase c = latent_case_of(s, {100, 1, 257, 31});
    const std::vector<float> host = latent_host_answer(c);
    std::vector<float> got(c.want.size(), NAN);
    const kernels::LatentProblem p = c.problem(got.data());
    ASSERT_STREQ(kernels::latent_check(p), "");
    std::vector<float> work(kernels::latent_workspace_bytes(p) / 4, NAN);
    launch_emulated(p.batch * p.q_heads, ld::kThreads,
                    [&] { ld::latent_decode_kernel(p, work.data()); });
    EXPECT_LT(scaled_error(got, std::vector<double>(host.begin(), host.end())), 1e-5)
        << "rank " << s.rank;
    EXPECT_LT(scaled_error(got, c.want), 1e-5) << "rank " << s.rank;
  }
}

}  // namespace
}  // namespace kvbench::gpu_test
