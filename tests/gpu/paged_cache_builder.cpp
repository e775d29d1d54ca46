#include "paged_cache_builder.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <stdexcept>

namespace kvbench::gpu_test {

using kernels::KvFormat;

uint16_t float_to_half_bits(float x) {
  __half h = __float2half_rn(x);
  uint16_t bits;
  std::memcpy(&bits, &h, 2);
  return bits;
}
float half_bits_to_float(uint16_t bits) {
  __half h;
  std::memcpy(&h, &bits, 2);
  return __half2float(h);
}
uint16_t float_to_bf16_bits(float x) {
  __nv_bfloat16 h = __float2bfloat16_rn(x);
  uint16_t bits;
  std::memcpy(&bits, &h, 2);
  return bits;
}
float bf16_bits_to_float(uint16_t bits) {
  __nv_bfloat16 h;
  std::memcpy(&h, &bits, 2);
  return __bfloat162float(h);
}

std::vector<float> random_tokens(std::mt19937& rng, int heads, int T, int D, bool outliers) {
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> x(size_t(heads) * T * D);
  for (size_t i = 0; i < x.size(); ++i) x[i] = normal(rng) * (outliers && i % D % 13 == 0 ? 6 : 1);
  return x;
}

void move_rows(HostPagedCache& c, const std::vector<int>& rows) {
  auto move = [&](auto& v, size_t row_elems) {
    if (v.empty()) return;
    auto moved = v;
    for (int b = 0; b < c.batch; ++b)
      std::copy(v.begin() + b * row_elems, v.begin() + (b + 1) * row_elems,
                moved.begin() + size_t(rows[b]) * row_elems);
    v.swap(moved);
  };
  const size_t ring_bytes = size_t(c.kv_heads) * c.residual * c.head_dim * 2;
  move(c.k_residual, ring_bytes);
  move(c.v_residual, ring_bytes);
  move(c.k_head_scale, size_t(c.kv_heads));
  move(c.v_head_scale, size_t(c.kv_heads));
}

std::vector<int> reversed_rows(int batch) {
  std::vector<int> rows(batch);
  for (int b = 0; b < batch; ++b) rows[b] = batch - 1 - b;
  return rows;
}

namespace {

float round_half(float x) { return half_bits_to_float(float_to_half_bits(x)); }

void put_u16(std::vector<uint8_t>& buf, size_t byte_offset, uint16_t v) {
  std::memcpy(buf.data() + byte_offset, &v, 2);
}

// Sets code `c` (bits wide) of channel d in a packed row starting at byte `row`.
void put_code(std::vector<uint8_t>& buf, size_t row, int d, int bits, int c) {
  const int per = 8 / bits;
  uint8_t& byte = buf[row + d / per];
  const int shift = (d % per) * bits;
  byte = uint8_t((byte & ~(((1 << bits) - 1) << shift)) | (c << shift));
}

// KIVI's rule as src/kv/minmax_quant.cpp applies it: min rounded first, the scale from it.
struct MinMaxQuant {
  float scale, min;
  int code(float x, int levels) const {
    const float inv = scale != 0.f ? 1.f / scale : 0.f;
    return std::clamp(int(std::nearbyint((x - min) * inv)), 0, levels);
  }
  float decode(int c) const { return std::fma(float(c), scale, min); }
};

MinMaxQuant min_max(const float* x, int n, int stride, int levels) {
  float lo = x[0], hi = x[0];
  for (int i = 1; i < n; ++i) lo = std::min(lo, x[i * stride]), hi = std::max(hi, x[i * stride]);
  const float m = round_half(lo);
  return {round_half((hi - m) / levels), m};
}

class Builder {
 public:
  Builder(HostPagedCache& c) : c_(c), D_(c.head_dim), P_(c.page_size) {}

