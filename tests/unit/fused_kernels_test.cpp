// The fused CPU kernels that read stored formats in registers, against float64 loops on random
// inputs, on every instruction set the CPU has (portable, AVX2, AVX-512 VNNI):
//   - the int8 query quantization: |x - d c| <= d / 2 per element;
//   - integer key scores: exactly the dequantized query's dot product with the dequantized key
//     (up to fp32 rounding of the block terms), and within the derived bound of the float
//     query's: |q.k - q^.k| <= sum_b (d_qb / 2) sum_{i in b} |k_i|;
//   - values accumulated from the codes, and fp16/bf16/fp32 rows read with the conversion in
//     registers, against float64 sums;
//   - values against int8 weights (value_int8): within the derived bound
//     |delta_ri| <= sum_tiles (s / 2) sum_{t in tile} c_ti, s = max_{t in tile} |p_rt d_tg| / 127,
//     on synthetic codes and through the block and KIVI value stores;
//   - KIVI keys scored against the scaled query quantized to int8 (query_int8): within
//     sum_b (d'_b / 2) sum_{i in b} c_ti, d'_b = max_{i in b} |q_i s_i| / 127.
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <random>
#include <string>
#include <vector>

#include "kvbench/attention/cpu_attention.h"
#include "kvbench/kv/block_quant_codec.h"
#include "kvbench/kv/fused_kernels.h"
#include "kvbench/kv/identity_codec.h"
#include "kvbench/kv/kivi_codec.h"
#include "kvbench/kv/minmax_quant.h"
#include "random_kv.h"

namespace kvbench {
namespace {

using testing_support::kv_like;

// Every instruction set this CPU runs; restores the best one when done.
std::vector<std::string> isas() {
  std::vector<std::string> out;
  for (const char* name : {"portable", "avx2", "avx512-vnni"}) {
    if (simd::set_kernel_isa(name)) out.push_back(name);
  }
  simd::set_kernel_isa("best");
  return out;
}
struct IsaScope {
  explicit IsaScope(const std::string& name) { EXPECT_TRUE(simd::set_kernel_isa(name.c_str())); }
  ~IsaScope() { simd::set_kernel_isa("best"); }
};

struct Q8 {
  std::vector<int8_t> codes;
  std::vector<float> scales, dsums;
  at::Tensor dequantized;  // [rows, n] float64: d * c
};
Q8 quantize(const at::Tensor& q) {  // q: [rows, n] fp32
  const int64_t rows = q.size(0), n = q.size(1), blocks = n / simd::kQ8Block;
  Q8 out{std::vector<int8_t>(static_cast<size_t>(rows * n)),
         std::vector<float>(static_cast<size_t>(rows * blocks)),
         std::vector<float>(static_cast<size_t>(rows * blocks)), at::Tensor()};
  at::Tensor qc = q.contiguous();
  simd::quantize_q8(qc.data_ptr<float>(), rows, n, out.codes.data(), out.scales.data(),
                    out.dsums.data());
  out.dequantized = at::empty({rows, n}, at::kDouble);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < n; ++i) {
      out.dequantized[r][i] =
          static_cast<double>(out.scales[r * blocks + i / simd::kQ8Block]) * out.codes[r * n + i];
    }
  }
  return out;
}

TEST(FusedKernels, QueryQuantizationWithinHalfAStep) {
  at::Tensor q = at::randn({5, 128}, at::detail::createCPUGenerator(1)) * 3;
  q[2].narrow(0, 32, 32).zero_();  // an all-zero block: scale 0, codes 0
  const Q8 q8 = quantize(q);
  for (int64_t r = 0; r < 5; ++r) {
    for (int64_t b = 0; b < 4; ++b) {
      const double d = q8.scales[r * 4 + b];
      EXPECT_NEAR(d, q[r].narrow(0, b * 32, 32).abs().max().item<double>() / 127, 1e-7 * d);
      int64_t sum = 0;
      for (int64_t i = b * 32; i < (b + 1) * 32; ++i) {
        const int c = q8.codes[r * 128 + i];
        ASSERT_LE(std::abs(c), 127);
        sum += c;
        // half a step, plus the rounding of x / d
        EXPECT_LE(std::fabs(q[r][i].item<double>() - d * c), d / 2 * (1 + 1e-6)) << r << " " << i;
      }
      EXPECT_NEAR(q8.dsums[r * 4 + b], d * sum, 1e-6 * d * std::abs(sum) + 1e-30);
    }
  }
}

struct BlockFormat {
  int bits;
  bool symmetric;
  int64_t group;
};
const BlockFormat kFormats[] = {{8, true, 32},  {4, true, 32},  {4, false, 32},
                                {2, false, 32}, {4, false, 64}, {8, true, 128}};

