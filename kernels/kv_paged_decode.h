// What a stored token of a paged cache decodes to, read straight from the pools of
// kv_format.h: the values the GPU decode kernel attends over, written out. The CPU paged
// cache (src/kv/paged_cache.cpp) attends over them with the reference attention, which makes
// it the oracle of the GPU path on any machine; on a GPU, dequantize_paged()
// (kv_paged_decode_launcher.h) runs the same code for prefill attention. Torch-free and
// CUDA-free: plain C++ unless compiled by nvcc.
#pragma once

#include <cstdint>

#include "kv_append.h"
#include "kv_encode.h"

namespace kvbench::kernels {

// Channels [d0, d1) of token t (of T held) of KV head h, keys or values, into out[0, d1 - d0).
// `pages`: the sequence's block-table row; `seq_row`: the sequence's row in the KIVI rings and
// fp8 scales. (A GPU warp decodes a token this way, each lane its own channels.)
KVB_HD void decode_paged_channels(const PagedKvStore& s, const int* pages, int kv_heads,
                                  int head_dim, int seq_row, bool key, int h, int t, int T, int d0,
                                  int d1, float* out) {
  namespace e = encode;
  const int D = head_dim, P = s.page_size, R = s.residual;
  const size_t slab = size_t(pages[t / P]) * kv_heads + h, row = slab * P + t % P;
  const uint8_t* data = static_cast<const uint8_t*>(key ? s.k_data : s.v_data);
  const uint16_t* meta = static_cast<const uint16_t*>(key ? s.k_meta : s.v_meta);
  switch (s.format) {
    case KvFormat::kFp16:
    case KvFormat::kBf16: {
      const uint16_t* x = reinterpret_cast<const uint16_t*>(data) + row * D;
      for (int d = d0; d < d1; ++d)
        out[d - d0] = s.format == KvFormat::kFp16 ? e::half_value(x[d]) : e::bf16_value(x[d]);
      return;
    }
    case KvFormat::kInt8:
      for (int d = d0; d < d1; ++d)
        out[d - d0] =
            float(int8_t(data[row * D + d])) * e::half_value(meta[row * (D / 32) + d / 32]);
      return;
    case KvFormat::kInt4:
      for (int d = d0; d < d1; ++d) {
        const int q = (data[row * (D / 2) + d / 2] >> (4 * (d % 2))) & 0xf;
        out[d - d0] = float(q - 8) * e::half_value(meta[row * (D / 32) + d / 32]);
      }
      return;
    case KvFormat::kInt4Asym:
    case KvFormat::kInt2: {
      const int bits = format_bits(s.format), per = 8 / bits, mask = (1 << bits) - 1;
      const uint8_t* codes = data + row * (size_t(D) * bits / 8);
      for (int d = d0; d < d1; ++d) {
        const int c = (codes[d / per] >> ((d % per) * bits)) & mask;
        const uint16_t* sm = meta + (row * (D / 32) + d / 32) * 2;  // (scale, min)
        out[d - d0] = fmaf(float(c), e::half_value(sm[0]), e::half_value(sm[1]));
      }
      return;
    }
    case KvFormat::kFp8: {
      const float scale = (key ? s.k_head_scale : s.v_head_scale)[size_t(seq_row) * kv_heads + h];
      for (int d = d0; d < d1; ++d) out[d - d0] = e::e4m3_value(data[row * D + d]) * scale;
      return;
    }
    case KvFormat::kKivi2:
    case KvFormat::kKivi4:
      break;
  }
  const int bits = format_bits(s.format), per = 8 / bits, mask = (1 << bits) - 1;
  const bool paged = key ? t < append::key_pages_end(T, R) : t < append::value_pages_end(T, R);
  if (!paged) {  // the full-precision window
    const uint16_t* x = static_cast<const uint16_t*>(key ? s.k_residual : s.v_residual) +
                        ((size_t(seq_row) * kv_heads + h) * R + t % R) * D;
    for (int d = d0; d < d1; ++d) out[d - d0] = e::half_value(x[d]);
    return;
  }
  const uint8_t* codes = data + row * (size_t(D) * bits / 8);
  for (int d = d0; d < d1; ++d) {
    const int c = (codes[d / per] >> ((d % per) * bits)) & mask;
    // keys: [slab][scale row, min row][D]; values: [row][group][(scale, min)]
    const uint16_t* sm = key ? meta + slab * 2 * D + d : meta + (row * (D / P) + d / P) * 2;
    const float scale = e::half_value(sm[0]), min = e::half_value(key ? sm[D] : sm[1]);
    out[d - d0] = fmaf(float(c), scale, min);
  }
}

// Token t (of T held) of KV head h, keys or values, into out[head_dim].
KVB_HD void decode_paged_token(const PagedKvStore& s, const int* pages, int kv_heads, int head_dim,
                               int seq_row, bool key, int h, int t, int T, float* out) {
  decode_paged_channels(s, pages, kv_heads, head_dim, seq_row, key, h, t, T, 0, head_dim, out);
}

}  // namespace kvbench::kernels