  size_t slab(int b, int page) const {
    return size_t(c_.block_table[b * c_.max_pages + page]) * c_.kv_heads;
  }
  size_t row(int b, int h, int t) const { return (slab(b, t / P_) + h) * P_ + t % P_; }
  size_t row_bytes() const { return size_t(D_) * kernels::format_bits(c_.format) / 8; }

  // Per-token formats (everything but KIVI): one row at a time, keys and values alike.
  void encode_token(bool key, int b, int h, int t, const float* x, float* out) {
    auto& data = key ? c_.k_data : c_.v_data;
    auto& meta = key ? c_.k_meta : c_.v_meta;
    const size_t r = row(b, h, t), base = r * row_bytes();
    switch (c_.format) {
      case KvFormat::kFp16:
        for (int d = 0; d < D_; ++d) {
          put_u16(data, base + 2 * d, float_to_half_bits(x[d]));
          out[d] = round_half(x[d]);
        }
        break;
      case KvFormat::kBf16:
        for (int d = 0; d < D_; ++d) {
          put_u16(data, base + 2 * d, float_to_bf16_bits(x[d]));
          out[d] = bf16_bits_to_float(float_to_bf16_bits(x[d]));
        }
        break;
      case KvFormat::kInt8:
      case KvFormat::kInt4:
        for (int g = 0; g < D_ / 32; ++g)
          encode_block(c_.format == KvFormat::kInt8, data, meta, r, g, x, out);
        break;
      case KvFormat::kInt4Asym:
      case KvFormat::kInt2: {
        // q4_1 / q2_1: per 32-channel block the min-max rule, (scale, min) interleaved
        const int bits = kernels::format_bits(c_.format), levels = (1 << bits) - 1;
        for (int g = 0; g < D_ / 32; ++g) {
          const MinMaxQuant mq = min_max(x + 32 * g, 32, 1, levels);
          put_u16(meta, ((r * (D_ / 32) + g) * 2) * 2, float_to_half_bits(mq.scale));
          put_u16(meta, ((r * (D_ / 32) + g) * 2 + 1) * 2, float_to_half_bits(mq.min));
          for (int i = 0; i < 32; ++i) {
            const int ch = 32 * g + i, code = mq.code(x[ch], levels);
            put_code(data, base, ch, bits, code);
            out[ch] = mq.decode(code);
          }
        }
        break;
      }
      case KvFormat::kFp8: {
        // x times the reciprocal of the scale, as the CPU codec computes it
        const float s = (key ? c_.k_head_scale : c_.v_head_scale)[size_t(b) * c_.kv_heads + h];
        const float inv = 1.0f / s;
        for (int d = 0; d < D_; ++d) {
          __nv_fp8_storage_t f = __nv_cvt_float_to_fp8(x[d] * inv, __NV_SATFINITE, __NV_E4M3);
          data[base + d] = f;
          __half_raw hr = __nv_cvt_fp8_to_halfraw(f, __NV_E4M3);
          out[d] = half_bits_to_float(hr.x) * s;
        }
        break;
      }
      default:
        throw std::logic_error("encode_token: KIVI is encoded per page");
    }
  }

  // q8_0: d = amax / 127, q = round(x / d). q4_0: d = m / -8 for the signed extreme m,
  // q = min(15, trunc(x / d + 8.5)). Codes against the fp16-rounded d.
  void encode_block(bool int8, std::vector<uint8_t>& data, std::vector<uint8_t>& meta, size_t r,
                    int g, const float* x, float* out) {
    const float* xg = x + 32 * g;
    float amax = 0.f, extreme = 0.f;
    for (int i = 0; i < 32; ++i)
      if (std::fabs(xg[i]) > amax) amax = std::fabs(xg[i]), extreme = xg[i];
    const float d = round_half(int8 ? amax / 127.f : extreme / -8.f);
    const float inv = d != 0.f ? 1.f / d : 0.f;
    put_u16(meta, (r * (D_ / 32) + g) * 2, float_to_half_bits(d));
    for (int i = 0; i < 32; ++i) {
      const int ch = 32 * g + i;
      if (int8) {
        const int q = std::clamp(int(std::nearbyint(xg[i] * inv)), -127, 127);
        data[r * D_ + ch] = uint8_t(int8_t(q));
        out[ch] = float(q) * d;
      } else {
        const int q = std::min(15, int(xg[i] * inv + 8.5f));
        put_code(data, r * (D_ / 2), ch, 4, q);
        out[ch] = float(q - 8) * d;
      }
    }
  }

