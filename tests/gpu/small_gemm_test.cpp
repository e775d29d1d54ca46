// The small-batch weight multiply's CUDA kernel (kernels/small_gemm.cu) against float64 within
// one unit in the last place of the dtype, outputs poisoned with NaN first and a guard after
// them left untouched: the emulated test's shapes (small_gemm_case.h) and larger ones (a
// decode step's widths, the launcher's own choice of block width, a long `in`). Skips without
// a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "device_buffer.h"
#include "small_gemm_case.h"
#include "small_gemm_launcher.h"

namespace kvbench::gpu_test {
namespace {

using kernels::ActDtype;

#define ASSERT_CUDA(expr) ASSERT_CUDA_WITH(expr, "")

std::vector<SmallGemmShape> gpu_shapes() {
  std::vector<SmallGemmShape> s = small_gemm_shapes();
  s.push_back({16, 4096, 1024, false, 0});  // a decode step's hidden width, 16-column blocks
  s.push_back({32, 1024, 8200, true, 0});   // the launcher's 32-column blocks, a part tile
  s.push_back({1, 14336, 64, false, 16});   // the MLP's down projection's `in`
  s.push_back({7, 4096, 333, true, 32});
  return s;
}

TEST(SmallGemmGpuTest, MatchesFloat64WithinOneRounding) {
  std::string why;
  if (!have_gpu(&why)) GTEST_SKIP() << why;
  for (ActDtype t : {ActDtype::kF16, ActDtype::kBf16})
    for (const SmallGemmShape& s : gpu_shapes()) {
      const SmallGemmCase c(s, t, 31 + s.rows + s.out);
      const size_t n = size_t(s.rows) * s.out, guard = 64;
      ActArray poisoned(t, n + guard);  // NaN
      DeviceBuffer x, w, bias, y;
      ASSERT_CUDA(x.upload(c.x.bytes));
      ASSERT_CUDA(w.upload(c.w.bytes));
      ASSERT_CUDA(bias.upload(c.bias.bytes));
      ASSERT_CUDA(y.upload(poisoned.bytes));
      const kernels::SmallGemmProblem p = c.problem(x.ptr, w.ptr, bias.ptr, y.ptr);
      ASSERT_STREQ(kernels::small_gemm_check(p), "");
      ASSERT_CUDA(kernels::small_gemm(p, nullptr));
      ASSERT_CUDA(cudaDeviceSynchronize());
      ActArray out(t, n + guard);
      ASSERT_CUDA(y.download(out.bytes));
      for (size_t i = n; i < n + guard; ++i) ASSERT_TRUE(std::isnan(out.at(i))) << "guard";
      std::vector<float> got = out.floats();
      got.resize(n);
      std::string first;
      EXPECT_EQ(outputs_off(got, c, &first), 0)
          << (t == ActDtype::kF16 ? "fp16 " : "bf16 ") << s.name() << ": " << first;
    }
}

TEST(SmallGemmGpuTest, ARefusedProblemLaunchesNothing) {
  kernels::SmallGemmProblem p;  // no rows, no pointers
  EXPECT_EQ(kernels::small_gemm(p, nullptr), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace kvbench::gpu_test
