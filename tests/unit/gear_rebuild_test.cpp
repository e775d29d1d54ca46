// GEAR's tile rebuild (kernels/gear_rebuild.h), the device code of the GPU kernel itself, run
// on the CPU (tests/unit/cuda_emulation.h: a block's 128 threads as fibers meeting at each
// __syncthreads, CUDA's 16-bit conversions by the host's _Float16 and a shift). Every element
// of every tile must be bit for bit gear::token's (the host reference the kernel tests use),
// written at least once, and nothing written outside the tile's [tokens, head_dim]. Random
// shapes: head_dim 128 and 64 (a channel per thread) and 96, 64 and 8 (the generic path),
// 2/4/8-bit codes, fp16 and bf16, key groups of 1 to 80 tokens (tiles spanning several),
// every value group, ranks 0 to 6 (the registers' path up to 4 and the one past it), key and
// value outliers, blocks of 1 to 150 tokens, exact rows with padding. The GPU runs the same
// code in tests/gpu/gear_decode_test.cpp; this runs wherever the tests do.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gear_decode.h"

#include "cuda_emulation.h"  // last before the device header
#include "gear_rebuild.h"

namespace kvbench::kernels {
namespace {

// A shared-memory cell that counts its writes (atomically: two threads writing one cell at
// once is what the test looks for, not something it may itself get wrong).
struct Cell {
  float value = NAN;
  std::atomic<int> writes{0};
  Cell& operator=(float x) {
    value = x;
    writes.fetch_add(1, std::memory_order_relaxed);
    return *this;
  }
};
struct Tiles {
  Cell k[kGearTile][kGearMaxHeadDim + 1], v[kGearTile][kGearMaxHeadDim + 1];
};

// Owned storage for one case's GEAR blocks.
struct Arena {
  std::vector<std::unique_ptr<std::vector<uint8_t>>> parts;
  template <class T>
  T* make(size_t n) {
    if (n == 0) return nullptr;
    parts.push_back(std::make_unique<std::vector<uint8_t>>(n * sizeof(T)));
    return reinterpret_cast<T*>(parts.back()->data());
  }
};

uint16_t random16(std::mt19937& rng, bool bf16) {
  const float x = std::normal_distribution<float>()(rng);
  if (bf16) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    return uint16_t(u >> 16);
  }
  const _Float16 h = _Float16(x);
  uint16_t b;
  std::memcpy(&b, &h, 2);
  return b;
}

struct Case {
  GearProblem p;
  GearSequence s;
  std::vector<GearBlock> blocks;
  Arena arena;
  int tokens = 0;
};

// One side's random codes, scales, mins, factors and outliers (indices ascending per vector).
void fill_side(Case& c, GearBlock& b, bool key, std::mt19937& rng) {
  const GearProblem& p = c.p;
  const int H = p.kv_heads, d = p.head_dim, n = b.n;
  GearSide& side = key ? b.key : b.value;
  const size_t codes = size_t(H) * n * (d * p.bits / 8);
  uint8_t* code = c.arena.make<uint8_t>(codes);
  for (size_t i = 0; i < codes; ++i) code[i] = uint8_t(rng());
  const size_t meta = key ? size_t(H) * ((n + p.key_group - 1) / p.key_group) * d
                          : size_t(H) * n * (d / p.value_group);
  uint16_t* scales = c.arena.make<uint16_t>(meta);
  uint16_t* mins = c.arena.make<uint16_t>(meta);
  for (size_t i = 0; i < meta; ++i)
    scales[i] = random16(rng, p.bf16), mins[i] = random16(rng, p.bf16);
  side.codes = code, side.scales = scales, side.mins = mins;
  if (b.rank > 0) {
    uint16_t* q = c.arena.make<uint16_t>(size_t(H) * n * b.rank);
    uint16_t* pt = c.arena.make<uint16_t>(size_t(H) * b.rank * d);
    for (size_t i = 0; i < size_t(H) * n * b.rank; ++i) q[i] = random16(rng, p.bf16);
    for (size_t i = 0; i < size_t(H) * b.rank * d; ++i) pt[i] = random16(rng, p.bf16);
    side.q = q, side.p = pt;
  }
  const int vectors = key ? d : n, count = key ? 2 * b.key_k : 2 * p.value_k, range = key ? n : d;
  const size_t outliers = size_t(H) * vectors * count;
  uint16_t* values = c.arena.make<uint16_t>(outliers);
  for (size_t i = 0; i < outliers; ++i) values[i] = random16(rng, p.bf16);
  side.outlier_values = values;
  int32_t* key_index = key ? c.arena.make<int32_t>(outliers) : nullptr;
  int16_t* value_index = key ? nullptr : c.arena.make<int16_t>(outliers);
  std::vector<int> all(static_cast<size_t>(range));
  for (int h = 0; h < H; ++h)
    for (int v = 0; v < vectors; ++v) {
      for (int i = 0; i < range; ++i) all[size_t(i)] = i;
      std::shuffle(all.begin(), all.end(), rng);
      std::sort(all.begin(), all.begin() + count);
      for (int j = 0; j < count; ++j) {
        if (key)
          key_index[(size_t(h) * count + j) * d + v] = all[size_t(j)];
        else
          value_index[(size_t(h) * n + v) * count + j] = int16_t(all[size_t(j)]);
      }
    }
  side.outlier_index = key ? static_cast<const void*>(key_index) : value_index;
}

void make_case(Case& c, int head_dim, std::mt19937& rng) {
  auto draw = [&](int a, int b) { return std::uniform_int_distribution<int>(a, b)(rng); };
  GearProblem& p = c.p;
  p.head_dim = head_dim, p.kv_heads = draw(1, 3);
  p.bits = std::vector<int>{2, 4, 8}[size_t(draw(0, 2))];
  if (head_dim * p.bits % 8 != 0) p.bits = 8;
  p.key_group = draw(0, 2) == 0 ? draw(1, 8) : draw(1, 80);
  std::vector<int> divisors;
  for (int g = 1; g <= head_dim; ++g)
    if (head_dim % g == 0) divisors.push_back(g);
  p.value_group = divisors[size_t(draw(0, int(divisors.size()) - 1))];
  p.value_k = draw(0, 2) == 0 ? 0 : draw(1, std::min(6, head_dim / 2));
  p.bf16 = draw(0, 1) == 1;
  c.blocks.resize(size_t(draw(0, 4)));
  int start = 0;
  for (GearBlock& b : c.blocks) {
    b.start = start, b.n = draw(0, 3) == 0 ? draw(1, 10) : draw(1, 150);
    start += b.n;
    b.rank = draw(0, 2) == 0 ? 0 : draw(1, std::min(b.n, 6));
    b.key_k = std::min(draw(0, 2) == 0 ? 0 : draw(1, std::max(1, b.n / 2)), b.n / 2);
    fill_side(c, b, true, rng);
    fill_side(c, b, false, rng);
  }
  c.s.blocks = c.blocks.empty() ? nullptr : c.blocks.data();
  c.s.num_blocks = int(c.blocks.size()), c.s.compressed = start;
  c.tokens = std::max(1, start + (draw(0, 2) == 0 ? 0 : draw(1, 70)));
  const int exact = c.tokens - start, H = p.kv_heads;
  c.s.exact_stride = (long long)H * head_dim + (draw(0, 1) == 1 ? draw(0, 40) : 0);
  const size_t rows = exact > 0 ? size_t(exact - 1) * c.s.exact_stride + size_t(H) * head_dim : 0;
  uint16_t* k = c.arena.make<uint16_t>(rows);
  uint16_t* v = c.arena.make<uint16_t>(rows);
  for (size_t i = 0; i < rows; ++i) k[i] = random16(rng, p.bf16), v[i] = random16(rng, p.bf16);
  c.s.exact_k = k, c.s.exact_v = v;
}

// Runs the kernel's tile loop for every KV head and split of a case (`D` as the kernel is
// built: 0 for the generic path), checking each tile; returns the elements checked.
template <int D>
int64_t check_case(const Case& c, int tokens_per_split, std::string& failure) {
  static Tiles tiles;
  const GearProblem& p = c.p;
  const GearSequence& s = c.s;
  const int T = c.tokens, d = p.head_dim;
  std::vector<float> want(static_cast<size_t>(d));
  int64_t checked = 0;
  for (int h = 0; h < p.kv_heads; ++h)
    for (int begin = 0; begin < T; begin += tokens_per_split) {
      launch_emulated(1, kGearThreads, [&] {
        const int x = int(threadIdx.x);
        const int end = std::min(T, begin + tokens_per_split);
        for (int t = begin; t < end;) {  // the kernel's tiles
          const int stop = gear_tile::tile_end(s, t, end), nt = stop - t;
          if constexpr (D > 0) {
            gear_tile::rebuild_channels<D>(p, s, h, t, nt, tiles);
          } else {
            gear_tile::rebuild(p, s, h, t, nt, tiles);
          }
          __syncthreads();
          if (x == 0) {
            for (int key = 0; key < 2; ++key)
              for (int i = 0; i < kGearTile; ++i) {
                if (i < nt) gear::token(p, s, key == 1, h, t + i, want.data());
                for (int ch = 0; ch <= kGearMaxHeadDim; ++ch) {
                  Cell& cell = key == 1 ? tiles.k[i][ch] : tiles.v[i][ch];
                  const bool inside = i < nt && ch < d;
                  if (failure.empty() && inside &&
                      (cell.writes == 0 ||
                       std::memcmp(&cell.value, &want[size_t(ch)], sizeof(float)) != 0))
                    failure = (key == 1 ? "key" : "value") + std::string(" token ") +
                              std::to_string(t + i) + " channel " + std::to_string(ch) + " head " +
                              std::to_string(h) + ": " + std::to_string(cell.value) + " (written " +
                              std::to_string(cell.writes) + " times), want " +
                              std::to_string(want[size_t(ch)]);
                  if (failure.empty() && !inside && cell.writes != 0)
                    failure = "a write outside the tile at token " + std::to_string(i) +
                              " channel " + std::to_string(ch) + " of " + std::to_string(nt);
                  checked += inside ? 1 : 0;
                  cell.value = NAN, cell.writes = 0;
                }
              }
          }
          __syncthreads();
          t = stop;
        }
      });
    }
  return checked;
}

TEST(GearRebuildTest, TheKernelsTilesAreTheHostReferencesBitForBit) {
  std::mt19937 rng(20261204);
  const struct {
    int built, head_dim, cases;
  } variants[] = {{128, 128, 8}, {64, 64, 8}, {0, 96, 2}, {0, 64, 2}, {0, 8, 2}};
  for (const auto& v : variants)
    for (int i = 0; i < v.cases; ++i) {
      Case c;
      make_case(c, v.head_dim, rng);
      const int per = kGearTile * std::uniform_int_distribution<int>(1, 5)(rng);
      std::string failure;
      const int64_t checked = v.built == 128  ? check_case<128>(c, per, failure)
                              : v.built == 64 ? check_case<64>(c, per, failure)
                                              : check_case<0>(c, per, failure);
      ASSERT_TRUE(failure.empty()) << "built for " << v.built << ", head_dim " << v.head_dim
                                   << ", case " << i << ": " << failure;
      EXPECT_EQ(checked, int64_t(c.tokens) * c.p.kv_heads * v.head_dim * 2);
    }
}

}  // namespace
}  // namespace kvbench::kernels