  // KIVI keys of one full page (P tokens of head h): per channel over the tokens.
  void encode_kivi_key_page(int b, int h, int page, const float* x /* [T, D] */, float* out) {
    const int bits = kernels::format_bits(c_.format), levels = (1 << bits) - 1;
    const size_t s = slab(b, page) + h;
    for (int d = 0; d < D_; ++d) {
      const float* col = x + size_t(page) * P_ * D_ + d;
      MinMaxQuant mq = min_max(col, P_, D_, levels);
      put_u16(c_.k_meta, (s * 2 * D_ + d) * 2, float_to_half_bits(mq.scale));
      put_u16(c_.k_meta, (s * 2 * D_ + D_ + d) * 2, float_to_half_bits(mq.min));
      for (int i = 0; i < P_; ++i) {
        const int c = mq.code(col[size_t(i) * D_], levels);
        put_code(c_.k_data, (s * P_ + i) * row_bytes(), d, bits, c);
        out[(size_t(page) * P_ + i) * D_ + d] = mq.decode(c);
      }
    }
  }

  // KIVI values of one token: per token over groups of G = page_size channels.
  void encode_kivi_value(int b, int h, int t, const float* x, float* out) {
    const int bits = kernels::format_bits(c_.format), levels = (1 << bits) - 1, G = P_;
    const size_t r = row(b, h, t);
    for (int g = 0; g < D_ / G; ++g) {
      MinMaxQuant mq = min_max(x + g * G, G, 1, levels);
      put_u16(c_.v_meta, ((r * (D_ / G) + g) * 2) * 2, float_to_half_bits(mq.scale));
      put_u16(c_.v_meta, ((r * (D_ / G) + g) * 2 + 1) * 2, float_to_half_bits(mq.min));
      for (int i = 0; i < G; ++i) {
        const int c = mq.code(x[g * G + i], levels);
        put_code(c_.v_data, r * row_bytes(), g * G + i, bits, c);
        out[g * G + i] = mq.decode(c);
      }
    }
  }

  void put_ring(bool key, int b, int h, int t, const float* x, float* out) {
    auto& ring = key ? c_.k_residual : c_.v_residual;
    const size_t base = ((size_t(b) * c_.kv_heads + h) * c_.residual + t % c_.residual) * D_;
    for (int d = 0; d < D_; ++d) {
      put_u16(ring, (base + d) * 2, float_to_half_bits(x[d]));
      out[d] = round_half(x[d]);
    }
  }

