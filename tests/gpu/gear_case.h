// A GEAR decode problem for the tests of kernels/gear_decode.h: random blocks in GEAR's stored
// layout (any codes, scales, factors and outliers will do for the arithmetic; factors large
// enough that the clamp to half a step bites), laid out in one arena so that the same case
// can be addressed on the host or copied to a device, plus the exact buffer with a NaN row past
// each sequence's last token (a read past it shows). A sequence's blocks: a long first block
// (a prefill's, rank 4), then blocks of `buffer` tokens (rank 2), then fewer than `buffer`
// exact tokens. The answer in float64, from an independent reconstruction: whole blocks
// decoded, L as a matrix product, outliers scattered by walking their lists; then plain
// softmax attention. Host-only, torch-free.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gear_decode.h"
#include "kv_encode.h"
#include "scaled_error.h"

namespace kvbench::gpu_test {

struct GearShape {
  int kv, per, d, bits, key_group, value_group, value_k, buffer;
  bool bf16;
  double key_ratio;  // key outliers per side: round(key_ratio * n / 2), at most n / 2
  std::vector<int> lens;
  int max_rank = 4;  // the first block's rank (the others': at most 2); 0: no L
  std::string name() const {
    return "d" + std::to_string(d) + "_b" + std::to_string(bits) + "_h" + std::to_string(kv) + "x" +
           std::to_string(per) + (bf16 ? "_bf16" : "_fp16") + (max_rank == 0 ? "_r0" : "");
  }
};

inline std::vector<GearShape> gear_shapes() {
  return {GearShape{2, 4, 128, 2, 64, 64, 1, 64, false, 0.04, {1, 17, 64, 65, 200, 1000}},
          GearShape{2, 8, 64, 4, 32, 32, 2, 20, true, 0.1, {5, 20, 21, 99, 333}},
          GearShape{1, 1, 128, 8, 32, 32, 3, 20, false, 0.02, {40, 700}},
          GearShape{4, 2, 96, 2, 64, 32, 0, 64, false, 0.0, {130, 7, 300}},
          // Key groups of 16 and 8 tokens: a 32-token tile spans several (the kernel's per-token
          // group index); bf16 at head_dim 128 (Llama's); blocks without L (rank 0).
          GearShape{2, 4, 128, 4, 16, 32, 2, 20, true, 0.05, {33, 160, 517}},
          GearShape{2, 2, 64, 2, 8, 16, 1, 20, false, 0.03, {45, 250}, 0}};
}

struct GearCase {
  GearShape s;
  struct Side {
    size_t codes, scales, mins, outlier_values, outlier_index, q, p;  // arena offsets
  };
  struct Block {
    int start, n, rank, key_k;
    Side key, value;
  };
  std::vector<uint8_t> arena;
  std::vector<std::vector<Block>> blocks;  // per sequence
  std::vector<int> compressed;
  std::vector<size_t> exact_k, exact_v;  // arena offsets of each sequence's exact rows
  std::vector<int> lens;
  std::vector<float> q;
  std::vector<double> want;
  mutable std::vector<uint8_t> host_tables;

  int max_len() const { return *std::max_element(lens.begin(), lens.end()); }

