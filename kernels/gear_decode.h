// Decode attention over GEAR's compressed blocks, read in place (methods.md, GEAR). Each
// compressed block of a sequence's tokens stores, per KV head and side (keys, values),
// X ~ D + L + S:
//   D  min-max codes of `bits` bits: keys per channel in groups of key_group tokens (one
//      scale/min row of head_dim values per token group), values per token in groups of
//      value_group channels (head_dim / value_group scales and mins per token);
//   L  rank-r factors Q [n, r] and P^T [r, head_dim]: the value at (i, c) adds
//      clamp(sum_j Q[i, j] P^T[j, c], -s/2, s/2), s its group's quantization step;
//   S  outliers stored exactly, which replace the reconstruction: keys 2k per channel (rows of
//      head_dim values, each channel's token indices within the block ascending), values
//      2 value_k per token (ascending channel indices).
// The newest tokens of a sequence (fewer than GEAR's streaming buffer) are held exactly in the
// model dtype. Scales, mins, outliers and factors are 16-bit (the model dtype: fp16 or bf16).
//
// A step reconstructs each token's key and value in fp32 where it reads them (shared memory
// on the GPU) and attends over them; no reconstructed cache is written to global memory.
// The per-element functions below run on the host and the device alike: gear_decode_host()
// is the reference the CUDA kernel (gear_decode.cu) is tested against, and the same
// reconstruction as the CPU codec's (src/kv/gear_codec.cpp) on the same stored values.
// Torch-free and CUDA-free unless compiled by nvcc.
#pragma once

#include <math.h>

#include <cstddef>
#include <cstdint>

#include "kv_encode.h"
#include "kv_format.h"

