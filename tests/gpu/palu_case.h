// A Palu decode problem for the tests of kernels/palu_decode.h: random 16-bit latents in pages,
// one per group of `group` KV heads (G-LRD; 1: one per head) (shuffled block tables; pages nothing
// wrote are NaN, so a read past a sequence shows), a random key basis (any matrix will do for the
// arithmetic), a random value basis, random queries, the RoPE tables of theta 10000, and the answer
// in float64: every key reconstructed from the latents and the basis as stored, rotated at its
// position with float64 angles and rounded to 16-bit as the kernel rounds its tensor-core operand
// (queries too), then plain softmax attention and the projection of the latent value sum (and
// the scaled scores it softmaxes).
// With `evict`, sequences keep subsets as a retention policy leaves them (kept lists in
// palu_decode.h's layout): sequence b % 3 == 0 keeps every token, 1 a shuffled list of
// distinct positions per latent head plus a tail of its newest tokens, 2 a tail alone; the
// answer attends the kept tokens only, each rotated at its own position.
// Host-only.
#pragma once

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "kv_encode.h"
#include "palu_decode.h"
#include "scaled_error.h"

namespace kvbench::gpu_test {

struct PaluCase {
  int batch, q_heads, kv_heads, head_dim, rank, page_size, max_pages, group;
  bool bf16;
  std::vector<int> lens, table;
  std::vector<uint16_t> k_latent, v_latent, k_basis;  // 16-bit
  std::vector<float> v_basis, q, coarse, fine;
  int tiles;
  std::vector<double> want;
  // Each attended token's scaled score, [batch, q_heads, max_len()] (past a count: NaN).
  std::vector<double> want_scores;
  // With `evict`: per sequence its lists ([latent heads, count]), counts and tail starts.
  std::vector<std::vector<int>> lists;
  std::vector<int> counts, tails;
  mutable std::vector<const int*> list_ptrs;  // problem()'s, into `lists`

  // The i-th token KV head j of sequence b attends (`n`: how many).
  int token(int b, int j, int i) const {
    if (counts.empty()) return i;
    return i < counts[b] ? lists[b][size_t(j / group) * counts[b] + i] : tails[b] + i - counts[b];
  }
  int attended(int b) const {
    return counts.empty() ? lens[b] : counts[b] + std::max(0, lens[b] - tails[b]);
  }

