// Decode attention over Palu's latent cache in pages, reconstructing and rotating the keys on
// the fly (no reconstructed key is ever written to memory). Palu (methods.md) stores per token
// and KV head the latent h = L^T k_pre of its key before RoPE (L: [head_dim, rank], orthonormal
// columns, from the SVD of W_k) and the latent of its value in the value basis. A decode step:
//   key_t   = RoPE_t(L h_t)                     rotate-half RoPE at the token's position t
//   score_t = q . key_t * softmax_scale         (q: the query with RoPE applied)
//   out     = L_v (sum_t p_t h^v_t)              values summed in latent space, projected once
// Positions are slots: the paged cache never moves a token, so token t sits at position t.
// After a retention policy chose (SnapKV, StreamingLLM, ...), a sequence attends only the
// tokens it keeps, read in place by index as kernels/retained_decode.h reads them: listed
// positions per latent head, then a tail of every newer token; each is rotated at its own
// position (its slot), so eviction needs no copy and no stored positions.
//
// Layout (kv_format.h's kFp16/kBf16 pages at width `rank`): latents [pages, kv_heads,
// page_size, rank] 16-bit, page_size a multiple of the 16-token tile; one latent per group of
// `group` KV heads (Palu's G-LRD; g = 1: one per head): the pools hold kv_heads / group latent
// heads, and KV head j reads latent head j / group. The bases are per KV head ([kv_heads,
// head_dim, rank]: a group's [g * head_dim, rank] basis is its heads' blocks, head-major).
// The key basis is 16-bit (it is a tensor-core operand), the value basis fp32 (the projection
// runs once per query head, on CUDA cores).
//
// RoPE's cos and sin of t * inv_freq[i] come from two tables computed in float64 and rounded
// to fp32 (palu_rope_tables() below; PaluPagedCache builds the same with ATen ops where its
// pools are): a coarse one per 16-token tile (angle of 16 * (t / 16)) and a fine one
// for the offsets 0..15 in the tile, composed by the angle-addition formulas in fp32. Small
// enough to stay in cache at 128k tokens (4 MB coarse), where a table per position would not.
//
// The per-element functions below run on the host and the device alike: palu_decode_host()
// is the reference the CUDA kernel (palu_decode.cu) is tested against; it rounds what the
// kernel rounds (keys and queries to 16-bit before the dot product), but not the kernel's
// 16-bit probabilities. Torch-free and CUDA-free unless compiled by nvcc.
#pragma once

#include <math.h>

#include <cstddef>
#include <cstdint>

#include "kv_encode.h"
#include "kv_format.h"