TEST(FusedKernels, IntegerKeyScoresWithinTheQueryRoundingBound) {
  for (const std::string& isa : isas()) {
    IsaScope scope(isa);
    for (const BlockFormat& f : kFormats) {
      for (int64_t dim : {64, 128}) {
        if (dim % f.group) continue;
        BlockQuantCodec codec(f.bits, f.symmetric, f.group, true);
        auto keys = codec.make_key_store(2, dim);
        keys->append(kv_like(2, 45, dim, 11));
        ASSERT_TRUE(keys->quantized_query());
        const at::Tensor k = keys->dequantize().to(at::kDouble);  // [2, 45, dim]
        for (int64_t rows : {1, 3, 4, 5}) {
          at::Tensor q = at::randn({rows, dim}, at::detail::createCPUGenerator(rows)) * 2;
          const Q8 q8 = quantize(q);
          const simd::Q8Rows qr{q8.codes.data(), q8.scales.data(), q8.dsums.data()};
          for (auto [t0, t1] : {std::pair<int64_t, int64_t>{0, 45}, {3, 20}, {44, 45}}) {
            const int64_t len = t1 - t0, stride = len + 3;
            std::vector<float> scores(static_cast<size_t>(rows * stride), -1.0f);
            keys->dot_quantized(1, qr, rows, t0, t1, scores.data(), stride);
            at::Tensor kk = k[1].narrow(0, t0, len);               // [len, dim]
            at::Tensor exact = at::mm(q.to(at::kDouble), kk.t());  // float query
            at::Tensor rounded = at::mm(q8.dequantized, kk.t());   // the int8 query
            at::Tensor magnitude = at::mm(q.to(at::kDouble).abs(), kk.abs().t());
            for (int64_t r = 0; r < rows; ++r) {
              for (int64_t t = 0; t < len; ++t) {
                const double got = scores[r * stride + t];
                // fp32 rounding of the block terms (the integer sums are exact)
                const double slack = 1e-5 * magnitude[r][t].item<double>() + 1e-6;
                EXPECT_NEAR(got, rounded[r][t].item<double>(), slack)
                    << isa << " bits " << f.bits << " group " << f.group << " dim " << dim;
                double bound = slack;
                for (int64_t b = 0; b < dim / simd::kQ8Block; ++b) {
                  bound += q8.scales[r * (dim / simd::kQ8Block) + b] / 2 *
                           kk[t]
                               .narrow(0, b * simd::kQ8Block, simd::kQ8Block)
                               .abs()
                               .sum()
                               .item<double>();
                }
                EXPECT_LE(std::fabs(got - exact[r][t].item<double>()), bound)
                    << isa << " bits " << f.bits << " group " << f.group << " dim " << dim;
              }
              // padding between rows is left alone
              for (int64_t t = len; t < stride; ++t) ASSERT_EQ(scores[r * stride + t], -1.0f);
            }
          }
        }
      }
    }
  }
}

// Values from the codes (block formats and KIVI's per-token values) and float rows, against
// float64 sums of the dequantized values, within fp32 rounding of the terms the kernel sums:
// for codes, (c - zero) d and the min separately, each at most 3 max_i |v_ti| in magnitude
// (asymmetric: |m| <= max |v|, |c d| = |v - m|; q8_0: (255 + 128) / 127 amax; q4_0: 23 / 8 amax).
void expect_accumulate_matches(const TokenStore& store, const std::string& what,
                               bool codes = true) {
  const int64_t dim = store.head_dim(), tokens = store.size();
  const at::Tensor v = store.dequantize().to(at::kDouble);
  for (int64_t rows : {1, 2, 3, 4, 5}) {
    at::Tensor p = at::rand({rows, tokens}, at::detail::createCPUGenerator(rows + 7));
    for (auto [t0, t1] : {std::pair<int64_t, int64_t>{0, tokens}, {5, tokens - 2}}) {
      const int64_t len = t1 - t0, stride = tokens;
      at::Tensor pc = p.contiguous();
      at::Tensor init = at::randn({rows, dim}, at::detail::createCPUGenerator(3));
      at::Tensor out = init.clone();
      store.accumulate(0, pc.data_ptr<float>() + t0, rows, t0, t1, stride, out.data_ptr<float>());
      at::Tensor want = init.to(at::kDouble) +
                        at::mm(p.narrow(1, t0, len).to(at::kDouble), v[0].narrow(0, t0, len));
      at::Tensor vv = v[0].narrow(0, t0, len).abs();
      if (codes) vv = std::get<0>(vv.max(1, true)).expand_as(vv) * 3;
      at::Tensor magnitude =
          init.to(at::kDouble).abs() + at::mm(p.narrow(1, t0, len).to(at::kDouble), vv);
      at::Tensor excess = (out.to(at::kDouble) - want).abs() - magnitude * 1e-5;
      EXPECT_LE(excess.max().item<double>(), 0.0)
          << what << " rows " << rows << " [" << t0 << ", " << t1 << ")";
    }
  }
}

void expect_dot_matches(const TokenStore& store, const std::string& what) {
  const int64_t dim = store.head_dim(), tokens = store.size();
  const at::Tensor k = store.dequantize().to(at::kDouble);
  for (int64_t rows : {1, 2, 3, 4, 8}) {
    at::Tensor q = at::randn({rows, dim}, at::detail::createCPUGenerator(rows + 1)).contiguous();
    std::vector<float> scores(static_cast<size_t>(rows * tokens));
    store.dot(0, q.data_ptr<float>(), rows, 1, tokens, scores.data(), tokens);
    at::Tensor want = at::mm(q.to(at::kDouble), k[0].narrow(0, 1, tokens - 1).t());
    at::Tensor magnitude = at::mm(q.to(at::kDouble).abs(), k[0].narrow(0, 1, tokens - 1).abs().t());
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t t = 0; t < tokens - 1; ++t) {
        EXPECT_NEAR(scores[r * tokens + t], want[r][t].item<double>(),
                    1e-5 * magnitude[r][t].item<double>() + 1e-6)
            << what << " rows " << rows << " token " << t;
      }
    }
  }
}

