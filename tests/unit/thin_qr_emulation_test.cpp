// The batched thin QR's own device code (kernels/thin_qr_device.h: a thread's rows, the block's
// double sums) runs on the CPU with emulated blocks (tests/unit/cuda_emulation.h) at the
// launcher's geometry, on the GPU test's cases: bit for bit the host reference's result (the
// same fused multiply-adds in the same order), a guard after the batch untouched.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "thin_qr_case.h"

#include "cuda_emulation.h"  // last before the device header
#include "thin_qr_device.h"

namespace kvbench::gpu_test {
namespace {

TEST(ThinQrEmulationTest, MatchesTheHostReferenceBitForBit) {
  for (const auto& [n, r] : thin_qr_shapes()) {
    const ThinQrCase c(n, r);
    SCOPED_TRACE(c.label());
    const std::vector<float> want = c.reference();
    std::vector<float> got = c.guarded();
    const kernels::ThinQrProblem p = c.problem(got.data());
    launch_emulated(c.B, kernels::kThinQrThreads, [&] { kernels::thin_qr_device::qr_body(p); });
    EXPECT_EQ(got.back(), c.kGuard) << "written past the batch";
    got.pop_back();
    for (size_t i = 0; i < want.size(); ++i) ASSERT_EQ(got[i], want[i]) << "element " << i;
  }
}

}  // namespace
}  // namespace kvbench::gpu_test
