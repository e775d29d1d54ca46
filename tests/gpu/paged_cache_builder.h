// Host-side builder of paged caches in every kernels/kv_format.h format, for the GPU tests
// and benchmark: encodes fp32 tokens with the formats' formulas (the same ones the CPU codecs
// in src/kv use) and records what each stored token decodes to, so a float64 reference can
// attend over exactly the values the kernel sees.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "kv_format.h"

namespace kvbench::gpu_test {

struct HostPagedCache {
  kernels::KvFormat format;
  int batch, kv_heads, head_dim, page_size, residual, max_pages;
  std::vector<int> seq_lens;                            // [batch]
  std::vector<int> block_table;                         // [batch, max_pages]
  int num_pages = 0;                                    // physical pages in the pools
  std::vector<uint8_t> k_data, v_data, k_meta, v_meta;  // pools, kv_format.h layouts
  std::vector<uint8_t> k_residual, v_residual;          // KIVI rings [batch, kv_heads, R, D] fp16
  std::vector<float> k_head_scale, v_head_scale;        // fp8 [batch, kv_heads]
  // What each token decodes to: [batch][kv_heads][T_b][head_dim] flattened per sequence.
  std::vector<std::vector<float>> k_decoded, v_decoded;
};

// keys/values: per sequence [kv_heads, T_b, head_dim] fp32. Physical pages are shuffled with
// `rng`; unused pool bytes are filled with 0xff (NaN in fp16/bf16, so a stray read shows).
HostPagedCache build_paged_cache(kernels::KvFormat format, int kv_heads, int head_dim,
                                 int page_size, int residual,
                                 const std::vector<std::vector<float>>& keys,
                                 const std::vector<std::vector<float>>& values,
                                 const std::vector<int>& seq_lens, std::mt19937& rng);

// Random tokens [heads, T, D], N(0, 1), with every 13th channel 6x larger when `outliers`
// (keys have outlier channels in real models).
std::vector<float> random_tokens(std::mt19937& rng, int heads, int T, int D, bool outliers);

// Moves each sequence's KIVI ring rows and fp8 head scales from row b to row rows[b] (a
// permutation), as a cache holds them when its batch is not in row order (seq_rows).
void move_rows(HostPagedCache& c, const std::vector<int>& rows);

// The reverse of the batch order: the rows the tests use so that seq_rows is exercised.
std::vector<int> reversed_rows(int batch);

uint16_t float_to_half_bits(float x);
float half_bits_to_float(uint16_t h);
uint16_t float_to_bf16_bits(float x);
float bf16_bits_to_float(uint16_t h);

}  // namespace kvbench::gpu_test