TEST(FusedKernels, ValuesFromTheCodesMatchFloat64) {
  for (const std::string& isa : isas()) {
    IsaScope scope(isa);
    for (const BlockFormat& f : kFormats) {
      BlockQuantCodec codec(f.bits, f.symmetric, f.group);
      auto values = codec.make_value_store(1, 128);
      values->append(kv_like(1, 77, 128, 21));
      expect_accumulate_matches(*values, isa + " block bits " + std::to_string(f.bits));
    }
    for (int bits : {2, 4}) {  // 300 tokens: 172 quantized values, the last 128 exact
      // the tiled kernels with 4, 8 and 1 groups and each scale dtype (converted in registers),
      // and per-token rows (head_dim 96 at 2 bits)
      struct Shape {
        int64_t group, dim;
        at::ScalarType dtype;
      };
      for (Shape sh :
           {Shape{32, 128, at::kHalf}, Shape{16, 256, at::kHalf}, Shape{64, 64, at::kHalf},
            Shape{32, 96, at::kHalf}, Shape{32, 128, at::kBFloat16}, Shape{32, 128, at::kFloat}}) {
        const int64_t group = sh.group, dim = sh.dim;
        KiviCodec codec(bits, group, 128, sh.dtype);
        const std::string what = isa + " kivi bits " + std::to_string(bits) + " group " +
                                 std::to_string(group) + " head_dim " + std::to_string(dim) + " " +
                                 c10::toString(sh.dtype);
        auto values = codec.make_value_store(1, dim);
        values->append(kv_like(1, 300, dim, 22));
        expect_accumulate_matches(*values, what + " values");
        auto keys = codec.make_key_store(1, dim);
        keys->append(kv_like(1, 300, dim, 23));
        expect_dot_matches(*keys, what + " keys");
      }
    }
  }
}

TEST(FusedKernels, FloatRowsConvertedInRegistersMatchFloat64) {
  for (const std::string& isa : isas()) {
    IsaScope scope(isa);
    for (at::ScalarType dtype : {at::kHalf, at::kBFloat16, at::kFloat}) {
      for (int64_t dim : {64, 128}) {
        IdentityCodec codec(dtype);
        auto store = codec.make_key_store(1, dim);
        store->append(kv_like(1, 70, dim, 31));
        const std::string what = isa + " " + std::string(c10::toString(dtype));
        expect_dot_matches(*store, what);
        expect_accumulate_matches(*store, what, false);
      }
    }
  }
}

// Values against int8 weights, on synthetic codes with every code width, signed and unsigned
// scales, with and without mins, against float64 sums of the exact terms: within
//   sum over tiles of 32 tokens (from the call's first) of (s / 2) sum_t c_ti,
//   s = max_t |p_rt d_tg| / 127,
// plus fp32 rounding of the terms. Where the integer path does not run (no AVX-512 VNNI) the
// call is the exact kernel, which the same bound covers.
TEST(FusedKernels, IntegerValueWeightsWithinTheirBound) {
  struct Case {
    int bits, zero;
    int64_t group, n;
    bool mins, signed_scales;
  };
  const Case cases[] = {{8, 128, 32, 128, false, false}, {4, 8, 32, 128, false, true},
                        {4, 0, 32, 128, true, false},    {2, 0, 32, 128, true, false},
                        {4, 0, 64, 128, true, false},    {8, 128, 128, 128, false, false},
                        {2, 0, 32, 64, true, false},     {4, 0, 32, 64, true, true}};
  bool ran_int8 = false;
  for (const std::string& isa : isas()) {
    IsaScope scope(isa);
    for (const Case& c : cases) {
      const int64_t tokens = 77, n = c.n, groups = n / c.group, row_bytes = n * c.bits / 8;
      std::mt19937 rng(static_cast<uint32_t>(c.bits * 100 + c.group + n));
      std::uniform_real_distribution<float> unit(0.0f, 1.0f);
      std::vector<uint8_t> codes(static_cast<size_t>(tokens * row_bytes));
      for (auto& b : codes) b = static_cast<uint8_t>(rng());
      std::vector<float> d(static_cast<size_t>(tokens * groups)), m(d.size());
      for (size_t i = 0; i < d.size(); ++i) {
        d[i] = (0.01f + unit(rng)) * (c.signed_scales && rng() % 2 ? -1.0f : 1.0f);
        m[i] = unit(rng) * 4 - 2;
      }
      d[5] = 0;  // a constant group
      auto code = [&](int64_t t, int64_t i) {
        const uint8_t* row = codes.data() + t * row_bytes;
        if (c.bits == 8) return static_cast<int>(row[i]);
        if (c.bits == 4) return (row[i / 2] >> (i % 2 * 4)) & 0xF;
        return (row[i / 4] >> (i % 4 * 2)) & 0x3;
      };
      for (int64_t rows : {1, 2, 3, 4, 5}) {
        const int64_t stride = tokens + 3;
        std::vector<float> p(static_cast<size_t>(rows * stride));
        for (auto& x : p) x = unit(rng) < 0.1f ? 0.0f : unit(rng);
        for (auto [t0, t1] :
             {std::pair<int64_t, int64_t>{0, tokens}, {5, 75}, {40, 41}, {10, 42}}) {
          const int64_t len = t1 - t0;
          const simd::CodeRows v{codes.data() + t0 * row_bytes,
                                 d.data() + t0 * groups,
                                 c.mins ? m.data() + t0 * groups : nullptr,
                                 c.bits,
                                 c.zero,
                                 c.group,
                                 n};
          ran_int8 |= simd::value_int8_supported(v);
          std::vector<float> out(static_cast<size_t>(rows * n));
          for (auto& x : out) x = unit(rng) - 0.5f;
          const std::vector<float> init = out;
          simd::codes_weighted_sum_int8(v, len, p.data() + t0, rows, stride, out.data());
          for (int64_t r = 0; r < rows; ++r) {
            for (int64_t i = 0; i < n; ++i) {
              const int64_t g = i / c.group;
              double want = init[r * n + i], magnitude = std::fabs(init[r * n + i]), bound = 0;
              for (int64_t a = t0; a < t1; a += simd::kValueTile) {
                const int64_t b = std::min(t1, a + simd::kValueTile);
                double s = 0, codes_sum = 0;
                for (int64_t t = a; t < b; ++t) {
                  const double pt = p[r * stride + t], dt = d[t * groups + g];
                  const double mt = c.mins ? m[t * groups + g] : 0.0;
                  const double term = (code(t, i) - c.zero) * dt + mt;
                  want += pt * term;
                  magnitude += pt * (std::fabs((code(t, i) - c.zero) * dt) + std::fabs(mt) +
                                     std::fabs(c.zero * dt));
                  s = std::max(s, std::fabs(pt * dt) / 127);
                  codes_sum += code(t, i);
                }
                bound += s / 2 * codes_sum;
              }
              const double got = out[r * n + i];
              ASSERT_LE(std::fabs(got - want), bound * (1 + 1e-5) + 1e-5 * magnitude + 1e-6)
                  << isa << " bits " << c.bits << " group " << c.group << " n " << n << " rows "
                  << rows << " [" << t0 << ", " << t1 << ") r " << r << " i " << i;
            }
          }
        }
      }
    }
  }
  // The bound is not vacuous: the integer path ran where the CPU has it.
  if (simd::set_kernel_isa("avx512-vnni")) EXPECT_TRUE(ran_int8);
  simd::set_kernel_isa("best");
}