  kernels::PaluProblem problem(float* out) const {
    kernels::PaluProblem p;
    p.batch = batch, p.q_heads = q_heads, p.kv_heads = kv_heads, p.head_dim = head_dim;
    p.group = group;
    p.rank = rank, p.bf16 = bf16, p.page_size = page_size, p.max_pages_per_seq = max_pages;
    p.block_table = table.data(), p.seq_lens = lens.data();
    p.k_latent = k_latent.data(), p.v_latent = v_latent.data();
    p.k_basis = k_basis.data(), p.v_basis = v_basis.data();
    p.rope_coarse = coarse.data(), p.rope_tiles = tiles, p.rope_fine = fine.data();
    p.softmax_scale = 1.f / std::sqrt(float(head_dim)), p.q = q.data(), p.out = out;
    list_ptrs.clear();
    for (const std::vector<int>& l : lists) list_ptrs.push_back(l.empty() ? nullptr : l.data());
    if (!counts.empty())
      p.kept_lists = list_ptrs.data(), p.kept_counts = counts.data(), p.tail_start = tails.data();
    return p;
  }
  int max_len() const { return *std::max_element(lens.begin(), lens.end()); }
};

inline PaluCase palu_case(int kv_heads, int q_per_kv, int head_dim, int rank, bool bf16,
                          std::vector<int> lens, uint32_t seed, int page_size = 32, int group = 1,
                          bool evict = false) {
  namespace e = kernels::encode;
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  auto bits = [&](float x) { return bf16 ? e::bf16_bits(x) : e::half_bits(x); };
  auto value = [&](uint16_t h) { return bf16 ? e::bf16_value(h) : e::half_value(h); };
  PaluCase c{};
  c.batch = int(lens.size()), c.q_heads = kv_heads * q_per_kv, c.kv_heads = kv_heads;
  c.head_dim = head_dim, c.rank = rank, c.page_size = page_size, c.bf16 = bf16, c.lens = lens;
  c.group = group;
  const int latent_heads = kv_heads / group;
  const int max_len = c.max_len();
  c.max_pages = (max_len + page_size - 1) / page_size;
  // Physical pages shuffled over the batch, one spare page per sequence that nothing maps.
  std::vector<int> pages(size_t(c.batch) * (c.max_pages + 1));
  std::iota(pages.begin(), pages.end(), 0);
  std::shuffle(pages.begin(), pages.end(), rng);
  c.table.assign(pages.begin(), pages.begin() + size_t(c.batch) * c.max_pages);
  const size_t pool = pages.size() * latent_heads * page_size * rank;
  for (auto* lat : {&c.k_latent, &c.v_latent}) {
    lat->assign(pool, bf16 ? 0x7fc0 : 0x7e00);  // NaN: never read
    for (int b = 0; b < c.batch; ++b)
      for (int j = 0; j < latent_heads; ++j)
        for (int t = 0; t < lens[b]; ++t) {
          const int page = c.table[size_t(b) * c.max_pages + t / page_size];
          uint16_t* row =
              lat->data() + ((size_t(page) * latent_heads + j) * page_size + t % page_size) * rank;
          for (int a = 0; a < rank; ++a) row[a] = bits(2.f * normal(rng));
        }
  }
  if (evict) {
    for (int b = 0; b < c.batch; ++b) {
      const int T = lens[b];
      int count = 0, tail = 0;
      std::vector<int> list;
      if (b % 3 == 1 && T >= 4) {
        tail = T - std::min(T / 3, 20);
        count = tail / 2;
        for (int j = 0; j < latent_heads; ++j) {  // `count` distinct positions below the tail
          std::vector<int> all(static_cast<size_t>(tail));
          std::iota(all.begin(), all.end(), 0);
          std::shuffle(all.begin(), all.end(), rng);
          list.insert(list.end(), all.begin(), all.begin() + count);
        }
      } else if (b % 3 == 2) {
        tail = T / 2;
      }
      c.lists.push_back(list), c.counts.push_back(count), c.tails.push_back(tail);
    }
  }
  // Latents ~ N(0, 4) and basis entries ~ N(0, 1/rank): keys ~ N(0, 4) per channel; with
  // queries ~ N(0, 1/4) the scores are ~ N(0, 1), softmax neither flat nor one-hot.
  c.k_basis.resize(size_t(kv_heads) * head_dim * rank);
  for (uint16_t& x : c.k_basis) x = bits(normal(rng) / std::sqrt(float(rank)));
  c.v_basis.resize(size_t(kv_heads) * head_dim * rank);
  for (float& x : c.v_basis) x = normal(rng) / std::sqrt(float(rank));
  c.q.resize(size_t(c.batch) * c.q_heads * head_dim);
  for (float& x : c.q) x = 0.5f * normal(rng);
  const int half = head_dim / 2;
  std::vector<double> inv_freq(half);
  for (int i = 0; i < half; ++i) inv_freq[i] = std::pow(10000.0, -2.0 * i / head_dim);
  c.tiles = (max_len + kernels::kPaluTile - 1) / kernels::kPaluTile + 1;
  c.coarse.resize(size_t(c.tiles) * head_dim), c.fine.resize(size_t(kernels::kPaluTile) * head_dim);
  kernels::palu_rope_tables(inv_freq.data(), head_dim, c.tiles, c.coarse.data(), c.fine.data());

  // float64.
  // KV head j reads its group's latent, j / group.
  auto row_of = [&](const std::vector<uint16_t>& lat, int b, int j, int t) {
    const int page = c.table[size_t(b) * c.max_pages + t / page_size];
    return lat.data() +
           ((size_t(page) * latent_heads + j / group) * page_size + t % page_size) * rank;
  };
  const double scale = 1.0 / std::sqrt(double(head_dim));
  c.want.resize(c.q.size());
  c.want_scores.assign(size_t(c.batch) * c.q_heads * max_len, NAN);
  for (int b = 0; b < c.batch; ++b)
    for (int qh = 0; qh < c.q_heads; ++qh) {
      const int j = qh / q_per_kv, T = c.attended(b);
      const float* q = c.q.data() + (size_t(b) * c.q_heads + qh) * head_dim;
      std::vector<double> s(T), pre(head_dim);
      for (int i = 0; i < T; ++i) {
        const int t = c.token(b, j, i);  // its slot and position
        const uint16_t* h = row_of(c.k_latent, b, j, t);
        for (int ch = 0; ch < head_dim; ++ch) {
          double acc = 0;
          for (int a = 0; a < rank; ++a)
            acc += double(value(c.k_basis[(size_t(j) * head_dim + ch) * rank + a])) * value(h[a]);
          pre[ch] = acc;
        }
        double dot = 0;
        for (int i = 0; i < half; ++i) {
          const double cs = std::cos(t * inv_freq[i]), sn = std::sin(t * inv_freq[i]);
          const double k1 = value(bits(float(pre[i] * cs - pre[i + half] * sn)));
          const double k2 = value(bits(float(pre[i + half] * cs + pre[i] * sn)));
          dot += value(bits(q[i])) * k1 + value(bits(q[i + half])) * k2;
        }
        s[i] = dot * scale;
        c.want_scores[(size_t(b) * c.q_heads + qh) * max_len + i] = s[i];
      }
      const double mx = *std::max_element(s.begin(), s.end());
      double sum = 0;
      for (double& x : s) sum += (x = std::exp(x - mx));
      std::vector<double> v_lat(rank, 0.0);
      for (int i = 0; i < T; ++i) {
        const uint16_t* h = row_of(c.v_latent, b, j, c.token(b, j, i));
        for (int a = 0; a < rank; ++a) v_lat[a] += s[i] / sum * value(h[a]);
      }
      for (int ch = 0; ch < head_dim; ++ch) {
        double acc = 0;
        for (int a = 0; a < rank; ++a)
          acc += double(c.v_basis[(size_t(j) * head_dim + ch) * rank + a]) * v_lat[a];
        c.want[(size_t(b) * c.q_heads + qh) * head_dim + ch] = acc;
      }
    }
  return c;
}

}  // namespace kvbench::gpu_test
