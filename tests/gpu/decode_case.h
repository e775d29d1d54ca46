// A decode-attention problem for the tests of kernels/decode_attention.h, on a GPU
// (tests/gpu/decode_attention_test.cpp) and emulated on the CPU
// (tests/unit/decode_emulation_test.cpp): a paged cache built by the independent builder (every
// format; physical pages shuffled), random queries, and a float64 reference that attends over
// exactly the values each stored token decodes to, so the only differences left are the
// kernel's fp32 arithmetic, its fast exp2 and the fp16/bf16 output. Host-only.
#pragma once

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "decode_attention.h"
#include "paged_cache_builder.h"

namespace kvbench::gpu_test {

struct DecodeCase {
  kernels::KvFormat format;
  int head_dim, q_heads, kv_heads, page_size, residual;
  std::vector<int> seq_lens;
  int force_splits;         // 0: the plan's choice
  bool multi_tile = false;  // the v3 main loop (DecodePlan::multi_tile)
  int min_blocks = 0;       // 4: v2 at four blocks per multiprocessor ("v2b")
  int tiles_per_step = 0;   // v3's (DecodePlan::tiles_per_step): 2 is "v3h"
  bool batch_rows = false;  // no seq_rows: sequence b's rings and scales at row b
  bool staged = false;      // the v4 loop (DecodePlan::staged)
};

inline std::string case_name(const DecodeCase& c) {
  std::string n = std::string(kernels::format_name(c.format)) + "_d" + std::to_string(c.head_dim) +
                  "_h" + std::to_string(c.q_heads) + "x" + std::to_string(c.kv_heads) + "_p" +
                  std::to_string(c.page_size);
  if (c.residual) n += "_r" + std::to_string(c.residual);
  n += "_s" + std::to_string(c.force_splits);
  if (c.batch_rows) n += "_norows";
  if (c.multi_tile) n += c.tiles_per_step == 2 ? "_v3h" : "_v3";
  if (c.min_blocks == 4) n += "_v2b";
  if (c.staged) n += "_v4";
  for (char& ch : n)
    if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return n;
}

// gtest prints parameters in test listings; a vector member would print as raw bytes.
inline void PrintTo(const DecodeCase& c, std::ostream* os) { *os << case_name(c); }

struct DecodeInputs {
  HostPagedCache cache;
  std::vector<int> rows;  // seq_rows: the reverse of the batch order (unless batch_rows)
  std::vector<uint16_t> q_bits;
  std::vector<float> q;  // what q_bits read as
  float scale = 0.f;