// Per-group absolute maximum of the input rows: x [1, tokens, dim] -> [tokens, dim / group].
at::Tensor group_amax(const at::Tensor& x, int64_t group) {
  return x[0].abs().view({x.size(1), x.size(2) / group, group}).amax(2).to(at::kDouble);
}

// Through the stores: block formats and KIVI values with value_int8 against float64 sums of
// what they store, within the bound above restated with what the test knows: |d_tg| c_ti <=
// 2.01 amax_tg for every format (asymmetric: d qmax <= (max - min)(1 + 2^-10); q8_0:
// 255 / 127 amax; q4_0: 15 / 8 amax), so (s / 2) sum_t c_ti <= (32 / 254) max_t p_t 2.01 amax_tg.
TEST(FusedKernels, StoresWithInt8ValueWeightsWithinTheBound) {
  for (const std::string& isa : isas()) {
    IsaScope scope(isa);
    struct Store {
      std::string name;
      std::unique_ptr<TokenStore> store;
      int64_t group, first_exact;   // values at or past first_exact are stored exactly
      bool absolute_tiles = false;  // weight tiles at multiples of 32 (KIVI), else from t0
    };
    std::vector<Store> stores;
    const at::Tensor x = kv_like(1, 300, 128, 51);
    for (const BlockFormat& f : kFormats) {
      BlockQuantCodec codec(f.bits, f.symmetric, f.group, true, true);
      EXPECT_EQ(codec.params()["value_int8"], true);
      stores.push_back(
          {"block bits " + std::to_string(f.bits) + " group " + std::to_string(f.group),
           codec.make_value_store(1, 128), f.group, 300});
    }
    for (int bits : {2, 4}) {
      KiviCodec codec(bits, 32, 128, at::kHalf, true, true);
      stores.push_back({"kivi bits " + std::to_string(bits), codec.make_value_store(1, 128), 32,
                        300 - 128, true});
      // group 16: 8 groups, two batches of the weights' maxima; group 8: the per-token rows
      for (int64_t group : {16, 8}) {
        KiviCodec other(bits, group, 128, at::kHalf, true, true);
        stores.push_back({"kivi group " + std::to_string(group) + " bits " + std::to_string(bits),
                          other.make_value_store(1, 128), group, 300 - 128, true});
      }
    }
    for (Store& s : stores) {
      s.store->append(x);
      const at::Tensor v = s.store->dequantize().to(at::kDouble)[0];
      const at::Tensor amax = group_amax(x, s.group);
      for (int64_t rows : {1, 3, 4, 5, 8}) {
        at::Tensor p = at::rand({rows, 300}, at::detail::createCPUGenerator(rows + 70));
        for (auto [t0, t1] :
             {std::pair<int64_t, int64_t>{0, 300}, {7, 200}, {33, 171}, {61, 62}, {150, 300}}) {
          const int64_t len = t1 - t0;
          at::Tensor out = at::zeros({rows, 128}, at::kFloat);
          s.store->accumulate(0, p.data_ptr<float>() + t0, rows, t0, t1, 300,
                              out.data_ptr<float>());
          const at::Tensor pd = p.narrow(1, t0, len).to(at::kDouble);
          const at::Tensor want = at::mm(pd, v.narrow(0, t0, len));
          const at::Tensor magnitude = at::mm(pd, v.narrow(0, t0, len).abs()) * 3;
          at::Tensor bound = at::zeros({rows, 128 / s.group}, at::kDouble);
          // quantized tokens only, in tiles of 32 from t0 or at multiples of 32
          const int64_t mid = std::min(t1, std::max(t0, s.first_exact));
          const int64_t first = s.absolute_tiles ? t0 / simd::kValueTile * simd::kValueTile : t0;
          for (int64_t a0 = first; a0 < mid; a0 += simd::kValueTile) {
            const int64_t a = std::max(a0, t0), b = std::min(mid, a0 + simd::kValueTile);
            // max over the tile of p_t 2.01 amax_tg, per row and group
            at::Tensor prod = pd.narrow(1, a - t0, b - a).unsqueeze(2) *
                              amax.narrow(0, a, b - a).unsqueeze(0) * 2.01;
            bound += std::get<0>(prod.max(1)) * (32.0 / 254.0);
          }
          const at::Tensor tol = bound.repeat_interleave(s.group, 1) + magnitude * 1e-5 + 1e-6;
          const at::Tensor excess = (out.to(at::kDouble) - want).abs() - tol;
          EXPECT_LE(excess.max().item<double>(), 0.0)
              << isa << " " << s.name << " rows " << rows << " [" << t0 << ", " << t1 << ")";
        }
      }
    }
  }
}

