// The small-batch weight multiply's own device code (kernels/small_gemm_device.h: 16-byte
// loads in a permuted k order, tensor-core steps, the warps' sums through shared memory) runs
// on the CPU with emulated warps and MMAs (tests/unit/cuda_emulation.h), on the GPU test's
// shapes (small_gemm_case.h), outputs poisoned first, against float64 within one unit in the
// last place of the dtype. A guard after the output must stay untouched.
#include <gtest/gtest.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#include "small_gemm_case.h"

#define KVB_EMULATE_WITH_CUDA_TYPES 1
#include "cuda_emulation.h"  // last before the device header
#include "small_gemm_device.h"

namespace kvbench::gpu_test {
namespace {

using kernels::ActDtype;

// x and w copied into 16-byte aligned storage, as the kernel requires.
std::vector<EmulatedSmemChunk> aligned(const ActArray& a) {
  std::vector<EmulatedSmemChunk> out((a.bytes.size() + 15) / 16);
  std::memcpy(out.data(), a.bytes.data(), a.bytes.size());
  return out;
}

std::vector<float> run_emulated(const SmallGemmCase& c, const kernels::SmallGemmProblem& base) {
  namespace sg = kernels::small_gemm_device;
  const auto x = aligned(c.x), w = aligned(c.w);
  const size_t n = size_t(c.shape.rows) * c.shape.out, guard = 64;
  ActArray y(c.dtype, n + guard);  // NaN: the poison, and the guard after the output
  kernels::SmallGemmProblem p = base;
  p.x = x.data(), p.w = w.data(), p.bias = c.shape.bias ? c.bias.data() : nullptr;
  p.y = y.data();
  EXPECT_STREQ(kernels::small_gemm_check(p), "");
  const bool ran = sg::with_kernel(p, [&](auto bf16, auto row_tiles, auto col_tiles, int blocks) {
    launch_emulated(blocks, sg::kThreads, [&] {
      sg::small_gemm_body<decltype(bf16)::value, decltype(row_tiles)::value,
                          decltype(col_tiles)::value>(p);
    });
  });
  EXPECT_TRUE(ran);
  for (size_t i = n; i < n + guard; ++i) EXPECT_TRUE(std::isnan(y.at(i))) << "guard " << i - n;
  std::vector<float> got = y.floats();
  got.resize(n);
  return got;
}

TEST(SmallGemmEmulationTest, MatchesFloat64WithinOneRounding) {
  for (ActDtype t : {ActDtype::kF16, ActDtype::kBf16})
    for (const SmallGemmShape& s : small_gemm_shapes()) {
      const SmallGemmCase c(s, t, 101 + s.rows * 7 + s.out);
      const std::vector<float> got = run_emulated(c, c.problem(nullptr, nullptr, nullptr, nullptr));
      std::string first;
      EXPECT_EQ(outputs_off(got, c, &first), 0)
          << (t == ActDtype::kF16 ? "fp16 " : "bf16 ") << s.name() << ": " << first;
    }
}

// The tests' own measure fails a kernel that drops a chunk or a column tile's bias: the same
// case with one weight changed after the answer was taken is off.
TEST(SmallGemmEmulationTest, TheCheckSeesAWrongOutput) {
  SmallGemmCase c({16, 256, 48, true, 16}, ActDtype::kF16, 7);
  c.w.set(5 * 256 + 200, c.w.at(5 * 256 + 200) + 0.5f);  // column 5, one k
  const std::vector<float> got = run_emulated(c, c.problem(nullptr, nullptr, nullptr, nullptr));
  std::string first;
  EXPECT_EQ(outputs_off(got, c, &first), 16) << "every row's column 5";
}

TEST(SmallGemmTest, RefusesWhatItCannotRun) {
  alignas(16) static uint16_t buf[64];
  kernels::SmallGemmProblem p;
  alignas(16) static uint16_t out[64];
  p.rows = 16, p.in = 32, p.out = 8, p.x = buf, p.w = buf, p.y = out;
  EXPECT_STREQ(kernels::small_gemm_check(p), "");
  auto refused = [&](auto change) {
    kernels::SmallGemmProblem q = p;
    change(q);
    return std::string(kernels::small_gemm_check(q));
  };
  EXPECT_NE(refused([](auto& q) { q.rows = 33; }), "");
  EXPECT_NE(refused([](auto& q) { q.rows = 0; }), "");
  EXPECT_NE(refused([](auto& q) { q.in = 48; }), "");
  EXPECT_NE(refused([](auto& q) { q.out = 0; }), "");
  EXPECT_NE(refused([](auto& q) { q.dtype = ActDtype::kF32; }), "");
  EXPECT_NE(refused([](auto& q) { q.columns = 8; }), "");
  EXPECT_NE(refused([&](auto& q) { q.x = reinterpret_cast<const char*>(buf) + 2; }), "");
  EXPECT_NE(refused([](auto& q) { q.y = nullptr; }), "");
  EXPECT_NE(refused([](auto& q) { q.y = const_cast<void*>(q.w); }), "");
  EXPECT_EQ(kernels::small_gemm_columns(p), 16);
  p.out = 8192;
  EXPECT_EQ(kernels::small_gemm_columns(p), 32);
  p.columns = 16;
  EXPECT_EQ(kernels::small_gemm_columns(p), 16);
}

}  // namespace
}  // namespace kvbench::gpu_test