  // The GearSequence rows then the GearBlock rows, for data at `arena_base` and the tables
  // themselves at `tables_base`.
  std::vector<uint8_t> tables(uintptr_t arena_base, uintptr_t tables_base) const {
    size_t total_blocks = 0;
    for (const auto& b : blocks) total_blocks += b.size();
    const size_t seq_bytes = blocks.size() * sizeof(kernels::GearSequence);
    std::vector<uint8_t> out(seq_bytes + total_blocks * sizeof(kernels::GearBlock));
    size_t next = seq_bytes;
    auto at = [&](size_t offset) { return arena_base + offset; };
    auto side = [&](const Side& x) {
      kernels::GearSide g;
      g.codes = reinterpret_cast<const uint8_t*>(at(x.codes));
      g.scales = reinterpret_cast<const uint16_t*>(at(x.scales));
      g.mins = reinterpret_cast<const uint16_t*>(at(x.mins));
      g.outlier_values = reinterpret_cast<const uint16_t*>(at(x.outlier_values));
      g.outlier_index = reinterpret_cast<const void*>(at(x.outlier_index));
      g.q = reinterpret_cast<const uint16_t*>(at(x.q));
      g.p = reinterpret_cast<const uint16_t*>(at(x.p));
      return g;
    };
    for (size_t b = 0; b < blocks.size(); ++b) {
      kernels::GearSequence seq;
      seq.blocks = reinterpret_cast<const kernels::GearBlock*>(tables_base + next);
      seq.num_blocks = int(blocks[b].size()), seq.compressed = compressed[b];
      seq.exact_k = reinterpret_cast<const uint16_t*>(at(exact_k[b]));
      seq.exact_v = reinterpret_cast<const uint16_t*>(at(exact_v[b]));
      seq.exact_stride = (long long)(s.kv) * s.d;
      std::memcpy(out.data() + b * sizeof(seq), &seq, sizeof(seq));
      for (const Block& x : blocks[b]) {
        kernels::GearBlock g;
        g.start = x.start, g.n = x.n, g.rank = x.rank, g.key_k = x.key_k;
        g.key = side(x.key), g.value = side(x.value);
        std::memcpy(out.data() + next, &g, sizeof(g));
        next += sizeof(g);
      }
    }
    return out;
  }