// Store shapes: the tiled key layout with whole tiles per block (group 32, residual 128, and
// group 16 at head_dim 256), blocks that end inside a tile (residual 24: the next block fills
// the tile; group 8 runs the rows fallback), and head_dim 72 at 2 bits, whose rows are not
// whole 32-bit words (stored as rows); scales and mins in fp16, and in bf16 and fp32 (which the
// tiled kernel converts in registers).
struct KiviShape {
  int bits;
  int64_t group, residual, dim;
  at::ScalarType dtype = at::kHalf;
};
const KiviShape kKiviShapes[] = {{2, 32, 128, 128},
                                 {4, 32, 128, 128},
                                 {2, 16, 48, 256},
                                 {4, 8, 24, 64},
                                 {2, 8, 24, 64},
                                 {2, 8, 24, 72},
                                 {2, 32, 128, 128, at::kBFloat16},
                                 {4, 32, 128, 128, at::kFloat}};
std::string kivi_name(const KiviShape& k) {
  return "kivi bits " + std::to_string(k.bits) + " group " + std::to_string(k.group) +
         " residual " + std::to_string(k.residual) + " dim " + std::to_string(k.dim) + " " +
         c10::toString(k.dtype);
}

// KIVI keys scored against q' = q s quantized to int8 blocks of 32, per key group: against
// float64 dot products of the stored keys, within sum_b (d'_b / 2) sum_{i in b} c_ti with
// d'_b = max_{i in b} |q_i s_i| / 127, c_ti <= 2^b - 1 and s_i (2^b - 1) <= (range_gi +
// 2^-10 amax_gi)(1 + 2^-10) for the token group's range and amax of channel i:
//   |delta| <= sum_b (32 / 254) max_{i in b} |q_i| max_{i in b} (range_gi + 2^-10 amax_gi) 1.001
// On every store shape, head 1 of 2 (tiles are addressed per head), 300 tokens appended in
// two pieces, ranges that start and end inside tiles and groups.
TEST(FusedKernels, KiviIntegerKeyScoresWithinTheQueryRoundingBound) {
  for (const std::string& isa : isas()) {
    IsaScope scope(isa);
    for (const KiviShape& shape : kKiviShapes) {
      const int64_t n = shape.dim, group = shape.group, tokens = 300;
      const int64_t quantized = tokens - tokens % shape.residual;
      KiviCodec on(shape.bits, group, shape.residual, shape.dtype, true, false);
      // the scales' and mins' relative rounding in their dtype
      const double unit = shape.dtype == at::kBFloat16 ? 0x1.0p-7
                          : shape.dtype == at::kFloat  ? 0x1.0p-23
                                                       : 0x1.0p-10;
      auto keys = on.make_key_store(2, n);
      const at::Tensor x = kv_like(2, tokens, n, 61);
      keys->append(x.narrow(1, 0, 37));
      keys->append(x.narrow(1, 37, tokens - 37));
      const at::Tensor k = keys->dequantize().to(at::kDouble)[1];
      // per token group and channel: range and amax of the input
      std::vector<double> reach(static_cast<size_t>(quantized * n));  // [group][channel]
      for (int64_t g = 0; g < quantized / group; ++g) {
        const at::Tensor block = x[1].narrow(0, g * group, group).to(at::kDouble);
        const at::Tensor range = std::get<0>(block.max(0)) - std::get<0>(block.min(0));
        const at::Tensor amax = block.abs().amax(0);
        for (int64_t i = 0; i < n; ++i) {
          reach[g * n + i] =
              (range[i].item<double>() + amax[i].item<double>() * unit) * (1 + unit) * 1.001;
        }
      }
      for (int64_t rows : {1, 4, 5, 8}) {
        at::Tensor q = at::randn({rows, n}, at::detail::createCPUGenerator(rows + 90)) * 2;
        for (auto [t0, t1] :
             {std::pair<int64_t, int64_t>{0, 300}, {40, 270}, {3, 299}, {17, 61}, {250, 300}}) {
          const int64_t len = t1 - t0;
          std::vector<float> scores(static_cast<size_t>(rows * len));
          keys->dot(1, q.data_ptr<float>(), rows, t0, t1, scores.data(), len);
          const at::Tensor qd = q.to(at::kDouble);
          const at::Tensor want = at::mm(qd, k.narrow(0, t0, len).t());
          const at::Tensor magnitude = at::mm(qd.abs(), k.narrow(0, t0, len).abs().t());
          const auto qa = qd.accessor<double, 2>();
          const auto wa = want.accessor<double, 2>();
          const auto ma = magnitude.accessor<double, 2>();
          for (int64_t r = 0; r < rows; ++r) {
            for (int64_t t = t0; t < t1; ++t) {
              double bound = 1e-5 * ma[r][t - t0] + 1e-5;
              for (int64_t b = 0; t < quantized && b < n / 32; ++b) {
                double qmax = 0, rmax = 0;
                for (int64_t i = b * 32; i < (b + 1) * 32; ++i) {
                  qmax = std::max(qmax, std::fabs(qa[r][i]));
                  rmax = std::max(rmax, reach[(t / group) * n + i]);
                }
                bound += 32.0 / 254.0 * qmax * rmax;
              }
              ASSERT_LE(std::fabs(scores[r * len + t - t0] - wa[r][t - t0]), bound)
                  << isa << " " << kivi_name(shape) << " rows " << rows << " token " << t;
            }
          }
        }
      }
    }
  }
}

