// Storage formats the GPU decode kernels read, and their paged layouts. Torch-free.
//
// Every format keeps keys and values in a pool of pages; a page holds `page_size` tokens of
// one KV head of one layer, and a sequence's block table maps its logical pages to physical
// ones (vLLM's layout). Pools are indexed [physical_page, kv_head, ...]:
//
//   kFp16, kBf16  data [pages, kv_heads, page_size, head_dim] of 16-bit floats; no meta.
//   kInt8 (q8_0)  data [pages, kv_heads, page_size, head_dim] int8 codes;
//                 meta [pages, kv_heads, page_size, head_dim / 32] fp16 scales; x = q * d.
//   kInt4 (q4_0)  data [pages, kv_heads, page_size, head_dim / 2] bytes, channel 2i in the low
//                 nibble of byte i, 2i+1 in the high one;
//                 meta [pages, kv_heads, page_size, head_dim / 32] fp16 scales; x = (q - 8) * d.
//   kInt4Asym (q4_1), kInt2 (q2_1)  data [pages, kv_heads, page_size, head_dim * bits / 8]
//                 bytes, channel d at bit (d mod (8 / bits)) * bits of byte d / (8 / bits);
//                 meta [pages, kv_heads, page_size, head_dim / 32, 2] fp16 (scale, min) per
//                 32-channel block; x = q * d + m (the CPU codecs' asymmetric rule).
//   kFp8          data [pages, kv_heads, page_size, head_dim] e4m3fn bytes;
//                 head_scale [batch, kv_heads] fp32: per sequence, as the fp8 codec calibrates
//                 each sequence on its first tokens (per-layer scales repeat one value); x = f * s.
//   kKivi2/kKivi4 page_size is KIVI's group G. Codes: data [pages, kv_heads, page_size,
//                 head_dim * bits / 8], channel d at bit (d mod (8 / bits)) * bits of byte
//                 d / (8 / bits). Keys per channel over the page's G tokens:
//                 k_meta [pages, kv_heads, 2, head_dim] fp16 (scale row, then min row).
//                 Values per token over G channels: v_meta [pages, kv_heads, page_size,
//                 head_dim / G, 2] fp16 (scale, min). x = q * s + m.
//                 Full-precision window: residual rings [batch, kv_heads, R, head_dim] fp16,
//                 token t in slot t mod R. With T tokens, keys t < T - (T mod R) and values
//                 t < T - R are read from the pages, the rest from the rings (methods.md).
//
// Queries and outputs are bf16 for kBf16 and fp16 for every other format.
#pragma once

#include <cstddef>
#include <cstdint>

// Host and device functions (the appender runs the same code on both; kv_encode.h).
#if defined(__CUDACC__)
#define KVB_HD __host__ __device__ __forceinline__
#else
#define KVB_HD inline
#endif

namespace kvbench::kernels {

enum class KvFormat : int {
  kFp16 = 0,
  kBf16,
  kInt8,
  kInt4,
  kFp8,
  kKivi2,
  kKivi4,
  kInt4Asym,
  kInt2
};

inline const char* format_name(KvFormat f) {
  switch (f) {
    case KvFormat::kFp16:
      return "fp16";
    case KvFormat::kBf16:
      return "bf16";
    case KvFormat::kInt8:
      return "int8";
    case KvFormat::kInt4:
      return "int4";
    case KvFormat::kFp8:
      return "fp8";
    case KvFormat::kKivi2:
      return "kivi-2";
    case KvFormat::kKivi4:
      return "kivi-4";
    case KvFormat::kInt4Asym:
      return "int4-asym";
    case KvFormat::kInt2:
      return "int2";
  }
  return "?";
}

// Query heads per KV head the decode kernels take: a group's heads are one mma's M rows.
constexpr int kDecodeMaxQPerKv = 8;

constexpr KVB_HD bool is_kivi(KvFormat f) { return f == KvFormat::kKivi2 || f == KvFormat::kKivi4; }
// Per-token 32-channel blocks with fp16 meta: a scale (q8_0, q4_0), a scale and a min (q4_1,
// q2_1).
constexpr KVB_HD bool has_min(KvFormat f) {
  return f == KvFormat::kInt4Asym || f == KvFormat::kInt2;
}
constexpr KVB_HD bool is_block(KvFormat f) {
  return f == KvFormat::kInt8 || f == KvFormat::kInt4 || has_min(f);
}

// Code bits per element (16 for the float formats).
KVB_HD int format_bits(KvFormat f) {
  switch (f) {
    case KvFormat::kFp16:
    case KvFormat::kBf16:
      return 16;
    case KvFormat::kInt8:
    case KvFormat::kFp8:
      return 8;
    case KvFormat::kInt4:
    case KvFormat::kKivi4:
    case KvFormat::kInt4Asym:
      return 4;
    case KvFormat::kKivi2:
    case KvFormat::kInt2:
      return 2;
  }
  return 0;
}

// Bytes of one page's data and meta for one KV head, keys or values.
struct PageBytes {
  size_t data = 0, meta = 0;
};
inline PageBytes page_bytes(KvFormat f, bool keys, int page_size, int head_dim) {
  PageBytes b;
  b.data = size_t(page_size) * head_dim * format_bits(f) / 8;
  if (is_block(f)) b.meta = size_t(page_size) * (head_dim / 32) * (has_min(f) ? 4 : 2);
  if (is_kivi(f))
    b.meta = keys ? size_t(2) * head_dim * 2 : size_t(page_size) * (head_dim / page_size) * 4;
  return b;
}

// Bytes a decode step reads per token per KV head (keys + values, codes + meta), the
// full-precision window and per-head scales excluded: the unit of the "ideal byte ratio".
inline double bytes_per_token(KvFormat f, int page_size, int head_dim) {
  PageBytes k = page_bytes(f, true, page_size, head_dim),
            v = page_bytes(f, false, page_size, head_dim);
  return double(k.data + k.meta + v.data + v.meta) / page_size;
}

}  // namespace kvbench::kernels