namespace kvbench::kernels {

constexpr int kGearTile = 32;         // tokens a block of the kernel reconstructs at a time
constexpr int kGearThreads = 128;     // threads of a block of the kernel
constexpr int kGearMaxQPerKv = 8;     // query heads per KV head
constexpr int kGearMaxHeadDim = 128;  // the kernel's shared tiles are sized for this

// One side (keys or values) of one compressed block, every KV head.
struct GearSide {
  const uint8_t* codes = nullptr;    // [kv_heads, n, head_dim * bits / 8], low bits first
  const uint16_t* scales = nullptr;  // keys [kv_heads, ceil(n / key_group), head_dim],
  const uint16_t* mins = nullptr;    // values [kv_heads, n, head_dim / value_group]
  // keys [kv_heads, 2 key_k, head_dim] with int32 token indices within the block;
  // values [kv_heads, n, 2 value_k] with int16 channel indices
  const uint16_t* outlier_values = nullptr;
  const void* outlier_index = nullptr;
  const uint16_t* q = nullptr;  // [kv_heads, n, rank]
  const uint16_t* p = nullptr;  // [kv_heads, rank, head_dim] (P^T)
};

struct GearBlock {
  int start = 0, n = 0;  // tokens [start, start + n) of the sequence
  int rank = 0;          // of both sides' factors (0: no L)
  int key_k = 0;         // key outliers per side of each channel
  GearSide key, value;
};

struct GearSequence {
  const GearBlock* blocks = nullptr;  // in token order, covering [0, compressed)
  int num_blocks = 0, compressed = 0;
  // Token t >= compressed of KV head h: exact_x + (t - compressed) * exact_stride + h * head_dim.
  const uint16_t* exact_k = nullptr;
  const uint16_t* exact_v = nullptr;
  long long exact_stride = 0;
};

struct GearProblem {
  int batch = 0, q_heads = 0, kv_heads = 0, head_dim = 0;
  int bits = 2, key_group = 64, value_group = 64, value_k = 0;
  bool bf16 = false;                   // 16-bit values are bf16 (else fp16)
  const GearSequence* seqs = nullptr;  // [batch]
  const int* seq_lens = nullptr;       // [batch] tokens held, the new one included (>= 1)
  float softmax_scale = 0.f;
  const float* q = nullptr;  // [batch, q_heads, head_dim] fp32, RoPE applied
  float* out = nullptr;      // [batch, q_heads, head_dim] fp32
};

namespace gear {

KVB_HD float value16(const GearProblem& p, uint16_t bits) {
  return p.bf16 ? encode::bf16_value(bits) : encode::half_value(bits);
}

KVB_HD int code(const uint8_t* row, int c, int bits) {
  if (bits == 8) return row[c];
  if (bits == 4) return (row[c >> 1] >> ((c & 1) * 4)) & 0xF;
  return (row[c >> 2] >> ((c & 3) * 2)) & 0x3;
}

// D + clamp(L) at token i (within block b) and channel c of KV head h: what every position
// holds but the outliers, which replace it.
KVB_HD float element(const GearProblem& p, const GearBlock& b, bool key, int h, int i, int c) {
  const GearSide& s = key ? b.key : b.value;
  const int d = p.head_dim;
  const uint8_t* row = s.codes + (size_t(h) * b.n + i) * size_t(d * p.bits / 8);
  size_t at;
  if (key) {
    const int groups = (b.n + p.key_group - 1) / p.key_group;
    at = (size_t(h) * groups + i / p.key_group) * d + c;
  } else {
    at = (size_t(h) * b.n + i) * size_t(d / p.value_group) + c / p.value_group;
  }
  const float step = value16(p, s.scales[at]);
  float x = float(code(row, c, p.bits)) * step + value16(p, s.mins[at]);
  if (b.rank > 0) {
    const uint16_t* qi = s.q + (size_t(h) * b.n + i) * b.rank;
    const uint16_t* pc = s.p + size_t(h) * b.rank * d + c;
    float l = 0.f;
    for (int j = 0; j < b.rank; ++j) l += value16(p, qi[j]) * value16(p, pc[size_t(j) * d]);
    const float half = 0.5f * fabsf(step);  // a constant group's step may be negative
    x += fminf(fmaxf(l, -half), half);
  }
  return x;
}

// Key outliers of channel c in block b, KV head h: row j's token is index[j * head_dim + c]
// (ascending in j), its value values[j * head_dim + c], j < 2 key_k.
KVB_HD const int32_t* key_outlier_index(const GearProblem& p, const GearBlock& b, int h) {
  return static_cast<const int32_t*>(b.key.outlier_index) + size_t(h) * 2 * b.key_k * p.head_dim;
}
KVB_HD const uint16_t* key_outlier_values(const GearProblem& p, const GearBlock& b, int h) {
  return b.key.outlier_values + size_t(h) * 2 * b.key_k * p.head_dim;
}
// The first row of channel c whose token is >= lo (2 key_k when none).
KVB_HD int first_key_outlier(const GearProblem& p, const GearBlock& b, const int32_t* index, int c,
                             int lo) {
  int a = 0, z = 2 * b.key_k;
  while (a < z) {
    const int mid = (a + z) / 2;
    if (index[size_t(mid) * p.head_dim + c] < lo) {
      a = mid + 1;
    } else {
      z = mid;
    }
  }
  return a;
}

// Value outliers of token i in block b, KV head h: 2 value_k (channel, value) pairs.
KVB_HD const int16_t* value_outlier_index(const GearProblem& p, const GearBlock& b, int h, int i) {
  return static_cast<const int16_t*>(b.value.outlier_index) + (size_t(h) * b.n + i) * 2 * p.value_k;
}
KVB_HD const uint16_t* value_outlier_values(const GearProblem& p, const GearBlock& b, int h,
                                            int i) {
  return b.value.outlier_values + (size_t(h) * b.n + i) * 2 * p.value_k;
}

// The block holding token t (< compressed) of sequence s.
KVB_HD int block_of(const GearSequence& s, int t) {
  int a = 0, z = s.num_blocks - 1;
  while (a < z) {
    const int mid = (a + z + 1) / 2;
    if (s.blocks[mid].start <= t) {
      a = mid;
    } else {
      z = mid - 1;
    }
  }
  return a;
}

// Token t of sequence s at KV head h, keys or values, reconstructed: out [head_dim].
KVB_HD void token(const GearProblem& p, const GearSequence& s, bool key, int h, int t, float* out) {
  const int d = p.head_dim;
  if (t >= s.compressed) {
    const uint16_t* x =
        (key ? s.exact_k : s.exact_v) + (t - s.compressed) * s.exact_stride + size_t(h) * d;
    for (int c = 0; c < d; ++c) out[c] = value16(p, x[c]);
    return;
  }
  const GearBlock& b = s.blocks[block_of(s, t)];
  const int i = t - b.start;
  for (int c = 0; c < d; ++c) out[c] = element(p, b, key, h, i, c);
  if (key) {
    const int32_t* index = key_outlier_index(p, b, h);
    const uint16_t* values = key_outlier_values(p, b, h);
    for (int c = 0; c < d; ++c) {
      const int j = first_key_outlier(p, b, index, c, i);
      if (j < 2 * b.key_k && index[size_t(j) * d + c] == i)
        out[c] = value16(p, values[size_t(j) * d + c]);
    }
  } else {
    const int16_t* index = value_outlier_index(p, b, h, i);
    const uint16_t* values = value_outlier_values(p, b, h, i);
    for (int j = 0; j < 2 * p.value_k; ++j) out[index[j]] = value16(p, values[j]);
  }
}

}  // namespace gear

// "" when the problem is valid (what can be checked without reading device memory).
inline const char* gear_check(const GearProblem& p) {
  if (p.batch < 1 || p.q_heads < 1 || p.kv_heads < 1) return "batch and heads must be positive";
  if (p.q_heads % p.kv_heads != 0) return "q_heads must be a multiple of kv_heads";
  if (p.q_heads / p.kv_heads > kGearMaxQPerKv) return "more than 8 query heads per KV head";
  if (p.head_dim < 1 || p.head_dim > kGearMaxHeadDim) return "head_dim must be in [1, 128]";
  if (p.bits != 2 && p.bits != 4 && p.bits != 8) return "bits must be 2, 4 or 8";
  if (p.head_dim * p.bits % 8 != 0) return "head_dim does not pack into whole bytes";
  if (p.key_group < 1 || p.value_group < 1 || p.head_dim % p.value_group != 0)
    return "key_group must be positive and value_group must divide head_dim";
  if (p.value_k < 0 || 2 * p.value_k > p.head_dim) return "value_k must be in [0, head_dim / 2]";
  if (!p.seqs || !p.seq_lens || !p.q || !p.out) return "a required pointer is null";
  return "";
}

// The reference: every (sequence, query head) in order, in fp32, over each KV head's tokens
// reconstructed first. `scratch` holds (2 * head_dim + 1) * max_len floats, max_len >= every
// seq_lens entry.
inline void gear_decode_host(const GearProblem& p, float* scratch) {
  const int d = p.head_dim, gq = p.q_heads / p.kv_heads;
  for (int b = 0; b < p.batch; ++b) {
    const int T = p.seq_lens[b];
    float* keys = scratch;
    float* values = keys + size_t(T) * d;
    float* w = values + size_t(T) * d;
    for (int h = 0; h < p.kv_heads; ++h) {
      for (int t = 0; t < T; ++t) {
        gear::token(p, p.seqs[b], true, h, t, keys + size_t(t) * d);
        gear::token(p, p.seqs[b], false, h, t, values + size_t(t) * d);
      }
      for (int qh = h * gq; qh < (h + 1) * gq; ++qh) {
        const float* q = p.q + (size_t(b) * p.q_heads + qh) * d;
        float* out = p.out + (size_t(b) * p.q_heads + qh) * d;
        float m = -INFINITY, sum = 0.f;
        for (int t = 0; t < T; ++t) {
          float acc = 0.f;
          for (int c = 0; c < d; ++c) acc += q[c] * keys[size_t(t) * d + c];
          m = fmaxf(m, w[t] = acc * p.softmax_scale);
        }
        for (int t = 0; t < T; ++t) sum += (w[t] = expf(w[t] - m));
        for (int c = 0; c < d; ++c) {
          float acc = 0.f;
          for (int t = 0; t < T; ++t) acc += w[t] * values[size_t(t) * d + c];
          out[c] = sum > 0.f ? acc / sum : 0.f;  // no token at all: 0, as the device kernel
        }
      }
    }
  }
}

}  // namespace kvbench::kernels