// The tiled key store reconstructs exactly what per-channel quantization of token rows gives:
// each block of R tokens (as the window held them: rounded to the model dtype) through
// minmax::quantize_per_channel and dequantize_per_channel, the rest the window.
TEST(FusedKernels, KiviKeysDequantizeAsTheirRows) {
  for (const KiviShape& shape : kKiviShapes) {
    const int64_t n = shape.dim, r = shape.residual, tokens = 301;
    KiviCodec codec(shape.bits, shape.group, r, at::kHalf, true, false);
    auto keys = codec.make_key_store(2, n);
    const at::Tensor x = kv_like(2, tokens, n, 67);
    for (int64_t t = 0; t < tokens; t += 29)
      keys->append(x.narrow(1, t, std::min<int64_t>(29, tokens - t)));
    const at::Tensor got = keys->dequantize();
    at::Tensor want = x.to(at::kHalf).to(at::kFloat);
    const int64_t row_bytes = n * shape.bits / 8, groups = r / shape.group;
    std::vector<uint8_t> codes(static_cast<size_t>(r * row_bytes));
    std::vector<float> s(static_cast<size_t>(groups * n)), m(s.size());
    for (int64_t h = 0; h < 2; ++h) {
      for (int64_t t0 = 0; t0 + r <= tokens; t0 += r) {
        std::fill(codes.begin(), codes.end(), 0);
        const at::Tensor block = want[h].narrow(0, t0, r).clone();
        minmax::quantize_per_channel(block.data_ptr<float>(), r, n, shape.group, shape.bits,
                                     at::kHalf, nullptr, codes.data(), row_bytes, s.data(),
                                     m.data());
        for (int64_t t = 0; t < r; ++t) {
          const int64_t g = t / shape.group;
          minmax::dequantize_per_channel(codes.data() + t * row_bytes, s.data() + g * n,
                                         m.data() + g * n, n, shape.bits,
                                         want[h][t0 + t].data_ptr<float>());
        }
      }
    }
    EXPECT_TRUE(at::equal(got, want))
        << kivi_name(shape) << ": max difference " << (got - want).abs().max().item<double>();
    // bytes as the method's formula says, whole tiles or not
    const StorageBytes bytes = keys->bytes();
    const uint64_t kq = tokens - tokens % r;
    EXPECT_EQ(bytes.payload, 2 * (kq * n * shape.bits / 8 + (tokens - kq) * n * 2))
        << kivi_name(shape);
    EXPECT_EQ(bytes.metadata, 2 * 2 * 2 * (kq / shape.group * n)) << kivi_name(shape);
  }
}

// simd::channel_scores on synthetic KIVI-style keys (random codes, per-group channel scales
// with a few outlier channels, signed mins), token ranges that start inside a group, 1-5 query
// rows, head_dim 32-320 (the AVX-512 kernel and the generic form): the fp32 path against
// float64 within fp32 rounding, the int8 path within its bound
//   |delta_t| <= sum_b (d'_b / 2) sum_{i in b} c_ti,  d'_b = max_{i in b} |q_i s_gi| / 127,
// on every instruction set.
TEST(FusedKernels, ChannelScaledKeyScoresMatchFloat64WithinTheBound) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const std::string& isa : isas()) {
    IsaScope scope(isa);
    for (int bits : {2, 4}) {
      for (int64_t n : {32, 64, 128, 256, 320}) {
        for (int64_t group : {32, 64}) {
          for (int64_t lead : {int64_t{0}, int64_t{5}, group - 1}) {
            const int64_t len = 150, groups = (lead + len - 1) / group + 1;
            const int64_t row_bytes = n * bits / 8, levels = (1 << bits) - 1;
            std::vector<uint8_t> codes(static_cast<size_t>(len * row_bytes));
            std::vector<int> c(static_cast<size_t>(len * n));
            for (int64_t t = 0; t < len; ++t) {
              for (int64_t i = 0; i < n; ++i) {
                const int v = static_cast<int>(rng() % (levels + 1));
                c[t * n + i] = v;
                codes[t * row_bytes + i * bits / 8] |= static_cast<uint8_t>(v << (i * bits % 8));
              }
            }
            std::vector<float> sc(static_cast<size_t>(groups * n)), z(sc.size());
            for (size_t j = 0; j < sc.size(); ++j) {
              sc[j] = (0.01f + unit(rng)) * (j % 17 == 3 ? 20.0f : 1.0f);
              z[j] = normal(rng) * 3;
            }
            for (int64_t rows : {1, 4, 5}) {
              std::vector<float> q(static_cast<size_t>(rows * n));
              for (float& x : q) x = normal(rng) * 2;
              for (bool int8 : {false, true}) {
                std::vector<float> scores(static_cast<size_t>(rows * len), -1.0f);
                simd::channel_scores({codes.data(), sc.data(), z.data(), bits, group, n, lead}, len,
                                     q.data(), rows, scores.data(), len, int8);
                double moved = 0;
                for (int64_t r = 0; r < rows; ++r) {
                  for (int64_t t = 0; t < len; ++t) {
                    const int64_t g = (lead + t) / group;
                    double want = 0, magnitude = 0, bound = 0;
                    for (int64_t i = 0; i < n; ++i) {
                      const double term =
                          static_cast<double>(q[r * n + i]) *
                          (static_cast<double>(sc[g * n + i]) * c[t * n + i] + z[g * n + i]);
                      want += term;
                      magnitude +=
                          std::fabs(term) + std::fabs(q[r * n + i] * sc[g * n + i] * c[t * n + i]);
                    }
                    for (int64_t b = 0; int8 && b < n / 32; ++b) {
                      double amax = 0, csum = 0;
                      for (int64_t i = b * 32; i < (b + 1) * 32; ++i) {
                        amax = std::max(
                            amax, std::fabs(static_cast<double>(q[r * n + i]) * sc[g * n + i]));
                        csum += c[t * n + i];
                      }
                      bound += amax / 127.0 / 2.0 * csum * (1 + 1e-5);
                    }
                    const double err = std::fabs(scores[r * len + t] - want);
                    moved = std::max(moved, err);
                    ASSERT_LE(err, bound + 1e-5 * magnitude + 1e-5)
                        << isa << " bits " << bits << " n " << n << " group " << group << " lead "
                        << lead << " rows " << rows << " int8 " << int8 << " r " << r << " t " << t;
                  }
                }
                if (int8) EXPECT_GT(moved, 1e-3) << isa << ": the int8 path rounds the query";
              }
            }
          }
        }
      }
    }
  }
}