namespace kvbench::kernels {

constexpr int kPaluTile = 16;      // tokens per tensor-core tile (and RoPE coarse step)
constexpr int kPaluMaxQPerKv = 8;  // query heads per KV head (the mma's M rows, padded to 16)

struct PaluProblem {
  int batch = 0, q_heads = 0, kv_heads = 0, head_dim = 0, rank = 0;
  int group = 1;                     // KV heads sharing one latent (divides kv_heads)
  bool bf16 = false;                 // latents and key basis in bf16 (else fp16)
  int page_size = 32;                // tokens per page, a multiple of kPaluTile
  int max_pages_per_seq = 0;         // block_table's row length
  const int* block_table = nullptr;  // [batch, max_pages_per_seq] physical pages
  const int* seq_lens = nullptr;     // [batch] tokens held, the new one included (>= 1)
  const void* k_latent = nullptr;    // [pages, kv_heads / group, page_size, rank] 16-bit
  const void* v_latent = nullptr;
  const void* k_basis = nullptr;   // [kv_heads, head_dim, rank] 16-bit: L's row c
  const float* v_basis = nullptr;  // [kv_heads, head_dim, rank] fp32
  // [tiles, 2, head_dim / 2] fp32: cos, then sin of (16 * tile) * inv_freq[i]; `tiles` must
  // cover every sequence's last tile. [16, 2, head_dim / 2]: the same for offsets 0..15.
  const float* rope_coarse = nullptr;
  int rope_tiles = 0;
  const float* rope_fine = nullptr;
  float softmax_scale = 0.f;
  const float* q = nullptr;  // [batch, q_heads, head_dim] fp32, RoPE applied
  float* out = nullptr;      // [batch, q_heads, head_dim] fp32
  // Or both 16-bit, in the latents' type (bf16 where bf16): the queries as a model of that
  // dtype gives them (the kernel rounds q to it anyway) and each output rounded once to it,
  // as the fp32 output's conversion would, so that a caller converts neither (two launches
  // per layer fewer). Either q and out or q16 and out16.
  const uint16_t* q16 = nullptr;
  uint16_t* out16 = nullptr;
  // Optional (all three or none), after a retention policy chose: what sequence b keeps, per
  // latent head (KV head j reads row j / group): the positions listed at kept_lists[b]
  // ([kv_heads / group, kept_counts[b]], any order, each < tail_start[b]), then every token of
  // the tail [tail_start[b], seq_lens[b]). A sequence nothing was evicted from lists none and
  // has tail 0. Null: every sequence attends all its tokens.
  const int* const* kept_lists = nullptr;  // [batch] pointers; may be null where the count is 0
  const int* kept_counts = nullptr;        // [batch]
  const int* tail_start = nullptr;         // [batch]
  // Optional, for policies that select by attention (H2O, TOVA, ScissorHands): each attended
  // token's scaled score q . key * softmax_scale (the softmax's input), [batch, q_heads,
  // score_stride] fp32, entry i the i-th token attended (the listed ones, then the tail; or
  // slot i); entries past a sequence's count are not written. score_stride >= every count.
  float* scores = nullptr;
  int score_stride = 0;
};

namespace palu {

// The tokens KV head j of sequence b attends: n of them, the i-th at position token(i).
struct Kept {
  const int* list;
  int listed, tail, n;
  KVB_HD int token(int i) const { return i < listed ? list[i] : tail + (i - listed); }
};
KVB_HD Kept kept(const PaluProblem& p, int b, int j) {
  const int T = p.seq_lens[b];
  if (p.kept_counts == nullptr) return {nullptr, 0, 0, T};
  const int listed = p.kept_counts[b], tail = p.tail_start[b];
  return {listed > 0 ? p.kept_lists[b] + size_t(j / p.group) * listed : nullptr, listed, tail,
          listed + (T > tail ? T - tail : 0)};
}

KVB_HD float value16(const PaluProblem& p, uint16_t bits) {
  return p.bf16 ? encode::bf16_value(bits) : encode::half_value(bits);
}
// Channel `at` of the queries, [batch, q_heads, head_dim] (q16's as its value).
KVB_HD float query(const PaluProblem& p, size_t at) {
  return p.q16 ? value16(p, p.q16[at]) : p.q[at];
}
// Stores channel `at` of the outputs (out16's rounded once).
KVB_HD void store_output(const PaluProblem& p, size_t at, float v) {
  if (p.out16)
    p.out16[at] = p.bf16 ? encode::bf16_bits(v) : encode::half_bits(v);
  else
    p.out[at] = v;
}
KVB_HD float round16(const PaluProblem& p, float x) {
  return p.bf16 ? encode::bf16_value(encode::bf16_bits(x))
                : encode::half_value(encode::half_bits(x));
}

// The latent row (rank values) of token t of sequence b read by KV head j (its group's).
KVB_HD const uint16_t* latent_row(const PaluProblem& p, const void* pool, int b, int j, int t) {
  const int page = p.block_table[size_t(b) * p.max_pages_per_seq + t / p.page_size];
  const size_t row =
      (size_t(page) * (p.kv_heads / p.group) + j / p.group) * p.page_size + t % p.page_size;
  return static_cast<const uint16_t*>(pool) + row * p.rank;
}

// cos and sin of t * inv_freq[i] from the two tables.
KVB_HD void rope_cos_sin(const PaluProblem& p, int t, int i, float& c, float& s) {
  const int half = p.head_dim / 2;
  const float* coarse = p.rope_coarse + size_t(t / kPaluTile) * 2 * half;
  const float* fine = p.rope_fine + size_t(t % kPaluTile) * 2 * half;
  const float ch = coarse[i], sh = coarse[half + i], cl = fine[i], sl = fine[half + i];
  c = fmaf(ch, cl, -sh * sl);
  s = fmaf(sh, cl, ch * sl);
}

// The pre-RoPE key channel c of token t: (L h_t)[c], fp32 sums of 16-bit products.
KVB_HD float key_channel(const PaluProblem& p, int b, int j, int t, int c) {
  const uint16_t* h = latent_row(p, p.k_latent, b, j, t);
  const uint16_t* l =
      static_cast<const uint16_t*>(p.k_basis) + (size_t(j) * p.head_dim + c) * p.rank;
  float acc = 0.f;
  for (int a = 0; a < p.rank; ++a) acc = fmaf(value16(p, l[a]), value16(p, h[a]), acc);
  return acc;
}

// The rotated key of token t, rounded to 16-bit as the score's tensor-core operand: key
// [head_dim]; `pre` [head_dim] scratch.
KVB_HD void rotated_key(const PaluProblem& p, int b, int j, int t, float* pre, float* key) {
  const int half = p.head_dim / 2;
  for (int c = 0; c < p.head_dim; ++c) pre[c] = key_channel(p, b, j, t, c);
  for (int i = 0; i < half; ++i) {
    float cs, sn;
    rope_cos_sin(p, t, i, cs, sn);
    key[i] = round16(p, fmaf(pre[i], cs, -pre[i + half] * sn));
    key[i + half] = round16(p, fmaf(pre[i + half], cs, pre[i] * sn));
  }
}

// Output channel c of query head qh from its normalised latent value sum v_lat [rank].
KVB_HD float output_channel(const PaluProblem& p, int j, const float* v_lat, int c) {
  const float* l = p.v_basis + (size_t(j) * p.head_dim + c) * p.rank;
  float acc = 0.f;
  for (int a = 0; a < p.rank; ++a) acc = fmaf(l[a], v_lat[a], acc);
  return acc;
}

}  // namespace palu

// "" when the problem is valid (what can be checked without reading device memory).
inline const char* palu_check(const PaluProblem& p) {
  if (p.batch < 1 || p.q_heads < 1 || p.kv_heads < 1) return "batch and heads must be positive";
  // kv_heads and batch are a grid's y and z (the combine's x and y).
  if (p.kv_heads > 65535 || p.batch > 65535) return "at most 65535 sequences and KV heads";
  if (p.q_heads % p.kv_heads != 0) return "q_heads must be a multiple of kv_heads";
  if (p.q_heads / p.kv_heads > kPaluMaxQPerKv) return "more than 8 query heads per KV head";
  if (p.group < 1 || p.kv_heads % p.group != 0) return "group must divide kv_heads";
  if (p.head_dim != 64 && p.head_dim != 128) return "head_dim must be 64 or 128";
  if (p.rank < 32 || p.rank > 128 || p.rank % 32 != 0) return "rank must be 32, 64, 96 or 128";
  if (p.page_size < kPaluTile || p.page_size % kPaluTile != 0)
    return "page_size must be a multiple of 16";
  if (p.max_pages_per_seq < 1 || p.rope_tiles < 1) return "no pages or no RoPE tables";
  if (!p.block_table || !p.seq_lens || !p.k_latent || !p.v_latent || !p.k_basis || !p.v_basis ||
      !p.rope_coarse || !p.rope_fine)
    return "a required pointer is null";
  if (p.q16 ? !(p.out16 && !p.q && !p.out) : !(p.q && p.out && !p.out16))
    return "queries and outputs: fp32 q and out, or 16-bit q16 and out16";
  if (!p.kept_lists != !p.kept_counts || !p.kept_counts != !p.tail_start)
    return "kept_lists, kept_counts and tail_start go together";
  if (p.scores != nullptr && p.score_stride < 1) return "scores need a positive score_stride";
  // The kernel reads latents and the key basis 16 bytes at a time, the coarse table 8.
  if ((reinterpret_cast<uintptr_t>(p.k_latent) | reinterpret_cast<uintptr_t>(p.v_latent) |
       reinterpret_cast<uintptr_t>(p.k_basis)) %
          16 !=
      0)
    return "latent pools and key basis must be 16-byte aligned";
  if (reinterpret_cast<uintptr_t>(p.rope_coarse) % 8 != 0)
    return "the coarse RoPE table must be 8-byte aligned";
  return "";
}

// The reference: every (sequence, query head) in order, in fp32. `scratch` holds
// 2 * head_dim + rank + max_len floats, max_len >= every seq_lens entry.
inline void palu_decode_host(const PaluProblem& p, float* scratch) {
  const int d = p.head_dim, gq = p.q_heads / p.kv_heads;
  float* pre = scratch;
  float* key = scratch + d;
  float* v_lat = scratch + 2 * d;
  float* w = v_lat + p.rank;
  for (int b = 0; b < p.batch; ++b)
    for (int qh = 0; qh < p.q_heads; ++qh) {
      const int j = qh / gq;
      const palu::Kept kept = palu::kept(p, b, j);
      const size_t row = (size_t(b) * p.q_heads + qh) * d;
      float m = -INFINITY, sum = 0.f;
      for (int i = 0; i < kept.n; ++i) {
        palu::rotated_key(p, b, j, kept.token(i), pre, key);
        float acc = 0.f;
        for (int c = 0; c < d; ++c)
          acc = fmaf(palu::round16(p, palu::query(p, row + c)), key[c], acc);
        m = fmaxf(m, w[i] = acc * p.softmax_scale);
      }
      if (p.scores != nullptr)
        for (int i = 0; i < kept.n; ++i)
          p.scores[(size_t(b) * p.q_heads + qh) * p.score_stride + i] = w[i];
      for (int i = 0; i < kept.n; ++i) sum += (w[i] = expf(w[i] - m));
      for (int a = 0; a < p.rank; ++a) {
        float acc = 0.f;
        for (int i = 0; i < kept.n; ++i)
          acc = fmaf(
              w[i], palu::value16(p, palu::latent_row(p, p.v_latent, b, j, kept.token(i))[a]), acc);
        v_lat[a] = sum > 0.f ? acc / sum : 0.f;  // no token kept at all: 0, as the device kernel
      }
      for (int c = 0; c < d; ++c)
        palu::store_output(p, row + c, palu::output_channel(p, j, v_lat, c));
    }
}

// The RoPE tables for `tiles` tiles of a model with `inv_freq` [head_dim / 2] (float64):
// coarse [tiles, 2, half] and fine [16, 2, half], cos then sin, angles in float64.
inline void palu_rope_tables(const double* inv_freq, int head_dim, int tiles, float* coarse,
                             float* fine) {
  const int half = head_dim / 2;
  for (int r = 0; r < tiles + kPaluTile; ++r) {
    const bool is_fine = r >= tiles;
    const double pos = is_fine ? double(r - tiles) : double(r) * kPaluTile;
    float* row = is_fine ? fine + size_t(r - tiles) * 2 * half : coarse + size_t(r) * 2 * half;
    for (int i = 0; i < half; ++i) {
      row[i] = float(cos(pos * inv_freq[i]));
      row[half + i] = float(sin(pos * inv_freq[i]));
    }
  }
}

}  // namespace kvbench::kernels
