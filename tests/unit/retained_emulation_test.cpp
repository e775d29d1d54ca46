// The retained-index decode kernels themselves (kernels/retained_decode_device.h: the one-token
// loop and the loop with 2 or 4 kept tokens in flight per warp, tokens_per_step) run on the CPU
// with emulated blocks, warps and shuffles (tests/unit/cuda_emulation.h), against the host
// reference (retained_decode_host) and float64, as tests/gpu/retained_decode_test.cpp checks
// them on a GPU: every format, head_dim 64 and 128, GQA group 4, random kept subsets in random
// order (page and window boundaries, a sequence of one token, one kept whole), the outputs and
// the policies' scores poisoned first. The lanes' partial softmaxes merge in
// another order than the host's single pass: relative bound 1e-5 of the output's scale.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "dispatch.h"
#include "retained_case.h"
#include "retained_decode.h"

#include "cuda_emulation.h"  // last before the device header
#include "retained_decode_device.h"

namespace kvbench::gpu_test {
namespace {

using kernels::KvFormat;  // the dispatch macros name formats unqualified

// kernels::retained_decode's launch, emulated: the loop retained_device::with_loop picks.
void run_retained(const kernels::RetainedProblem& p, const kernels::PagedKvStore& s) {
  namespace rd = kernels::retained_device;
  rd::with_loop(p, s, [&](auto u, auto f, auto per) {
    launch_emulated(p.batch * p.q_heads, 32 * rd::kWarps, [&] {
      if constexpr (decltype(u)::value == 0)
        rd::retained_decode_kernel(p, s);
      else
        rd::retained_decode_multi<decltype(u)::value, decltype(f)::value, decltype(per)::value>(p,
                                                                                                s);
    });
  });
}

class RetainedEmulationTest : public ::testing::TestWithParam<AppendCase> {};

TEST_P(RetainedEmulationTest, TheKernelsMatchTheHostReference) {
  const AppendCase& c = GetParam();
  // Short sequences: one past KIVI's longest window with a tail of 17 and a quarter of the rest
  // listed, one token alone, one kept whole as a tail.
  RetainedCase r = retained_case(c, {160, 1, 37}, 2, 4, 0.25, 43 + int(c.format));
  const kernels::PagedKvStore store = store_of(r.cache);
  std::vector<float> host(r.want.size(), NAN);
  kernels::retained_decode_host(r.problem(host.data()), store);
  const std::vector<double> host_d(host.begin(), host.end());
  for (const int tokens : {1, 2, 4}) {
    SCOPED_TRACE("tokens_per_step " + std::to_string(tokens));
    std::vector<float> got(r.want.size(), NAN);
    kernels::RetainedProblem p = r.problem(got.data());
    p.tokens_per_step = tokens;
    const int stride = r.max_kept + 3;
    std::vector<float> scores(r.want_scores.size() * size_t(stride), NAN);
    p.scores = scores.data(), p.score_stride = stride;
    ASSERT_STREQ(kernels::retained_check(p, store), "");
    run_retained(p, store);
    for (size_t row = 0; row < r.want_scores.size(); ++row)
      for (int i = 0; i < stride; ++i) {
        const float g = scores[row * size_t(stride) + size_t(i)];
        if (i >= int(r.want_scores[row].size())) {
          ASSERT_TRUE(std::isnan(g)) << "row " << row << " entry " << i << " past the kept count";
        } else {
          const double w = r.want_scores[row][size_t(i)];
          ASSERT_NEAR(g, w, 1e-5 * std::max(1.0, std::fabs(w))) << "row " << row << " token " << i;
        }
      }
    EXPECT_LT(scaled_error(got, host_d), 1e-5);
    EXPECT_LT(scaled_error(got, r.want), 1e-5);
  }
}

// 16-bit queries and outputs, as the paged cache hands the model's own: each output is the
// fp32 run's over the same query values, rounded once (bit for bit: the same code, the same
// order), for the host reference and every loop; every output is written (poisoned first).
// bf16 queries with the bf16 format, fp16 with the others.
TEST_P(RetainedEmulationTest, SixteenBitQueriesGiveTheFp32OutputsRounded) {
  const AppendCase& c = GetParam();
  const bool bf16 = c.format == KvFormat::kBf16;
  RetainedCase r = retained_case(c, {160, 1, 37}, 2, 4, 0.25, 47 + int(c.format));
  const std::vector<uint16_t> q16 = bits16(r.q, bf16);
  r.q = values16(q16, bf16);
  const kernels::PagedKvStore store = store_of(r.cache);
  for (const int tokens : {0, 1, 2, 4}) {  // 0: the host reference
    SCOPED_TRACE("tokens_per_step " + std::to_string(tokens));
    std::vector<float> got32(r.want.size(), NAN);
    std::vector<uint16_t> got16(r.want.size(), 0xffff);
    for (const bool sixteen : {false, true}) {
      kernels::RetainedProblem p = r.problem(got32.data());
      if (sixteen) use_16_bit(p, q16.data(), got16.data(), bf16);
      p.tokens_per_step = std::max(tokens, 1);
      ASSERT_STREQ(kernels::retained_check(p, store), "");
      if (tokens == 0)
        kernels::retained_decode_host(p, store);
      else
        run_retained(p, store);
    }
    expect_rounded(got32, got16, bf16);
  }
}

// The appender's cases and the 16-bit formats at the other head_dim (the multi-token loop's
// own row loads: 8 bytes a lane at 128, 4 at 64), as the GPU test takes them.
std::vector<AppendCase> emulated_cases() {
  std::vector<AppendCase> cases = append_cases();
  cases.push_back({KvFormat::kFp16, 64, 32, 0});
  cases.push_back({KvFormat::kBf16, 128, 16, 0});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Formats, RetainedEmulationTest, ::testing::ValuesIn(emulated_cases()),
                         [](const ::testing::TestParamInfo<AppendCase>& i) {
                           return append_case_name(i.param);
                         });

}  // namespace
}  // namespace kvbench::gpu_test
