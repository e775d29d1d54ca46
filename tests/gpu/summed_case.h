// A prefill block for the tests of H2O's summed-attention kernels (kernels/summed_attention.h),
// on a GPU (tests/gpu/summed_attention_test.cpp) and emulated on the CPU
// (tests/unit/summed_emulation_test.cpp): random 16-bit queries and keys (and, split, the
// keys' fp16 remainders), lse and out poisoned with NaN, and the host reference's answer.
// Host-only.
#pragma once

#include <cmath>
#include <cstdint>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "kv_encode.h"
#include "summed_attention.h"

namespace kvbench::gpu_test {

struct SummedShape {
  int heads, kv_heads, head_dim, n, held;
  bool bf16, split = false;
};

inline std::string name(const SummedShape& s) {
  return "h" + std::to_string(s.heads) + "x" + std::to_string(s.kv_heads) + "_d" +
         std::to_string(s.head_dim) + "_n" + std::to_string(s.n) + "_held" +
         std::to_string(s.held) + (s.bf16 ? "_bf16" : "_fp16") + (s.split ? "_split" : "");
}

// gtest prints a parameter by its name, not its bytes.
inline void PrintTo(const SummedShape& s, std::ostream* os) { *os << name(s); }

struct SummedCase {
  std::vector<uint16_t> q, k, k_lo;
  std::vector<float> lse, out;            // poisoned: what a kernel writes into
  std::vector<float> want_lse, want_out;  // the host reference's
  kernels::SummedAttentionProblem p;      // over q, k, k_lo, lse and out

  // Every lse within 1e-4 (relative past 1) and every sum within 1e-4 relative: the sums are
  // of positive terms (no cancellation), so a key with a tiny sum is checked too (ex2.approx
  // and another order of addition: ~1e-6 relative measured on the host replay). "" when so.
  std::string mismatch() const {
    for (size_t i = 0; i < lse.size(); ++i)
      if (!(std::abs(lse[i] - want_lse[i]) <= 1e-4 * (1 + std::abs(want_lse[i]))))
        return "query " + std::to_string(i) + ": lse " + std::to_string(lse[i]) + ", want " +
               std::to_string(want_lse[i]);
    for (size_t j = 0; j < out.size(); ++j)
      if (!(std::abs(out[j] - want_out[j]) <= 1e-4 * std::abs(want_out[j]) + 1e-7))
        return "key " + std::to_string(j) + ": sum " + std::to_string(out[j]) + ", want " +
               std::to_string(want_out[j]);
    return "";
  }
};

inline SummedCase summed_case(const SummedShape& s) {
  SummedCase c;
  std::mt19937 rng(3 + s.n + s.held);
  std::normal_distribution<float> normal(0.f, 1.5f);
  auto bits = [&](float x) {
    return s.bf16 ? kernels::encode::bf16_bits(x) : kernels::encode::half_bits(x);
  };
  c.q.resize(size_t(s.heads) * s.n * s.head_dim);
  c.k.resize(size_t(s.kv_heads) * s.held * s.head_dim);
  for (auto& x : c.q) x = bits(normal(rng));
  for (auto& x : c.k) {
    const float v = normal(rng);
    x = bits(v);
    if (s.split)  // the remainder of an fp32 key, as paged_cuda::summed_attention_split makes it
      c.k_lo.push_back(kernels::encode::half_bits((v - kernels::encode::half_value(x)) /
                                                  kernels::kSummedLoScale));
  }
  c.lse.assign(size_t(s.heads) * s.n, NAN);
  c.out.assign(size_t(s.kv_heads) * s.held, NAN);
  c.want_lse = c.lse, c.want_out = c.out;
  kernels::SummedAttentionProblem& p = c.p;
  p.heads = s.heads, p.kv_heads = s.kv_heads, p.head_dim = s.head_dim, p.n = s.n;
  p.held = s.held, p.bf16 = s.bf16, p.scale = float(1.0 / std::sqrt(double(s.head_dim)));
  p.q = c.q.data(), p.k = c.k.data(), p.lse = c.want_lse.data(), p.out = c.want_out.data();
  if (s.split) p.k_lo = c.k_lo.data();
  kernels::summed_attention_host(p);
  p.lse = c.lse.data(), p.out = c.out.data();
  return c;
}

// The shapes both tests run.
inline std::vector<SummedShape> summed_shapes() {
  return {
      SummedShape{8, 2, 128, 200, 330, false},        // GQA 4, 130 keys before
      SummedShape{8, 2, 64, 200, 330, true},          //   at head_dim 64, bf16
      SummedShape{4, 4, 128, 65, 65, false},          // a whole prefill: a tile and one
      SummedShape{4, 4, 64, 64, 97, false},           // one tile, 33 keys before
      SummedShape{8, 2, 128, 1, 77, false},           // one query sees everything
      SummedShape{4, 1, 128, 520, 600, true},         // many tiles, GQA 4, bf16
      SummedShape{8, 2, 128, 200, 330, false, true},  // keys split in two
      SummedShape{4, 4, 64, 65, 98, false, true},     //   at head_dim 64
      SummedShape{8, 1, 128, 130, 200, false},        // GQA 8 (Llama-3-70B's)
      SummedShape{8, 1, 64, 130, 200, false, true},   //   split, at head_dim 64
  };
}

}  // namespace kvbench::gpu_test
