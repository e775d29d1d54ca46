// Decode attention over the tokens an eviction policy retained, read in place by index from
// the paged pools of kv_format.h: SnapKV, H2O, StreamingLLM and the other retention methods
// keep a different subset of positions per (sequence, KV head), and attending over it through
// an index list costs no compaction copy (the pages stay where they are; evicted slots are
// simply never read). One query per sequence, every format (decode_paged_token), any GQA group.
//
// Work is cut into partial softmaxes over strided slices of a head's kept tokens, merged with
// a running maximum: retained_decode_host() below takes one slice per query head; the CUDA
// kernel (retained_decode.cu) gives each of four warps one, its lanes splitting each token's
// channels (decode_paged_channels), and merges the four.
// Torch-free and CUDA-free: plain C++ unless compiled by nvcc.
#pragma once

#include <math.h>

#include <cstddef>
#include <cstdint>

#include "kv_paged_decode.h"

namespace kvbench::kernels {

constexpr int kRetainedMaxHeadDim = 128;

struct RetainedProblem {
  int batch = 0, q_heads = 0, kv_heads = 0, head_dim = 0;
  int max_pages_per_seq = 0;         // block_table's row length
  const int* block_table = nullptr;  // [batch, max_pages_per_seq] physical page ids
  const int* seq_lens = nullptr;     // [batch] tokens stored (KIVI's window is relative to it)
  const int* seq_rows = nullptr;     // [batch] ring / fp8-scale row; null: row b
  // What sequence b keeps, per KV head: the positions listed at kept_lists[b] ([kv_heads,
  // kept_counts[b]], any order, each < tail_start[b]), then every token of the tail
  // [tail_start[b], seq_lens[b]) (the tokens since the policy last chose, or a window). A
  // sequence nothing was evicted from lists none and has tail 0; at least one token is kept.
  // The lists stay in device memory between steps: only the three [batch] arrays change.
  const int* const* kept_lists = nullptr;  // [batch] pointers; may be null where the count is 0
  const int* kept_counts = nullptr;        // [batch]
  const int* tail_start = nullptr;         // [batch]
  float softmax_scale = 0.f;
  const float* q = nullptr;  // [batch, q_heads, head_dim] fp32
  float* out = nullptr;      // [batch, q_heads, head_dim] fp32
  // Or 16-bit queries and outputs in their place (both, or neither): the model's own dtype,
  // fp16, or bf16 where bf16_io, so that a caller converts nothing (two launches per layer
  // fewer on a GPU). Each query channel is read as its exact float value, each output
  // rounded to nearest even once, as converting out would round it.
  const uint16_t* q16 = nullptr;
  uint16_t* out16 = nullptr;
  bool bf16_io = false;
  // Optional, for policies that select by attention (H2O, TOVA, ScissorHands): each kept
  // token's scaled score q . k * softmax_scale (the softmax's input), [batch, q_heads,
  // score_stride] fp32, entry i the i-th kept token (listed ones, then the tail); entries past
  // a sequence's kept count are not written. score_stride >= every kept count.
  float* scores = nullptr;
  int score_stride = 0;
  // The CUDA kernel's main loop: how many kept tokens' rows a warp loads before it computes
  // any (1, 2 or 4). 1: one token at a time, as measured on the H200 (latency-bound: each
  // token's list entry, page and rows are dependent loads); 2 and 4: a loop built per format
  // and head_dim 64 or 128 (retained_decode.cu; other head_dims take the one-token loop), to
  // measure. The host reference ignores it.
  int tokens_per_step = 1;
};

// A softmax over part of a query's kept tokens: max score, sum of exp(score - max) and the
// exp-weighted sum of their values. retained_partial() sets every field.
struct RetainedPartial {
  float max;
  float sum;
  float acc[kRetainedMaxHeadDim];
};

// What query head qh of sequence b reads: its KV head, pages, ring row, length, query, and its
// n kept tokens (token(i) for i < n: the listed ones, then the tail).
struct RetainedHead {
  int h, row, T, listed, tail, n;
  const int* pages;
  const int* index;
  const float* q;       // fp32 queries, or
  const uint16_t* q16;  // 16-bit ones (bf16 where bf16)
  bool bf16;
  KVB_HD int token(int i) const { return i < listed ? index[i] : tail + (i - listed); }
  // Query channel d's value.
  KVB_HD float query(int d) const {
    if (!q16) return q[d];
    return bf16 ? encode::bf16_value(q16[d]) : encode::half_value(q16[d]);
  }
};
KVB_HD RetainedHead retained_head(const RetainedProblem& pr, int b, int qh) {
  RetainedHead r;
  r.h = qh / (pr.q_heads / pr.kv_heads);
  r.pages = pr.block_table + size_t(b) * pr.max_pages_per_seq;
  r.row = pr.seq_rows ? pr.seq_rows[b] : b, r.T = pr.seq_lens[b];
  r.listed = pr.kept_counts[b], r.tail = pr.tail_start[b];
  r.n = r.listed + (r.T > r.tail ? r.T - r.tail : 0);
  r.index = r.listed > 0 ? pr.kept_lists[b] + size_t(r.h) * r.listed : nullptr;
  const size_t at = (size_t(b) * pr.q_heads + qh) * pr.head_dim;
  r.q = pr.q16 ? nullptr : pr.q + at;
  r.q16 = pr.q16 ? pr.q16 + at : nullptr;
  r.bf16 = pr.bf16_io;
  return r;
}

// Writes output channel d of sequence b's query head qh: fp32, or rounded to 16 bits.
KVB_HD void retained_store(const RetainedProblem& pr, int b, int qh, int d, float v) {
  const size_t at = (size_t(b) * pr.q_heads + qh) * pr.head_dim + d;
  if (pr.out16)
    pr.out16[at] = pr.bf16_io ? encode::bf16_bits(v) : encode::half_bits(v);
  else
    pr.out[at] = v;
}

// Query head qh of sequence b over its kept tokens first, first + stride, ... into `p`.
KVB_HD void retained_partial(const RetainedProblem& pr, const PagedKvStore& s, int b, int qh,
                             int first, int stride, RetainedPartial& p) {
  const RetainedHead r = retained_head(pr, b, qh);
  const int D = pr.head_dim, h = r.h, row = r.row, T = r.T;
  const int* pages = r.pages;
  float q[kRetainedMaxHeadDim], x[kRetainedMaxHeadDim];
  for (int d = 0; d < D; ++d) q[d] = r.query(d);
  p.max = -INFINITY;
  p.sum = 0.f;
  for (int d = 0; d < D; ++d) p.acc[d] = 0.f;
  for (int i = first; i < r.n; i += stride) {
    const int t = r.token(i);
    decode_paged_token(s, pages, pr.kv_heads, D, row, /*key=*/true, h, t, T, x);
    float dot = 0.f;
    for (int d = 0; d < D; ++d) dot = fmaf(q[d], x[d], dot);
    const float score = dot * pr.softmax_scale, m = fmaxf(p.max, score);
    if (pr.scores) pr.scores[(size_t(b) * pr.q_heads + qh) * pr.score_stride + i] = score;
    const float rescale = expf(p.max - m), w = expf(score - m);  // expf(-inf) = 0 at first
    decode_paged_token(s, pages, pr.kv_heads, D, row, /*key=*/false, h, t, T, x);
    for (int d = 0; d < D; ++d) p.acc[d] = fmaf(w, x[d], p.acc[d] * rescale);
    p.sum = p.sum * rescale + w;
    p.max = m;
  }
}

// Checks what can be checked without reading device memory; "" when the problem is valid.
inline const char* retained_check(const RetainedProblem& p, const PagedKvStore& s) {
  if (p.batch < 1 || p.kv_heads < 1 || p.q_heads < 1) return "batch and heads must be positive";
  if (p.q_heads % p.kv_heads != 0) return "q_heads must be a multiple of kv_heads";
  if (p.head_dim < 32 || p.head_dim > kRetainedMaxHeadDim || p.head_dim % 32 != 0)
    return "head_dim must be 32, 64, 96 or 128";
  if (p.max_pages_per_seq < 1) return "max_pages must be >= 1";
  if (!p.block_table || !p.seq_lens || !p.kept_lists || !p.kept_counts || !p.tail_start)
    return "a required pointer is null";
  if (p.q16 ? !(p.out16 && !p.q && !p.out) : !(p.q && p.out && !p.out16))
    return "queries and outputs: fp32 q and out, or 16-bit q16 and out16";
  if (p.scores && p.score_stride < 1) return "scores need score_stride >= every kept count";
  if (p.tokens_per_step != 1 && p.tokens_per_step != 2 && p.tokens_per_step != 4)
    return "tokens_per_step must be 1, 2 or 4";
  if (!s.k_data || !s.v_data) return "the store has no pools";
  // The 2- and 4-token loops read 16-bit rows 2 or 4 channels at a time (load_raw16).
  if (p.tokens_per_step != 1 &&
      (reinterpret_cast<uintptr_t>(s.k_data) | reinterpret_cast<uintptr_t>(s.v_data)) % 8 != 0)
    return "2 or 4 tokens per step need pools on 8-byte boundaries";
  if (is_kivi(s.format) && (s.residual <= 0 || s.residual % s.page_size != 0))
    return "KIVI needs a residual window that is a positive multiple of page_size";
  return "";
}

// The reference loop: every query head of every sequence in one slice, in order.
inline void retained_decode_host(const RetainedProblem& pr, const PagedKvStore& s) {
  RetainedPartial p;
  for (int b = 0; b < pr.batch; ++b)
    for (int qh = 0; qh < pr.q_heads; ++qh) {
      retained_partial(pr, s, b, qh, 0, 1, p);
      // No token kept at all: 0, as the device kernel.
      for (int d = 0; d < pr.head_dim; ++d)
        retained_store(pr, b, qh, d, p.sum > 0.f ? p.acc[d] / p.sum : 0.f);
    }
}

}  // namespace kvbench::kernels