  // The problem and the storage over host pointers; the GPU test swaps in device ones.
  kernels::DecodeProblem problem(const DecodeCase& c, void* out) const {
    kernels::DecodeProblem pr;
    pr.batch = cache.batch, pr.q_heads = c.q_heads, pr.kv_heads = c.kv_heads;
    pr.head_dim = c.head_dim, pr.max_pages_per_seq = cache.max_pages;
    for (int T : c.seq_lens) pr.max_seq_len = std::max(pr.max_seq_len, T);
    pr.block_table = cache.block_table.data(), pr.seq_lens = cache.seq_lens.data();
    pr.seq_rows = c.batch_rows ? nullptr : rows.data();
    pr.softmax_scale = scale, pr.q = q_bits.data(), pr.out = out;
    return pr;
  }
  kernels::PagedKv kv(const DecodeCase& c) const {
    kernels::PagedKv kv;
    kv.format = c.format, kv.page_size = c.page_size, kv.residual = c.residual;
    kv.k_data = cache.k_data.data(), kv.v_data = cache.v_data.data();
    kv.k_meta = cache.k_meta.data(), kv.v_meta = cache.v_meta.data();
    kv.k_residual = cache.k_residual.data(), kv.v_residual = cache.v_residual.data();
    kv.k_head_scale = cache.k_head_scale.data(), kv.v_head_scale = cache.v_head_scale.data();
    return kv;
  }
  kernels::DecodePlan plan(const DecodeCase& c) const {
    kernels::DecodePlan p;
    p.multi_tile = c.multi_tile, p.tiles_per_step = c.tiles_per_step, p.min_blocks = c.min_blocks;
    p.staged = c.staged;
    return p;
  }
};

inline DecodeInputs decode_inputs(const DecodeCase& c) {
  const int B = int(c.seq_lens.size()), D = c.head_dim;
  const bool bf16 = c.format == kernels::KvFormat::kBf16;
  std::mt19937 rng(1234 + int(c.format) * 7 + D + c.q_heads);
  std::vector<std::vector<float>> keys, values;
  for (int T : c.seq_lens) {
    keys.push_back(random_tokens(rng, c.kv_heads, T, D, true));
    values.push_back(random_tokens(rng, c.kv_heads, T, D, false));
  }
  DecodeInputs in;
  in.cache = build_paged_cache(c.format, c.kv_heads, D, c.page_size, c.residual, keys, values,
                               c.seq_lens, rng);
  in.rows = reversed_rows(B);
  if (!c.batch_rows) move_rows(in.cache, in.rows);  // rings and scales not in batch order
  std::normal_distribution<float> normal(0.f, 1.f);
  in.q_bits.resize(size_t(B) * c.q_heads * D);
  in.q.resize(in.q_bits.size());
  for (size_t i = 0; i < in.q.size(); ++i) {
    const float x = normal(rng);
    in.q_bits[i] = bf16 ? float_to_bf16_bits(x) : float_to_half_bits(x);
    in.q[i] = bf16 ? bf16_bits_to_float(in.q_bits[i]) : half_bits_to_float(in.q_bits[i]);
  }
  in.scale = 1.f / std::sqrt(float(D));
  return in;
}

// The outputs (fp16, bf16 for kBf16) against float64: ||out - ref|| / ||ref|| over the
// batch, or `unwritten` naming the first non-finite output (outputs are poisoned with NaN
// before a launch, so an element a kernel forgets to write shows here).
struct DecodeError {
  double rel = 0;
  std::string unwritten;
};
inline DecodeError decode_error(const DecodeCase& c, const DecodeInputs& in,
                                const std::vector<uint16_t>& out_bits) {
  const int D = c.head_dim, group = c.q_heads / c.kv_heads;
  const bool bf16 = c.format == kernels::KvFormat::kBf16;
  double err2 = 0, ref2 = 0;
  for (int b = 0; b < int(c.seq_lens.size()); ++b) {
    const int T = c.seq_lens[b];
    for (int hq = 0; hq < c.q_heads; ++hq) {
      const int h = hq / group;
      const float* qv = in.q.data() + (size_t(b) * c.q_heads + hq) * D;
      const float* K = in.cache.k_decoded[b].data() + size_t(h) * T * D;
      const float* V = in.cache.v_decoded[b].data() + size_t(h) * T * D;
      std::vector<double> s(T);
      double mx = -INFINITY;
      for (int t = 0; t < T; ++t) {
        double acc = 0;
        for (int d = 0; d < D; ++d) acc += double(qv[d]) * K[size_t(t) * D + d];
        s[t] = acc * in.scale;
        mx = std::max(mx, s[t]);
      }
      double sum = 0;
      for (double& x : s) sum += (x = std::exp(x - mx));
      for (int d = 0; d < D; ++d) {
        double ref = 0;
        for (int t = 0; t < T; ++t) ref += s[t] * V[size_t(t) * D + d];
        ref /= sum;
        const uint16_t bits = out_bits[(size_t(b) * c.q_heads + hq) * D + d];
        const double got = bf16 ? bf16_bits_to_float(bits) : half_bits_to_float(bits);
        if (!std::isfinite(got))
          return {INFINITY, "seq " + std::to_string(b) + " head " + std::to_string(hq) +
                                " channel " + std::to_string(d)};
        err2 += (got - ref) * (got - ref);
        ref2 += ref * ref;
      }
    }
  }
  return {std::sqrt(err2 / ref2), ""};
}

// bf16 output rounding alone is ~3e-3 relative; fp16 ~3e-4.
inline double decode_tolerance(kernels::KvFormat f) {
  return f == kernels::KvFormat::kBf16 ? 8e-3 : 2e-3;
}

}  // namespace kvbench::gpu_test