 private:
  HostPagedCache& c_;
  int D_, P_;
};

}  // namespace

HostPagedCache build_paged_cache(KvFormat format, int kv_heads, int head_dim, int page_size,
                                 int residual, const std::vector<std::vector<float>>& keys,
                                 const std::vector<std::vector<float>>& values,
                                 const std::vector<int>& seq_lens, std::mt19937& rng) {
  HostPagedCache c{format, int(seq_lens.size()), kv_heads, head_dim, page_size, residual, 0};
  c.seq_lens = seq_lens;
  const int D = head_dim, P = page_size;
  for (int T : seq_lens) c.max_pages = std::max(c.max_pages, (T + P - 1) / P);
  for (int T : seq_lens) c.num_pages += (T + P - 1) / P;
  c.num_pages += 3;  // spare pages nobody owns
  std::vector<int> perm(c.num_pages);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  c.block_table.assign(size_t(c.batch) * c.max_pages, -1);
  int next = 0;
  for (int b = 0; b < c.batch; ++b)
    for (int j = 0; j < (seq_lens[b] + P - 1) / P; ++j)
      c.block_table[b * c.max_pages + j] = perm[next++];
  for (int& id : c.block_table)
    if (id < 0) id = perm.back();  // table tails point somewhere valid but unowned

  for (bool key : {true, false}) {
    kernels::PageBytes pb = kernels::page_bytes(format, key, P, D);
    (key ? c.k_data : c.v_data).assign(size_t(c.num_pages) * kv_heads * pb.data, 0xff);
    (key ? c.k_meta : c.v_meta).assign(size_t(c.num_pages) * kv_heads * pb.meta, 0xff);
  }
  if (kernels::is_kivi(format)) {
    c.k_residual.assign(size_t(c.batch) * kv_heads * residual * D * 2, 0xff);
    c.v_residual.assign(c.k_residual.size(), 0xff);
  }
  if (format == KvFormat::kFp8) {
    for (auto* side : {&keys, &values}) {
      auto& scales = side == &keys ? c.k_head_scale : c.v_head_scale;
      scales.assign(size_t(c.batch) * kv_heads, 0.f);  // per sequence and head: amax / 448
      for (int b = 0; b < c.batch; ++b)
        for (int h = 0; h < kv_heads; ++h)
          for (size_t i = 0; i < size_t(seq_lens[b]) * D; ++i)
            scales[size_t(b) * kv_heads + h] =
                std::max(scales[size_t(b) * kv_heads + h],
                         std::fabs((*side)[b][h * size_t(seq_lens[b]) * D + i]));
      for (float& s : scales) s = s > 0.f ? s / 448.f : 1.f;
    }
  }

  Builder builder(c);
  c.k_decoded.resize(c.batch);
  c.v_decoded.resize(c.batch);
  for (int b = 0; b < c.batch; ++b) {
    const int T = seq_lens[b];
    c.k_decoded[b].assign(size_t(kv_heads) * T * D, 0.f);
    c.v_decoded[b].assign(size_t(kv_heads) * T * D, 0.f);
    for (int h = 0; h < kv_heads; ++h) {
      const float* kx = keys[b].data() + size_t(h) * T * D;
      const float* vx = values[b].data() + size_t(h) * T * D;
      float* ko = c.k_decoded[b].data() + size_t(h) * T * D;
      float* vo = c.v_decoded[b].data() + size_t(h) * T * D;
      if (!kernels::is_kivi(format)) {
        for (int t = 0; t < T; ++t) {
          builder.encode_token(true, b, h, t, kx + size_t(t) * D, ko + size_t(t) * D);
          builder.encode_token(false, b, h, t, vx + size_t(t) * D, vo + size_t(t) * D);
        }
        continue;
      }
      // KIVI quantizes tokens as the model produced them (model dtype, fp16), like the CPU
      // codec, whose full-precision window holds fp16 values until they are quantized.
      std::vector<float> k16(kx, kx + size_t(T) * D), v16(vx, vx + size_t(T) * D);
      for (float& x : k16) x = round_half(x);
      for (float& x : v16) x = round_half(x);
      kx = k16.data(), vx = v16.data();
      const int key_end = T - T % residual, main_end = std::max(0, T - residual);
      for (int page = 0; page < key_end / P; ++page)
        builder.encode_kivi_key_page(b, h, page, kx, ko);
      for (int t = key_end; t < T; ++t)
        builder.put_ring(true, b, h, t, kx + size_t(t) * D, ko + size_t(t) * D);
      for (int t = 0; t < main_end; ++t)
        builder.encode_kivi_value(b, h, t, vx + size_t(t) * D, vo + size_t(t) * D);
      for (int t = main_end; t < T; ++t)
        builder.put_ring(false, b, h, t, vx + size_t(t) * D, vo + size_t(t) * D);
    }
  }
  return c;
}

}  // namespace kvbench::gpu_test
