// Quantize-on-append: a batch of sequences' new tokens enter the paged pools of kv_format.h.
// The work is cut into independent units (a 32-channel block of one token, a byte column of
// one KIVI key page, a channel group of one KIVI value, ...) by functions compiled for the
// host and the device alike: append_kv_host() below loops over them, the CUDA launcher
// (kv_append_launcher.h) gives each unit a thread. Both write the same bytes.
//
// With T0 tokens held and n new ones (T1 = T0 + n), a KIVI cache with window R and group
// G = page_size keeps keys t < T1 - (T1 mod R) and values t < T1 - R in pages (kv_format.h),
// so the append
//   phase 0: encodes the key pages that became complete and the values that left the window
//            (reading each token from the ring when t < T0, from the input otherwise), and
//            every token of the per-token formats;
//   phase 1: writes the new tokens that stay in the full-precision window into the rings.
// Phase 1 overwrites ring slots phase 0 reads, hence two passes (two launches on a stream).
// Torch-free and CUDA-free: plain C++ unless compiled by nvcc.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kv_encode.h"
#include "kv_format.h"

namespace kvbench::kernels {

// The writable side of a paged cache (the layouts PagedKv reads).
struct PagedKvStore {
  KvFormat format = KvFormat::kFp16;
  int page_size = 16;  // tokens per page (KIVI: its group G)
  void* k_data = nullptr;
  void* v_data = nullptr;
  void* k_meta = nullptr;
  void* v_meta = nullptr;
  const float* k_head_scale = nullptr;  // kFp8: [rows, kv_heads] (AppendProblem::seq_rows)
  const float* v_head_scale = nullptr;
  void* k_residual = nullptr;  // KIVI: [rows, kv_heads, residual, head_dim] fp16 rings
  void* v_residual = nullptr;
  int residual = 0;  // KIVI's R, a multiple of page_size
};

struct AppendProblem {
  int batch = 0, kv_heads = 0, head_dim = 0;
  int max_pages_per_seq = 0;  // block_table's row length
  // [batch, max_pages_per_seq]: every page that holds a token after the append is assigned.
  const int* block_table = nullptr;
  const int* old_lens = nullptr;  // [batch] tokens held before the append (T0)
  const int* cu_new = nullptr;    // [batch + 1] offsets of each sequence's new tokens in k, v
  // [batch] each sequence's row in the KIVI rings and fp8 head scales; null: row b.
  const int* seq_rows = nullptr;
  int max_new = 0;  // >= every sequence's new-token count (sizes the launch)
  // [cu_new[batch], kv_heads, head_dim] (the packed batch's rows): fp16, bf16 for kBf16.
  const void* k = nullptr;
  const void* v = nullptr;
};

namespace append {

constexpr int kBlock = 32;  // channels per unit of the per-token formats and the rings

KVB_HD int max_i(int a, int b) { return a < b ? b : a; }

struct Seq {
  int t0, n, t1, row0;  // tokens held, new, held after; first row of its new tokens in k, v
};

KVB_HD Seq sequence(const AppendProblem& p, int b) {
  const int t0 = p.old_lens[b], row0 = p.cu_new[b], n = p.cu_new[b + 1] - row0;
  return {t0, n, t0 + n, row0};
}

KVB_HD int seq_row(const AppendProblem& p, int b) { return p.seq_rows ? p.seq_rows[b] : b; }

KVB_HD int key_pages_end(int t, int residual) { return t - t % residual; }
KVB_HD int value_pages_end(int t, int residual) { return t > residual ? t - residual : 0; }

KVB_HD size_t page_slab(const AppendProblem& p, const PagedKvStore& s, int b, int h, int t) {
  return size_t(p.block_table[size_t(b) * p.max_pages_per_seq + t / s.page_size]) * p.kv_heads + h;
}
// Row of token t of head h in the pools (rows of page_size per slab).
KVB_HD size_t page_row(const AppendProblem& p, const PagedKvStore& s, int b, int h, int t) {
  return page_slab(p, s, b, h, t) * s.page_size + t % s.page_size;
}

KVB_HD const uint16_t* input_row(const AppendProblem& p, bool key, int row, int h) {
  return static_cast<const uint16_t*>(key ? p.k : p.v) +
         (size_t(row) * p.kv_heads + h) * p.head_dim;
}
KVB_HD uint16_t* ring_row(const AppendProblem& p, const PagedKvStore& s, bool key, int b, int h,
                          int t) {
  return static_cast<uint16_t*>(key ? s.k_residual : s.v_residual) +
         ((size_t(seq_row(p, b)) * p.kv_heads + h) * s.residual + t % s.residual) * p.head_dim;
}
// Token t's 16-bit row: in the ring while t < T0 (KIVI), else among the new rows.
KVB_HD const uint16_t* token_row(const AppendProblem& p, const PagedKvStore& s, const Seq& q,
                                 bool key, int b, int h, int t) {
  return t < q.t0 ? ring_row(p, s, key, b, h, t) : input_row(p, key, q.row0 + t - q.t0, h);
}

// Units of `phase` for sequence b, per KV head.
KVB_HD int unit_count(const AppendProblem& p, const PagedKvStore& s, int phase, int b) {
  const Seq q = sequence(p, b);
  const int D = p.head_dim;
  if (!is_kivi(s.format)) return phase == 0 ? 2 * q.n * (D / kBlock) : 0;
  const int R = s.residual;
  if (phase == 0) {
    const int key_pages = (key_pages_end(q.t1, R) - key_pages_end(q.t0, R)) / s.page_size;
    const int values = value_pages_end(q.t1, R) - value_pages_end(q.t0, R);
    return key_pages * (D * format_bits(s.format) / 8) + values * (D / s.page_size);
  }
  const int keys = q.t1 - max_i(q.t0, key_pages_end(q.t1, R));
  const int values = q.t1 - max_i(q.t0, q.t1 - R);
  return (keys + values) * (D / kBlock);
}

// An upper bound of unit_count over the batch, from host-known sizes only.
inline int max_unit_count(const AppendProblem& p, const PagedKvStore& s, int phase) {
  const int D = p.head_dim;
  if (!is_kivi(s.format)) return phase == 0 ? 2 * p.max_new * (D / kBlock) : 0;
  const int R = s.residual;
  if (phase == 0)
    return ((p.max_new + R) / s.page_size) * (D * format_bits(s.format) / 8) +
           p.max_new * (D / s.page_size);
  return 2 * (p.max_new < R ? p.max_new : R) * (D / kBlock);
}

// One 32-channel block of token t (a new token) in a per-token format.
KVB_HD void token_block(const AppendProblem& p, const PagedKvStore& s, bool key, int b, int h,
                        int t, const uint16_t* in, int blk) {
  const int D = p.head_dim;
  const size_t r = page_row(p, s, b, h, t);
  void* data = key ? s.k_data : s.v_data;
  in += blk * kBlock;
  float x[kBlock];
  switch (s.format) {
    case KvFormat::kFp16:
    case KvFormat::kBf16:
      for (int i = 0; i < kBlock; ++i) encode::put_u16(data, r * D + blk * kBlock + i, in[i]);
      return;
    case KvFormat::kInt8:
    case KvFormat::kInt4: {
      const bool int8 = s.format == KvFormat::kInt8;
      for (int i = 0; i < kBlock; ++i) x[i] = encode::half_value(in[i]);
      uint8_t* codes =
          static_cast<uint8_t*>(data) + r * (int8 ? D : D / 2) + blk * (int8 ? kBlock : kBlock / 2);
      uint16_t d;
      encode::encode_q_block(int8, x, codes, &d);
      encode::put_u16(key ? s.k_meta : s.v_meta, r * (D / 32) + blk, d);
      return;
    }
    case KvFormat::kInt4Asym:
    case KvFormat::kInt2: {
      const int bits = format_bits(s.format);
      for (int i = 0; i < kBlock; ++i) x[i] = encode::half_value(in[i]);
      uint8_t* codes =
          static_cast<uint8_t*>(data) + r * (size_t(D) * bits / 8) + blk * (kBlock * bits / 8);
      uint16_t sm[2];
      encode::encode_asym_block(bits, x, codes, sm);
      void* meta = key ? s.k_meta : s.v_meta;
      encode::put_u16(meta, (r * (D / 32) + blk) * 2, sm[0]);
      encode::put_u16(meta, (r * (D / 32) + blk) * 2 + 1, sm[1]);
      return;
    }
    case KvFormat::kFp8: {
      const float inv =
          1.0f / (key ? s.k_head_scale : s.v_head_scale)[size_t(seq_row(p, b)) * p.kv_heads + h];
      uint8_t* codes = static_cast<uint8_t*>(data) + r * D + blk * kBlock;
      for (int i = 0; i < kBlock; ++i)
        codes[i] = encode::e4m3_bits(encode::mul_rn(encode::half_value(in[i]), inv));
      return;
    }
    default:
      return;  // KIVI: pages and rings below
  }
}

// KIVI keys: the `col`-th byte column (8 / bits channels) of key page `page`, per channel
// over the page's G tokens.
KVB_HD void kivi_key_column(const AppendProblem& p, const PagedKvStore& s, const Seq& q, int b,
                            int h, int page, int col) {
  const int D = p.head_dim, G = s.page_size, bits = format_bits(s.format);
  const int levels = (1 << bits) - 1, per = 8 / bits, t_first = page * G;
  const size_t slab = page_slab(p, s, b, h, t_first), row_bytes = size_t(D) * bits / 8;
  uint16_t* meta = static_cast<uint16_t*>(s.k_meta) + slab * 2 * D;  // scale row, min row
  uint8_t* codes = static_cast<uint8_t*>(s.k_data) + slab * G * row_bytes;
  for (int d = col * per; d < (col + 1) * per; ++d) {
    float lo = 0.f, hi = 0.f;
    for (int i = 0; i < G; ++i) {
      const float x = encode::half_value(token_row(p, s, q, true, b, h, t_first + i)[d]);
      lo = i == 0 ? x : encode::min_f(lo, x);
      hi = i == 0 ? x : encode::max_f(hi, x);
    }
    const encode::MinMax mm(lo, hi, levels);
    meta[d] = mm.scale_h;
    meta[D + d] = mm.min_h;
    for (int i = 0; i < G; ++i) {
      const float x = encode::half_value(token_row(p, s, q, true, b, h, t_first + i)[d]);
      encode::put_code(codes + i * row_bytes, d, bits, mm.code(x, levels));
    }
  }
}

// KIVI values: channel group g (G channels) of token t, per token.
KVB_HD void kivi_value_group(const AppendProblem& p, const PagedKvStore& s, const Seq& q, int b,
                             int h, int t, int g) {
  const int D = p.head_dim, G = s.page_size, bits = format_bits(s.format);
  const int levels = (1 << bits) - 1;
  const size_t r = page_row(p, s, b, h, t);
  const uint16_t* in = token_row(p, s, q, false, b, h, t) + g * G;
  float lo = encode::half_value(in[0]), hi = lo;
  for (int i = 1; i < G; ++i) {
    const float x = encode::half_value(in[i]);
    lo = encode::min_f(lo, x);
    hi = encode::max_f(hi, x);
  }
  const encode::MinMax mm(lo, hi, levels);
  uint16_t* meta = static_cast<uint16_t*>(s.v_meta) + (r * (D / G) + g) * 2;  // (scale, min)
  meta[0] = mm.scale_h;
  meta[1] = mm.min_h;
  uint8_t* codes = static_cast<uint8_t*>(s.v_data) + r * (size_t(D) * bits / 8);
  for (int i = g * G; i < (g + 1) * G; ++i)
    encode::put_code(codes, i, bits, mm.code(encode::half_value(in[i - g * G]), levels));
}

// Runs unit `u` (< unit_count) of `phase` for sequence b, head h.
KVB_HD void run_unit(const AppendProblem& p, const PagedKvStore& s, int phase, int b, int h,
                     int u) {
  const Seq q = sequence(p, b);
  const int D = p.head_dim, blocks = D / kBlock;
  if (!is_kivi(s.format)) {  // units: [side][new token][block]
    const bool key = u < q.n * blocks;
    const int i = (key ? u : u - q.n * blocks) / blocks;
    token_block(p, s, key, b, h, q.t0 + i, input_row(p, key, q.row0 + i, h), u % blocks);
    return;
  }
  const int R = s.residual, G = s.page_size;
  if (phase == 0) {  // units: key pages x byte columns, then values x channel groups
    const int cols = D * format_bits(s.format) / 8;
    const int key_units = (key_pages_end(q.t1, R) - key_pages_end(q.t0, R)) / G * cols;
    if (u < key_units) {
      kivi_key_column(p, s, q, b, h, key_pages_end(q.t0, R) / G + u / cols, u % cols);
    } else {
      u -= key_units;
      kivi_value_group(p, s, q, b, h, value_pages_end(q.t0, R) + u / (D / G), u % (D / G));
    }
    return;
  }
  // phase 1 units: key ring tokens x blocks, then value ring tokens x blocks
  const int key_first = max_i(q.t0, key_pages_end(q.t1, R));
  const int key_units = (q.t1 - key_first) * blocks;
  const bool key = u < key_units;
  if (!key) u -= key_units;
  const int t = (key ? key_first : max_i(q.t0, q.t1 - R)) + u / blocks, blk = u % blocks;
  const uint16_t* in = input_row(p, key, q.row0 + t - q.t0, h) + blk * kBlock;
  uint16_t* out = ring_row(p, s, key, b, h, t) + blk * kBlock;
  for (int i = 0; i < kBlock; ++i) out[i] = in[i];
}

// The CUDA launch of a phase (kv_append.cu): blocks of kThreads threads, grid [blocks_x,
// kv_heads, batch], each thread taking the units x, x + threads_x, ... of its (sequence, head),
// x its index along the grid's x (a grid-stride loop: max_unit_count may exceed the blocks).
// Units of one phase write disjoint bytes and read none another unit of the phase writes, so
// any order of the threads gives the same pools (tests/unit/kv_append_test.cpp runs them
// shuffled).
constexpr int kThreads = 128;
constexpr int kMaxBlocksX = 1024;  // units beyond are taken by the grid-stride loop

// The grid's x extent for `phase`; 0: nothing to launch.
inline int blocks_x(const AppendProblem& p, const PagedKvStore& s, int phase) {
  const int64_t units = max_unit_count(p, s, phase);
  const int64_t blocks = (units + kThreads - 1) / kThreads;
  return blocks < kMaxBlocksX ? int(blocks) : kMaxBlocksX;
}

KVB_HD void run_thread(const AppendProblem& p, const PagedKvStore& s, int phase, int b, int h,
                       int x, int threads_x) {
  const int units = unit_count(p, s, phase, b);
  for (int u = x; u < units; u += threads_x) run_unit(p, s, phase, b, h, u);
}

}  // namespace append

// Why `p` and `s` cannot be appended ("" when they can): shapes the units assume, pointers.
inline const char* append_check(const AppendProblem& p, const PagedKvStore& s) {
  if (p.batch < 1 || p.kv_heads < 1 || p.max_new < 0) return "batch, kv_heads >= 1 expected";
  if (p.head_dim < append::kBlock || p.head_dim % append::kBlock != 0)
    return "head_dim must be a positive multiple of 32";
  if (!p.block_table || !p.old_lens || !p.cu_new || !p.k || !p.v || !s.k_data || !s.v_data)
    return "null block_table, old_lens, cu_new, k, v or page pool";
  if ((is_block(s.format) || is_kivi(s.format)) && (!s.k_meta || !s.v_meta))
    return "null scale pool";
  if (s.format == KvFormat::kFp8 && (!s.k_head_scale || !s.v_head_scale))
    return "fp8 needs per-head scales";
  if (s.page_size < 1) return "page_size must be >= 1";
  if (is_kivi(s.format)) {
    if (s.page_size % 4 != 0 || p.head_dim % s.page_size != 0)
      return "KIVI's group (page_size) must be a multiple of 4 dividing head_dim";
    if (s.residual < s.page_size || s.residual % s.page_size != 0)
      return "KIVI's residual must be a positive multiple of page_size";
    if (!s.k_residual || !s.v_residual) return "KIVI needs its residual rings";
  }
  return "";
}

// The host reference: appends with host pointers, phase by phase. Also the CPU engine's path.
inline void append_kv_host(const AppendProblem& p, const PagedKvStore& s) {
  for (int phase = 0; phase < 2; ++phase)
    for (int b = 0; b < p.batch; ++b) {
      const int units = append::unit_count(p, s, phase, b);
      for (int h = 0; h < p.kv_heads; ++h)
        for (int u = 0; u < units; ++u) append::run_unit(p, s, phase, b, h, u);
    }
}

}  // namespace kvbench::kernels
