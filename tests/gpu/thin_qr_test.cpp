// The batched thin QR kernel (kernels/thin_qr.cu) against its host reference, bit for bit (the
// same double fused multiply-adds in the same order; tests/unit/thin_qr_test.cpp checks the
// reference against LAPACK), a guard after the batch untouched. Skips without a GPU.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "device_buffer.h"
#include "thin_qr_case.h"
#include "thin_qr_launcher.h"

namespace kvbench::gpu_test {
namespace {

#define ASSERT_CUDA(expr) ASSERT_CUDA_WITH(expr, "")

TEST(ThinQrGpuTest, MatchesTheHostReferenceBitForBit) {
  std::string why;
  if (!have_gpu(&why)) GTEST_SKIP() << why;
  for (const auto& [n, r] : thin_qr_shapes()) {
    const ThinQrCase c(n, r);
    SCOPED_TRACE(c.label());
    const std::vector<float> want = c.reference();
    std::vector<float> got = c.guarded();
    DeviceBuffer dx;
    ASSERT_CUDA(dx.upload(got));
    ASSERT_CUDA(kernels::thin_qr(c.problem(static_cast<float*>(dx.ptr)), nullptr));
    ASSERT_CUDA(cudaDeviceSynchronize());
    ASSERT_CUDA(dx.download(got));
    EXPECT_EQ(got.back(), c.kGuard) << "written past the batch";
    got.pop_back();
    for (size_t i = 0; i < want.size(); ++i) ASSERT_EQ(got[i], want[i]) << "element " << i;
  }
}

}  // namespace
}  // namespace kvbench::gpu_test