// The exact fp32 path stays available: with query_int8 off the store scores through dot().
TEST(FusedKernels, QueryInt8OffKeepsTheExactKeyPath) {
  BlockQuantCodec off(4, false, 32, false), small_group(4, false, 16, true);
  EXPECT_FALSE(off.make_key_store(1, 64)->quantized_query());
  EXPECT_FALSE(small_group.make_key_store(1, 64)->quantized_query());  // group below 32
  EXPECT_EQ(off.params()["query_int8"], false);
  for (const std::string& isa : isas()) {
    IsaScope scope(isa);
    auto keys = off.make_key_store(1, 128);
    keys->append(kv_like(1, 40, 128, 41));
    expect_dot_matches(*keys, isa + " q4_1 exact");
  }
}

// Not a test: CPU seconds of one fused decode step per format at 32k tokens on one thread,
// which a loaded machine's time slicing distorts less than wall time. Run with
// --gtest_also_run_disabled_tests --gtest_filter='*SpeedProbe*'.
TEST(FusedKernels, DISABLED_SpeedProbe) {
  const char* env = std::getenv("KVBENCH_PROBE_TOKENS");  // e.g. 2048: in cache
  const int64_t heads = 8, tokens = env ? std::atoll(env) : 32768, dim = 128, group = 4;
  at::set_num_threads(1);
  struct Case {
    std::string name;
    std::shared_ptr<const Codec> codec;
  };
  std::vector<Case> cases = {
      {"fp16", std::make_shared<IdentityCodec>(at::kHalf)},
      {"q8_0", std::make_shared<BlockQuantCodec>(8, true, 32)},
      {"q4_1", std::make_shared<BlockQuantCodec>(4, false, 32, true, true)},
      {"q4_1 exact values", std::make_shared<BlockQuantCodec>(4, false, 32, true, false)},
      {"q4_1 exact keys", std::make_shared<BlockQuantCodec>(4, false, 32, false, true)},
      {"kivi-4", std::make_shared<KiviCodec>(4, 32, 128, at::kHalf, true, true)},
      {"kivi-2", std::make_shared<KiviCodec>(2, 32, 128, at::kHalf, true, true)},
      {"kivi-2 fp32 keys", std::make_shared<KiviCodec>(2, 32, 128, at::kHalf, false, true)},
      {"kivi-2 exact", std::make_shared<KiviCodec>(2, 32, 128, at::kHalf, false, false)}};
  at::Tensor q = at::randn({heads * group, 1, dim}, at::detail::createCPUGenerator(1));
  const char* only = std::getenv("KVBENCH_PROBE_CASE");     // one case by name
  const char* reps = std::getenv("KVBENCH_PROBE_REPEATS");  // more steps, e.g. for perf record
  for (const Case& c : cases) {
    if (only && c.name != only) continue;
    auto keys = c.codec->make_key_store(heads, dim), values = c.codec->make_value_store(heads, dim);
    for (int64_t t = 0; t < tokens; t += 4096) {
      const int64_t n = std::min<int64_t>(4096, tokens - t);
      keys->append(at::randn({heads, n, dim}, at::detail::createCPUGenerator(t + 2)));
      values->append(at::randn({heads, n, dim}, at::detail::createCPUGenerator(t + 3)));
    }
    std::vector<double> cpu;
    const int steps = reps ? std::atoi(reps) + 3 : tokens < 8192 ? 103 : 13;
    for (int i = 0; i < steps; ++i) {
      timespec a{}, b{};
      clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
      at::Tensor out = cpu_decode_attention(q, *keys, *values, heads, 0.088);
      clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
      if (i >= 3) cpu.push_back((b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) * 1e-6);
    }
    std::sort(cpu.begin(), cpu.end());
    const StorageBytes bytes = [&] {
      StorageBytes s = keys->bytes();
      s += values->bytes();
      return s;
    }();
    std::printf("%-16s %s  %8.2f ms cpu (median of %d)  %7.1f MiB\n", c.name.c_str(),
                simd::kernel_isa(), cpu[cpu.size() / 2], static_cast<int>(cpu.size()),
                bytes.total() / 1048576.0);
  }
}

