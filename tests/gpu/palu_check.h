// The Palu decode kernel's test cases and checks, shared by the GPU test
// (tests/gpu/palu_decode_test.cpp) and the emulated one (tests/unit/palu_emulation_test.cpp):
// the shapes, the host reference's answer (palu_decode_host, outputs and scaled scores), and the
// comparisons. The kernel rounds its probabilities to 16-bit for the tensor cores and sums in
// another order: bound 2e-3 of the output's scale (fp16), 1e-2 (bf16), as the paged decode
// kernel's. Host-only.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <ostream>
#include <string>
#include <vector>

#include "palu_case.h"

namespace kvbench::gpu_test {

struct PaluShape {
  int kv, per, d, r;
  bool bf16;
  int group = 1;
  bool evict = false;  // kept lists and tails (palu_case)
  int page = 32;       // tokens per page (the engine's default is 16)
};

inline std::string shape_name(const PaluShape& s) {
  return "d" + std::to_string(s.d) + "_r" + std::to_string(s.r) + "_h" + std::to_string(s.kv) +
         "x" + std::to_string(s.per) + (s.group > 1 ? "_g" + std::to_string(s.group) : "") +
         (s.bf16 ? "_bf16" : "_fp16") + (s.evict ? "_evicted" : "") +
         (s.page != 32 ? "_p" + std::to_string(s.page) : "");
}
// gtest prints parameters; the struct's padding bytes would show as noise.
inline void PrintTo(const PaluShape& s, std::ostream* os) { *os << shape_name(s); }

inline std::vector<PaluShape> palu_shapes() {
  return {PaluShape{8, 4, 128, 96, false}, PaluShape{8, 4, 128, 128, false},
          PaluShape{2, 8, 128, 32, true}, PaluShape{4, 2, 64, 64, false},
          PaluShape{2, 1, 64, 96, true}, PaluShape{8, 4, 128, 128, false, 4},
          PaluShape{4, 2, 64, 64, true, 2}, PaluShape{8, 4, 128, 96, false, 1, true},
          PaluShape{2, 8, 128, 128, true, 1, true}, PaluShape{4, 2, 64, 64, false, 2, true},
          PaluShape{8, 4, 128, 128, false, 1, false, 16},
          PaluShape{8, 4, 128, 96, false, 1, true, 16},
          // Pages of 16 with a group (bf16; listed), three query heads per KV head
          // over pages of three tiles.
          PaluShape{4, 2, 64, 64, true, 2, false, 16}, PaluShape{4, 2, 64, 64, false, 2, true, 16},
          PaluShape{2, 3, 64, 96, false, 1, true, 48}};
}

// Lengths: a single token, a part tile, a tile and a page boundary, several splits.
inline PaluCase palu_case_of(const PaluShape& s, const std::vector<int>& lens) {
  return palu_case(s.kv, s.per, s.d, s.r, s.bf16, lens, 3 + s.r, s.page, s.group, s.evict);
}

// The host reference's outputs and each attended token's scaled score (what H2O, TOVA and
// ScissorHands record), rows of `stride` entries, NaN past each count.
struct PaluHostAnswer {
  std::vector<float> out, scores;
  int stride = 0;
};
inline PaluHostAnswer palu_host_answer(const PaluCase& c) {
  PaluHostAnswer h;
  h.out.resize(c.want.size());
  h.stride = c.max_len() + 3;
  h.scores.assign(size_t(c.batch) * c.q_heads * h.stride, NAN);
  std::vector<float> scratch(size_t(2 * c.head_dim + c.rank + c.max_len()));
  kernels::PaluProblem hp = c.problem(h.out.data());
  hp.scores = h.scores.data(), hp.score_stride = h.stride;
  kernels::palu_decode_host(hp, scratch.data());
  return h;
}

// A kernel's outputs against the host reference and float64; with `scores` (rows of h.stride,
// poisoned before the launch), its scores too: nothing written past a count.
inline void expect_palu_answer(const PaluCase& c, const PaluHostAnswer& h,
                               const std::vector<float>& got, const std::vector<float>* scores,
                               const std::string& what) {
  const double bound = c.bf16 ? 1e-2 : 2e-3;
  EXPECT_LT(scaled_error(got, std::vector<double>(h.out.begin(), h.out.end())), bound) << what;
  EXPECT_LT(scaled_error(got, c.want), bound) << what;
  if (!scores) return;
  std::vector<float> written;
  std::vector<double> expected, wanted;
  for (int b = 0; b < c.batch; ++b)
    for (int qh = 0; qh < c.q_heads; ++qh)
      for (int i = 0; i < h.stride; ++i) {
        const size_t at = (size_t(b) * c.q_heads + qh) * h.stride + i;
        if (i >= c.attended(b)) {
          EXPECT_TRUE(std::isnan((*scores)[at]))
              << what << ": written past the count: " << b << ", " << i;
          continue;
        }
        written.push_back((*scores)[at]), expected.push_back(h.scores[at]);
        wanted.push_back(c.want_scores[(size_t(b) * c.q_heads + qh) * c.max_len() + i]);
      }
  // Both round keys and queries to 16-bit; what is left is fp32 order and the odd rounding
  // that lands on the other side of a 16-bit step.
  EXPECT_LT(scaled_error(written, expected), bound) << what;
  EXPECT_LT(scaled_error(written, wanted), bound) << what;
}

}  // namespace kvbench::gpu_test