  // The problem with every pointer in host memory.
  kernels::GearProblem problem(float* out) const {
    host_tables = tables(0, 0);  // sized first, then addressed where it lives
    const std::vector<uint8_t> addressed = tables(reinterpret_cast<uintptr_t>(arena.data()),
                                                  reinterpret_cast<uintptr_t>(host_tables.data()));
    std::memcpy(host_tables.data(), addressed.data(), addressed.size());
    return problem_at(
        static_cast<const kernels::GearSequence*>(static_cast<const void*>(host_tables.data())),
        lens.data(), q.data(), out);
  }
  kernels::GearProblem problem_at(const kernels::GearSequence* seqs, const int* seq_lens,
                                  const float* queries, float* out) const {
    kernels::GearProblem p;
    p.batch = int(lens.size()), p.q_heads = s.kv * s.per, p.kv_heads = s.kv, p.head_dim = s.d;
    p.bits = s.bits, p.key_group = s.key_group, p.value_group = s.value_group;
    p.value_k = s.value_k, p.bf16 = s.bf16, p.seqs = seqs, p.seq_lens = seq_lens;
    p.softmax_scale = 1.f / std::sqrt(float(s.d)), p.q = queries, p.out = out;
    return p;
  }
};

inline GearCase gear_case(const GearShape& shape, uint32_t seed) {
  namespace e = kernels::encode;
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<float> uniform(0.02f, 0.3f);
  auto bits16 = [&](float x) { return shape.bf16 ? e::bf16_bits(x) : e::half_bits(x); };
  auto value16 = [&](uint16_t h) {
    return double(shape.bf16 ? e::bf16_value(h) : e::half_value(h));
  };
  GearCase c;
  c.s = shape;
  c.lens = shape.lens;
  const int H = shape.kv, d = shape.d, row_bytes = d * shape.bits / 8;
  // Arena allocation, 16-byte aligned pieces.
  auto put = [&](size_t bytes) {
    const size_t at = (c.arena.size() + 15) / 16 * 16;
    c.arena.resize(at + bytes);
    return at;
  };
  auto u16 = [&](size_t at) { return reinterpret_cast<uint16_t*>(c.arena.data() + at); };
  // Reconstructions: [sequence][key?][h][t][c] in float64.
  std::vector<std::vector<std::vector<double>>> rebuilt(c.lens.size());
  for (size_t b = 0; b < c.lens.size(); ++b) {
    const int T = c.lens[b], B = shape.buffer;
    const int comp = T - T % B;
    c.compressed.push_back(comp);
    rebuilt[b].assign(2, std::vector<double>(size_t(H) * T * d));
    std::vector<GearCase::Block> list;
    std::vector<int> sizes;
    if (comp > 0) sizes.push_back(B * std::max(1, comp / B / 2));
    for (int done = sizes.empty() ? 0 : sizes[0]; done < comp; done += B) sizes.push_back(B);
    int start = 0;
    for (size_t k = 0; k < sizes.size(); ++k) {
      GearCase::Block blk;
      blk.start = start, blk.n = sizes[k];
      blk.rank = std::min({k == 0 ? shape.max_rank : std::min(2, shape.max_rank), blk.n, d});
      blk.key_k = std::min(int(std::lround(shape.key_ratio * blk.n / 2)), blk.n / 2);
      const int n = blk.n, r = blk.rank;
      for (int key = 1; key >= 0; --key) {
        GearCase::Side& sd = key ? blk.key : blk.value;
        const int groups = key ? (n + shape.key_group - 1) / shape.key_group : n;
        const int width = key ? d : d / shape.value_group;
        const int outl = key ? 2 * blk.key_k * d : n * 2 * shape.value_k;
        sd.codes = put(size_t(H) * n * row_bytes);
        sd.scales = put(size_t(H) * groups * width * 2);
        sd.mins = put(size_t(H) * groups * width * 2);
        sd.outlier_values = put(size_t(H) * outl * 2);
        sd.outlier_index = put(size_t(H) * outl * (key ? 4 : 2));
        sd.q = put(size_t(H) * n * r * 2);
        sd.p = put(size_t(H) * r * d * 2);
        for (size_t i = 0; i < size_t(H) * n * row_bytes; ++i)
          c.arena[sd.codes + i] = uint8_t(rng());
        for (size_t i = 0; i < size_t(H) * groups * width; ++i) {
          u16(sd.scales)[i] = bits16(uniform(rng));
          u16(sd.mins)[i] = bits16(normal(rng) * 0.5f);
        }
        for (size_t i = 0; i < size_t(H) * n * r; ++i) u16(sd.q)[i] = bits16(normal(rng) * 0.4f);
        for (size_t i = 0; i < size_t(H) * r * d; ++i) u16(sd.p)[i] = bits16(normal(rng) * 0.4f);
        for (size_t i = 0; i < size_t(H) * outl; ++i)
          u16(sd.outlier_values)[i] = bits16(normal(rng) * 3.f);
        // Indices: keys, each channel's 2k distinct tokens ascending; values, each token's
        // 2k_v distinct channels ascending.
        const int vectors = key ? d : n, count = key ? 2 * blk.key_k : 2 * shape.value_k,
                  range = key ? n : d;
        for (int h = 0; h < H; ++h)
          for (int v = 0; v < vectors; ++v) {
            std::vector<int> all(static_cast<size_t>(range));
            for (int i = 0; i < range; ++i) all[size_t(i)] = i;
            std::shuffle(all.begin(), all.end(), rng);
            std::sort(all.begin(), all.begin() + count);
            for (int j = 0; j < count; ++j) {
              if (key) {
                reinterpret_cast<int32_t*>(c.arena.data() +
                                           sd.outlier_index)[(size_t(h) * count + j) * d + v] =
                    all[size_t(j)];
              } else {
                reinterpret_cast<int16_t*>(c.arena.data() +
                                           sd.outlier_index)[(size_t(h) * n + v) * count + j] =
                    int16_t(all[size_t(j)]);
              }
            }
          }
        // The reconstruction in float64, whole block at a time.
        std::vector<double>& out = rebuilt[b][size_t(key)];
        const int levels = 8 / shape.bits;
        for (int h = 0; h < H; ++h)
          for (int i = 0; i < n; ++i)
            for (int ch = 0; ch < d; ++ch) {
              const uint8_t byte =
                  c.arena[sd.codes + (size_t(h) * n + i) * row_bytes + ch / levels];
              const int code = (byte >> ((ch % levels) * shape.bits)) & ((1 << shape.bits) - 1);
              const size_t g = key ? (size_t(h) * groups + i / shape.key_group) * d + ch
                                   : (size_t(h) * n + i) * width + ch / shape.value_group;
              const double step = value16(u16(sd.scales)[g]);
              double x = code * step + value16(u16(sd.mins)[g]);
              double l = 0;
              for (int j = 0; j < r; ++j)
                l += value16(u16(sd.q)[(size_t(h) * n + i) * r + j]) *
                     value16(u16(sd.p)[(size_t(h) * r + j) * d + ch]);
              x += std::min(std::max(l, -0.5 * step), 0.5 * step);
              out[(size_t(h) * T + start + i) * d + ch] = x;
            }
        for (int h = 0; h < H; ++h)
          for (int v = 0; v < vectors; ++v)
            for (int j = 0; j < count; ++j) {
              int t, ch;
              size_t at;
              if (key) {
                at = (size_t(h) * count + j) * d + v;
                t = reinterpret_cast<int32_t*>(c.arena.data() + sd.outlier_index)[at], ch = v;
              } else {
                at = (size_t(h) * n + v) * count + j;
                t = v, ch = reinterpret_cast<int16_t*>(c.arena.data() + sd.outlier_index)[at];
              }
              out[(size_t(h) * T + start + t) * d + ch] = value16(u16(sd.outlier_values)[at]);
            }
      }
      list.push_back(blk);
      start += blk.n;
    }
    c.blocks.push_back(list);
    // The exact rows, then one NaN row.
    const int w = T - comp;
    for (int key = 1; key >= 0; --key) {
      const size_t at = put(size_t(w + 1) * H * d * 2);
      (key ? c.exact_k : c.exact_v).push_back(at);
      for (int t = 0; t <= w; ++t)
        for (int h = 0; h < H; ++h)
          for (int ch = 0; ch < d; ++ch) {
            const uint16_t v = t < w ? bits16(normal(rng)) : bits16(NAN);
            u16(at)[(size_t(t) * H + h) * d + ch] = v;
            if (t < w) rebuilt[b][size_t(key)][(size_t(h) * T + comp + t) * d + ch] = value16(v);
          }
    }
  }
  const int heads = H * shape.per;
  for (size_t i = 0; i < c.lens.size() * heads * d; ++i) c.q.push_back(normal(rng));
  // Attention in float64.
  for (size_t b = 0; b < c.lens.size(); ++b) {
    const int T = c.lens[b];
    for (int qh = 0; qh < heads; ++qh) {
      const int h = qh / shape.per;
      const float* qv = c.q.data() + (b * heads + qh) * d;
      std::vector<double> w(static_cast<size_t>(T));
      double m = -INFINITY, sum = 0;
      for (int t = 0; t < T; ++t) {
        double acc = 0;
        for (int ch = 0; ch < d; ++ch) acc += qv[ch] * rebuilt[b][1][(size_t(h) * T + t) * d + ch];
        m = std::max(m, w[size_t(t)] = acc / std::sqrt(double(d)));
      }
      for (double& x : w) sum += (x = std::exp(x - m));
      for (int ch = 0; ch < d; ++ch) {
        double acc = 0;
        for (int t = 0; t < T; ++t)
          acc += w[size_t(t)] * rebuilt[b][0][(size_t(h) * T + t) * d + ch];
        c.want.push_back(acc / sum);
      }
    }
  }
  return c;
}

// Shape i of gear_shapes() with its seed, and the host reference's answer to it (outputs
// [batch, q_heads, head_dim]), for the GPU test and the emulated one.
inline GearCase gear_case_of(int i) { return gear_case(gear_shapes()[size_t(i)], 7 + uint32_t(i)); }
inline std::vector<float> gear_host_answer(const GearCase& c) {
  std::vector<float> host(c.want.size());
  std::vector<float> scratch(size_t(2 * c.s.d + 1) * size_t(c.max_len()));
  kernels::gear_decode_host(c.problem(host.data()), scratch.data());
  return host;
}

}  // namespace kvbench::gpu_test
