// Appends a whole cache the way a serving engine does, for the appender's tests: each call
// carries the next chunk of every sequence (a prefill of any size first, then chunks of 1 to
// 130 tokens, sequences finishing at different calls), packed as the transformer packs a
// batch. Host-only; the tokens are rounded to the input dtype before anything sees them.
#pragma once

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "kv_append.h"
#include "kv_encode.h"
#include "paged_cache_builder.h"

namespace kvbench::gpu_test {

struct AppendCall {
  std::vector<int> old_lens;  // [batch]
  std::vector<int> cu_new;    // [batch + 1]
  int max_new = 0;
  std::vector<uint16_t> k, v;  // [cu_new[batch], kv_heads, head_dim] fp16 (bf16) bits
};

// Random keys (with outlier channels) and values of each sequence, [kv_heads, T_b, head_dim],
// rounded to fp16 (bf16) so that a builder fed these floats and an appender fed their bits
// see the same numbers.
struct SequenceTokens {
  std::vector<std::vector<float>> keys, values;
};
inline SequenceTokens rounded_tokens(std::mt19937& rng, const std::vector<int>& seq_lens,
                                     int kv_heads, int head_dim, bool bf16) {
  namespace e = kernels::encode;
  SequenceTokens s;
  for (int T : seq_lens) {
    s.keys.push_back(random_tokens(rng, kv_heads, T, head_dim, true));
    s.values.push_back(random_tokens(rng, kv_heads, T, head_dim, false));
    for (auto* x : {&s.keys.back(), &s.values.back()})
      for (float& v : *x)
        v = bf16 ? e::bf16_value(e::bf16_bits(v)) : e::half_value(e::half_bits(v));
  }
  return s;
}

// keys/values: per sequence [kv_heads, T_b, head_dim] (already rounded); prefill[b]: the first
// chunk of sequence b (0 allowed).
inline std::vector<AppendCall> append_schedule(const std::vector<std::vector<float>>& keys,
                                               const std::vector<std::vector<float>>& values,
                                               const std::vector<int>& seq_lens,
                                               const std::vector<int>& prefill, int kv_heads,
                                               int head_dim, bool bf16) {
  namespace e = kernels::encode;
  static const int kChunks[] = {1, 1, 3, 1, 40, 1, 130, 7, 1, 16};
  const int B = int(seq_lens.size());
  std::vector<int> held(B, 0), step(B, 0);
  std::vector<AppendCall> calls;
  for (bool first = true;; first = false) {
    AppendCall c;
    c.old_lens = held;
    c.cu_new.assign(1, 0);
    bool any = false;
    for (int b = 0; b < B; ++b) {
      int n = first ? prefill[b] : kChunks[(step[b]++ + b) % 10];
      n = std::min(n, seq_lens[b] - held[b]);
      any |= n > 0;
      c.max_new = std::max(c.max_new, n);
      for (int i = 0; i < n; ++i)
        for (int h = 0; h < kv_heads; ++h)
          for (int d = 0; d < head_dim; ++d) {
            const size_t src = (size_t(h) * seq_lens[b] + held[b] + i) * head_dim + d;
            c.k.push_back(bf16 ? e::bf16_bits(keys[b][src]) : e::half_bits(keys[b][src]));
            c.v.push_back(bf16 ? e::bf16_bits(values[b][src]) : e::half_bits(values[b][src]));
          }
      held[b] += n;
      c.cu_new.push_back(c.cu_new.back() + n);
    }
    if (!any && !first) break;
    if (any) calls.push_back(std::move(c));
  }
  return calls;
}

// A storage configuration the appender tests run: every format, both head dims, KIVI with
// groups of 16 and 32 and windows of 1 to 8 groups.
struct AppendCase {
  kernels::KvFormat format;
  int head_dim, page_size, residual;
};

inline std::vector<AppendCase> append_cases() {
  using kernels::KvFormat;
  return {{KvFormat::kFp16, 128, 16, 0},     {KvFormat::kBf16, 64, 32, 0},
          {KvFormat::kInt8, 128, 32, 0},     {KvFormat::kInt4, 128, 16, 0},
          {KvFormat::kInt4, 64, 32, 0},      {KvFormat::kFp8, 128, 32, 0},
          {KvFormat::kKivi2, 128, 32, 128},  {KvFormat::kKivi2, 64, 16, 32},
          {KvFormat::kKivi4, 128, 32, 64},   {KvFormat::kKivi4, 128, 16, 128},
          {KvFormat::kInt4Asym, 128, 32, 0}, {KvFormat::kInt4Asym, 64, 16, 0},
          {KvFormat::kInt2, 128, 16, 0},     {KvFormat::kInt2, 64, 32, 0}};
}

// A gtest-safe name: "kivi_2_d128_p32_r128".
inline std::string append_case_name(const AppendCase& c) {
  std::string n = std::string(kernels::format_name(c.format)) + "_d" + std::to_string(c.head_dim) +
                  "_p" + std::to_string(c.page_size) + "_r" + std::to_string(c.residual);
  for (char& ch : n)
    if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return n;
}

// The store over `c`'s pools (host pointers), and the appender's problem of `call` over `c`'s
// block table; the caller swaps in device pointers where it needs them.
inline kernels::PagedKvStore store_of(HostPagedCache& c) {
  kernels::PagedKvStore s;
  s.format = c.format, s.page_size = c.page_size, s.residual = c.residual;
  s.k_data = c.k_data.data(), s.v_data = c.v_data.data();
  s.k_meta = c.k_meta.data(), s.v_meta = c.v_meta.data();
  s.k_residual = c.k_residual.data(), s.v_residual = c.v_residual.data();
  s.k_head_scale = c.k_head_scale.data(), s.v_head_scale = c.v_head_scale.data();
  return s;
}

inline kernels::AppendProblem problem_of(const AppendCall& call, const HostPagedCache& c) {
  kernels::AppendProblem p;
  p.batch = c.batch, p.kv_heads = c.kv_heads, p.head_dim = c.head_dim;
  p.max_pages_per_seq = c.max_pages, p.block_table = c.block_table.data();
  p.old_lens = call.old_lens.data(), p.cu_new = call.cu_new.data(), p.max_new = call.max_new;
  p.k = call.k.data(), p.v = call.v.data();
  return p;
}

// Every pool of `c` (codes, scales, rings) set to 0xff: NaN in fp16, so unwritten bytes show.
inline void poison(HostPagedCache& c) {
  for (auto* pool : {&c.k_data, &c.v_data, &c.k_meta, &c.v_meta, &c.k_residual, &c.v_residual})
    std::fill(pool->begin(), pool->end(), uint8_t(0xff));
}

}  // namespace kvbench::gpu_test