// Not a test: the fastest of many calls of one KV head's key scores and value sums over 2048
// tokens in cache (4 query rows), per format, in ns per token: the kernels' compute cost apart
// from the memory system and the softmax. Run like the probe above with '*PartsProbe*'.
TEST(FusedKernels, DISABLED_PartsProbe) {
  const int64_t tokens = 2048, dim = 128, rows = 4;
  at::set_num_threads(1);
  std::vector<std::pair<std::string, std::shared_ptr<const Codec>>> cases = {
      {"fp16", std::make_shared<IdentityCodec>(at::kHalf)},
      {"q4_1", std::make_shared<BlockQuantCodec>(4, false, 32, true, true)},
      {"kivi-4", std::make_shared<KiviCodec>(4, 32, 128, at::kHalf, true, true)},
      {"kivi-2", std::make_shared<KiviCodec>(2, 32, 128, at::kHalf, true, true)},
      {"kivi-2 exact", std::make_shared<KiviCodec>(2, 32, 128, at::kHalf, false, false)}};
  at::Tensor q = at::randn({rows, dim}, at::detail::createCPUGenerator(1));
  at::Tensor p = at::rand({rows, tokens}, at::detail::createCPUGenerator(2));
  for (const auto& [name, codec] : cases) {
    auto keys = codec->make_key_store(1, dim), values = codec->make_value_store(1, dim);
    keys->append(at::randn({1, tokens + 128, dim}, at::detail::createCPUGenerator(3)));
    values->append(at::randn({1, tokens + 128, dim}, at::detail::createCPUGenerator(4)));
    std::vector<float> scores(static_cast<size_t>(rows * tokens)), out(rows * dim);
    auto fastest = [&](auto&& call) {
      double best = 1e30;
      for (int i = 0; i < 3000; ++i) {
        const auto a = std::chrono::steady_clock::now();
        call();
        const auto b = std::chrono::steady_clock::now();
        best = std::min(best, std::chrono::duration<double, std::nano>(b - a).count());
      }
      return best / tokens;
    };
    const bool quantized = keys->quantized_query();
    std::vector<int8_t> q8(rows * dim);
    std::vector<float> q8s(rows * dim / simd::kQ8Block), q8d(q8s.size());
    simd::quantize_q8(q.data_ptr<float>(), rows, dim, q8.data(), q8s.data(), q8d.data());
    const double k = fastest([&] {
      if (quantized) {
        keys->dot_quantized(0, {q8.data(), q8s.data(), q8d.data()}, rows, 0, tokens, scores.data(),
                            tokens);
      } else {
        keys->dot(0, q.data_ptr<float>(), rows, 0, tokens, scores.data(), tokens);
      }
    });
    const double v = fastest(
        [&] { values->accumulate(0, p.data_ptr<float>(), rows, 0, tokens, tokens, out.data()); });
    std::printf("%-12s %s  keys %6.2f  values %6.2f  ns per token and KV head (4 rows)\n",
                name.c_str(), simd::kernel_isa(), k, v);
  }
}

// Not a test: CPU ms of the KIVI key kernels alone on one thread, rows (token rows,
// simd::channel_scores) against tiles (simd::kivi_key_tile_scores) on the same codes: 8 heads x
// 32k tokens, head_dim 128, group 32, 4 query rows, chunks of 512 tokens as the fused attention
// calls them. Run with --gtest_also_run_disabled_tests --gtest_filter='*KeyKernelProbe*'.
TEST(FusedKernels, DISABLED_KeyKernelProbe) {
  const int64_t heads = 8, tokens = 32768, n = 128, group = 32, rows = 4, chunk = 512;
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> s(static_cast<size_t>(tokens / group * n)), z(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    s[i] = 0.01f + std::fabs(normal(rng));
    z[i] = normal(rng);
  }
  std::vector<float> q(static_cast<size_t>(rows * n)), scores(static_cast<size_t>(rows * chunk));
  for (float& x : q) x = normal(rng);
  for (int bits : {2, 4}) {
    const int64_t row_bytes = n * bits / 8, words = row_bytes / 4;
    std::vector<uint8_t> codes(static_cast<size_t>(heads * tokens * row_bytes)),
        tiles(codes.size());
    for (uint8_t& c : codes) c = static_cast<uint8_t>(rng());
    for (int64_t h = 0; h < heads; ++h) {
      simd::tile_key_rows(codes.data() + h * tokens * row_bytes, words, 0, tokens,
                          tiles.data() + h * tokens * row_bytes);
    }
    for (bool tiled : {false, true}) {
      std::vector<double> cpu;
      for (int rep = 0; rep < 23; ++rep) {
        timespec a{}, b{};
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
        for (int64_t h = 0; h < heads; ++h) {
          for (int64_t t0 = 0; t0 < tokens; t0 += chunk) {
            const float* sg = s.data() + t0 / group * n;
            const float* zg = z.data() + t0 / group * n;
            if (tiled) {
              simd::kivi_key_tile_scores({tiles.data() + h * tokens * row_bytes, s.data(), z.data(),
                                          simd::RowType::kFloat32, bits, group, n},
                                         t0, t0 + chunk, q.data(), rows, scores.data(), chunk,
                                         true);
            } else {
              simd::channel_scores(
                  {codes.data() + (h * tokens + t0) * row_bytes, sg, zg, bits, group, n, 0}, chunk,
                  q.data(), rows, scores.data(), chunk, true);
            }
          }
        }
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
        if (rep >= 3) cpu.push_back((b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) * 1e-6);
      }
      std::sort(cpu.begin(), cpu.end());
      std::printf("keys %d-bit %-5s %s  %6.3f ms cpu (median of %d, min %6.3f)\n", bits,
                  tiled ? "tiles" : "rows", simd::kernel_isa(), cpu[cpu.size() / 2],
                  static_cast<int>(cpu.size()), cpu[0]);
    }
  }
}

}  // namespace
}  // namespace kvbench
