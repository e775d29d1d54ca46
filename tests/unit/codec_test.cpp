// Every method in the registry, tested automatically: reconstruction within the codec's own
// stated bound, measured bytes equal to the formula, the fused CPU attention against the
// reference path, and the tiny model generating end to end.
#include <gtest/gtest.h>

#include <limits>

#include <cctype>
#include <cmath>
#include <set>

#include "kvbench/attention/cpu_attention.h"
#include "kvbench/attention/reference_attention.h"
#include "kvbench/core/error.h"
#include "kvbench/engine/generator.h"
#include "kvbench/kv/block_quant_codec.h"
#include "kvbench/kv/fp8_codec.h"
#include "kvbench/kv/full_cache.h"
#include "kvbench/kv/identity_codec.h"
#include "kvbench/kv/kivi_codec.h"
#include "kvbench/kv/method_registry.h"
#include "kvbench/kv/simd.h"
#include "kvbench/model/presets.h"
#include "kvbench/model/tiny_tokenizer.h"
#include "kvbench/suites/preparation.h"
#include "preparation_helpers.h"
#include "random_kv.h"

namespace kvbench {
namespace {

using nlohmann::json;
using testing_support::ready;

json defaults(const std::string& name) { return resolve_method({{"name", name}}, "methods[0]"); }

using testing_support::kv_like;

// q ([heads, 1, dim]) as the integer key kernels read it: int8 blocks of 32, d * c.
at::Tensor int8_rounded(const at::Tensor& q) {
  at::Tensor x = q.contiguous();
  const int64_t rows = x.size(0), dim = x.size(2), blocks = dim / simd::kQ8Block;
  std::vector<int8_t> codes(static_cast<size_t>(rows * dim));
  std::vector<float> scales(static_cast<size_t>(rows * blocks)), dsums(scales.size());
  simd::quantize_q8(x.data_ptr<float>(), rows, dim, codes.data(), scales.data(), dsums.data());
  at::Tensor out = at::empty_like(x);
  for (int64_t i = 0; i < rows * dim; ++i) {
    out.data_ptr<float>()[i] = scales[i / simd::kQ8Block] * codes[i];
  }
  return out;
}

class EveryMethod : public ::testing::TestWithParam<std::string> {
 protected:
  std::shared_ptr<const Codec> codec() const {
    return make_codec(defaults(GetParam()), at::kBFloat16);
  }
};

TEST_P(EveryMethod, ReconstructionWithinTheCodecsBound) {
  auto c = ready(codec(), 1, 2, 64);
  for (bool is_key : {true, false}) {
    auto store = is_key ? c->make_layer_key_store(0, 2, 64) : c->make_layer_value_store(0, 2, 64);
    // 300 tokens: past KIVI's residual window (R = 128: two blocks of keys quantized, values
    // beyond the last R) and GEAR's streaming buffer, so the quantized parts are checked too.
    const int64_t tokens = 300, later = tokens - 17;
    at::Tensor x = kv_like(2, tokens, 64, 5);
    // Appended as a prefill and later steps; the later tokens stay inside the range the prefill
    // saw, as calibrated formats (fp8 amax) assume.
    x.narrow(1, 17, later)
        .copy_(x.narrow(1, 0, 17).abs().amax(1, true).expand({2, later, 64}) *
               at::tanh(x.narrow(1, 17, later)));
    store->append(x.narrow(1, 0, 17));
    for (int64_t t = 17; t < tokens; t += 41)
      store->append(x.narrow(1, t, std::min<int64_t>(41, tokens - t)));
    ASSERT_EQ(store->size(), tokens);
    at::Tensor back = store->dequantize();
    // Closer to the input than nothing is: a store returning zeros would meet a bound as loose
    // as the low-rank codecs' below full rank (|x| per element), not this.
    EXPECT_LT((back - x).norm().item<double>(), 0.9 * x.norm().item<double>())
        << GetParam() << (is_key ? " keys" : " values");
    for (int64_t h = 0; h < 2; ++h) {
      const double amax = x[h].abs().max().item<double>();
      for (int64_t t = 0; t < tokens; ++t) {
        at::Tensor row = x[h][t];
        at::Tensor excess = (back[h][t] - row).abs() - c->max_error(row, is_key, amax);
        ASSERT_LE(excess.max().item<float>(), 0.0f)
            << GetParam() << (is_key ? " keys" : " values") << " head " << h << " token " << t;
      }
    }
  }
}

// A value that is not finite (a NaN from NaN weights, an overflow upstream) reads back not
// finite, as the full cache shows it: a quantized group must not pass it off as its min (NaN
// was skipped by min/max and coded as 0). fp8 saturates an infinity to 448 (its conversion's
// rule, as vLLM clamps before the cast), so only NaN is asked of it.
TEST_P(EveryMethod, ANonFiniteValueReadsBackNonFinite) {
  auto c = ready(codec(), 1, 2, 64);
  for (bool is_key : {true, false}) {
    auto store = is_key ? c->make_layer_key_store(0, 2, 64) : c->make_layer_value_store(0, 2, 64);
    const int64_t tokens = 300;
    at::Tensor x = kv_like(2, tokens, 64, 9);
    x[0][40][5] = std::numeric_limits<float>::quiet_NaN();
    const bool saturates = GetParam().rfind("fp8", 0) == 0;
    if (!saturates) x[1][200][0] = std::numeric_limits<float>::infinity();
    store->append(x.narrow(1, 0, 250));
    for (int64_t t = 250; t < tokens; ++t) store->append(x.narrow(1, t, 1));
    const at::Tensor back = store->dequantize();
    EXPECT_FALSE(std::isfinite(back[0][40][5].item<float>()))
        << GetParam() << (is_key ? " keys" : " values") << ": NaN read back finite";
    if (!saturates)
      EXPECT_FALSE(std::isfinite(back[1][200][0].item<float>()))
          << GetParam() << (is_key ? " keys" : " values") << ": inf read back finite";
  }
  // The fused attention shows the NaN too, as the reference's softmax does: a vector exp that
  // clamped NaN scores to -87 gave that token weight ~0 and a finite output (on AVX2 and
  // AVX-512; the scalar tail kept it, so the result depended on where the token sat).
  for (const int64_t at : {40, 47, 299}) {
    auto keys = c->make_layer_key_store(0, 2, 64), values = c->make_layer_value_store(0, 2, 64);
    at::Tensor k = kv_like(2, 300, 64, 9);
    k[0][at][5] = std::numeric_limits<float>::quiet_NaN();
    keys->append(k.narrow(1, 0, 250));
    values->append(kv_like(2, 250, 64, 10));
    for (int64_t t = 250; t < 300; ++t) {
      keys->append(k.narrow(1, t, 1));
      values->append(kv_like(2, 1, 64, 11 + t));
    }
    const at::Tensor q = at::randn({4, 1, 64}, at::detail::createCPUGenerator(5));
    const at::Tensor out = cpu_decode_attention(q, *keys, *values, 2, 0.125);
    EXPECT_FALSE(at::isfinite(out[0]).all().item<bool>())
        << GetParam() << ": a NaN key at " << at << " gave a finite attention output";
    EXPECT_TRUE(at::isfinite(out[2]).all().item<bool>()) << GetParam() << ": the other head";
  }
}

// Past KIVI's window (R = 128: two key blocks quantized, values before the last R) and GEAR's
// streaming buffer, through decode steps after the prefill, so every part of each format is
// counted: codes, scales, windows, buffers.
TEST_P(EveryMethod, MeasuredBytesEqualTheFormula) {
  auto c = ready(codec(), 2, 2, 64);
  CompressedKVCache cache(c, AttentionBackend::kCpu, 2, 2, 64);
  const int64_t s = cache.add_sequence();
  const int64_t prompt = 290, steps = 12;
  const at::Tensor k = kv_like(2, prompt + steps, 64, 1), v = kv_like(2, prompt + steps, 64, 2);
  const at::Tensor q = at::randn({4, prompt + steps, 64});
  for (int64_t t = 0; t < prompt + steps; t = t == 0 ? prompt : t + 1) {
    const int64_t n = t == 0 ? prompt : 1;
    for (int64_t layer = 0; layer < 2; ++layer)
      cache.append_and_attend(s, layer, q.narrow(1, t, n), k.narrow(1, t, n), v.narrow(1, t, n));
    const StorageBytes measured = cache.storage(), nominal = cache.nominal();
    ASSERT_EQ(measured.payload, nominal.payload) << GetParam() << " at " << t + n << " tokens";
    ASSERT_EQ(measured.metadata, nominal.metadata) << GetParam() << " at " << t + n << " tokens";
    ASSERT_GT(measured.total(), 0u);
  }
}

// Methods with int8 value weights (value_int8 on) are checked twice: their exact-weight path
// against the reference as below, and the int8 path against the exact one within the bound of
// simd::codes_weighted_sum_int8 restated with the input's group extremes: per output component
//   |delta_ri| <= (32 / 254) 2.01 sum_T max_{t in T} P_rt amax_{t, g(i)}
// over aligned 32-token tiles T of quantized values (P: the attention probabilities; |d| c <=
// 2.01 amax for every code, see FusedKernels.StoresWithInt8ValueWeightsWithinTheBound).
// KIVI's integer keys (query_int8, on by default) are checked the same way: the default
// method against the exact paths, each score moving by at most
//   eps_t = scale sum_b (32 / 254) max_{i in b} |q_i| max_{i in b} reach_gi
// (reach: the token group's input range plus the bf16 rounding of its scale, >= s_i qmax; see
// FusedKernels.KiviIntegerKeyScoresWithinTheQueryRoundingBound), so the output by at most
// (exp(2 max eps) - 1) max |v| plus the value bound scaled by exp(2 max eps).
TEST_P(EveryMethod, FusedCpuAttentionMatchesReference) {
  json method = defaults(GetParam());
  const bool int8_values = method.value("value_int8", false);
  const bool kivi_int8_keys = GetParam().rfind("kivi", 0) == 0 && method.value("query_int8", false);
  if (int8_values) method["value_int8"] = false;
  if (kivi_int8_keys) method["query_int8"] = false;
  for (int64_t dim : {64, 128}) {
    auto c = ready(make_codec(method, at::kBFloat16), 1, 2, dim);
    auto c8 = int8_values || kivi_int8_keys ? ready(codec(), 1, 2, dim) : nullptr;
    for (int64_t group : {1, 4}) {
      for (int64_t tokens : {1, 37, 1100}) {  // 1100 spans three 512-token chunks
        auto keys = c->make_layer_key_store(0, 2, dim),
             values = c->make_layer_value_store(0, 2, dim);
        keys->append(kv_like(2, tokens, dim, 7));
        values->append(kv_like(2, tokens, dim, 8));
        at::Tensor q = at::randn({2 * group, 1, dim}, at::detail::createCPUGenerator(9));
        const double scale = 1 / std::sqrt(double(dim));
        at::Tensor fused = cpu_decode_attention(q, *keys, *values, 2, scale);
        // Formats with integer key kernels score against the int8-rounded query: the
        // reference gets that query, so only summation order differs (the rounding itself is
        // bounded in FusedKernels.IntegerKeyScoresWithinTheQueryRoundingBound and below).
        const at::Tensor kd = keys->dequantize(), vd = values->dequantize();
        const at::Tensor q_read = keys->quantized_query() ? int8_rounded(q) : q;
        at::Tensor ref = block_attention_reference(q_read, kd, vd, scale);
        const double rel = ((fused - ref).norm() / ref.norm()).item<double>();
        EXPECT_LT(rel, c->fused_tolerance())
            << GetParam() << " dim " << dim << " group " << group << " tokens " << tokens;
        if (c8) {
          auto keys8 = c8->make_layer_key_store(0, 2, dim),
               values8 = c8->make_layer_value_store(0, 2, dim);
          const at::Tensor k_in = kv_like(2, tokens, dim, 7);
          keys8->append(k_in);
          const at::Tensor v_in = kv_like(2, tokens, dim, 8);
          values8->append(v_in);
          const at::Tensor fused8 = cpu_decode_attention(q, *keys8, *values8, 2, scale);
          const int64_t vgroup = method["group"].get<int64_t>();
          const int64_t quantized =
              !int8_values ? 0
              : method.contains("residual")
                  ? std::max<int64_t>(0, tokens - method["residual"].get<int64_t>())
                  : tokens;
          for (int64_t h = 0; h < 2 * group; ++h) {
            double key_eps = 0;  // the largest score move of the integer KIVI keys
            if (kivi_int8_keys) {
              const int64_t residual = method["residual"].get<int64_t>();
              const at::Tensor xk = k_in[h / group].to(at::kDouble);
              const at::Tensor qmag = q[h][0].abs().to(at::kDouble).view({dim / 32, 32}).amax(1);
              for (int64_t a = 0; a + vgroup <= tokens - tokens % residual; a += vgroup) {
                const at::Tensor block = xk.narrow(0, a, vgroup);
                const at::Tensor reach = (std::get<0>(block.max(0)) - std::get<0>(block.min(0)) +
                                          block.abs().amax(0) * 0x1.0p-7) *
                                         (1 + 0x1.0p-7) * 1.001;
                key_eps = std::max(
                    key_eps, (qmag * reach.view({dim / 32, 32}).amax(1)).sum().item<double>() *
                                 32.0 / 254.0 * scale);
              }
            }
            const double key_factor = std::exp(2 * key_eps);
            const at::Tensor p = at::softmax(
                at::mv(kd[h / group].to(at::kDouble), q_read[h][0].to(at::kDouble)) * scale, 0);
            const at::Tensor amax = v_in[h / group]
                                        .abs()
                                        .to(at::kDouble)
                                        .view({tokens, dim / vgroup, vgroup})
                                        .amax(2);  // [tokens, groups]
            at::Tensor bound = at::zeros({dim / vgroup}, at::kDouble);
            for (int64_t a = 0; a < quantized; a += simd::kValueTile) {
              const int64_t b = std::min(quantized, a + simd::kValueTile);
              at::Tensor prod = p.narrow(0, a, b - a).unsqueeze(1) * amax.narrow(0, a, b - a);
              bound += std::get<0>(prod.max(0));
            }
            const double vmax = vd[h / group].abs().max().item<double>();
            bound = bound.repeat_interleave(vgroup) * (32.0 / 254.0 * 2.01 * 1.01) * key_factor +
                    (key_factor - 1) * vmax + 1e-5 * vmax;
            const at::Tensor excess = (fused8[h][0] - fused[h][0]).abs().to(at::kDouble) - bound;
            EXPECT_LE(excess.max().item<double>(), 0.0)
                << GetParam() << " int8 keys/values, dim " << dim << " group " << group
                << " tokens " << tokens << " head " << h;
          }
        }
        if (keys->quantized_query()) {
          // Against the float query: each score moves by at most
          // eps_t = scale * sum_b (d_qb / 2) sum_{i in b} |k_ti|, so every probability by a
          // factor within exp(+-2 max eps), and the output by at most
          // (exp(2 max eps) - 1) * max_t |v_t| (per component).
          at::Tensor exact = block_attention_reference(q, kd, vd, scale);
          at::Tensor half_step = (q - int8_rounded(q)).abs();  // <= d_qb / 2, per element
          half_step = std::get<0>(half_step.view({2 * group, dim / 32, 32}).max(2));
          for (int64_t h = 0; h < 2 * group; ++h) {
            at::Tensor kb = kd[h / group].abs().view({tokens, dim / 32, 32}).sum(2);
            const double eps = scale * at::mv(kb, half_step[h]).max().item<double>();
            const double vmax = vd[h / group].abs().max().item<double>();
            const double bound = (std::exp(2 * eps) - 1) * vmax + 1e-4 * vmax;
            EXPECT_LE((fused[h] - exact[h]).abs().max().item<double>(), bound)
                << GetParam() << " head " << h << " tokens " << tokens;
          }
        }
      }
    }
  }
}

// tiny-llama with random weights and the in-memory tokenizer its prepare step reads.
struct TinyLlama {
  Transformer model;
  Tokenizer tokenizer;
};
TinyLlama tiny_llama(uint64_t seed) {
  const ModelPreset& preset = find_model_preset("tiny-llama");
  Transformer model = Transformer::random(parse_model_config(preset.config, preset.name), seed);
  const int vocab = static_cast<int>(model.config().vocab_size);
  return {std::move(model),
          Tokenizer::from_json(tiny_tokenizer_json(vocab), tiny_tokenizer_config(), nullptr,
                               "tiny (in memory)")};
}

TEST_P(EveryMethod, TinyModelGeneratesEndToEnd) {
  const TinyLlama tiny = tiny_llama(2);
  const Transformer& model = tiny.model;
  const ModelConfig& mc = model.config();
  // Codecs fitted to the model go through the prepare step, as suites run it.
  const PreparedCodec prepared = prepare_codec(codec(), model, &tiny.tokenizer);
  for (const char* backend : {"cpu", "reference"}) {
    auto cache = make_kv_cache(defaults(GetParam()), prepared.codec, mc.num_layers, mc.num_kv_heads,
                               mc.head_dim, at::kFloat, backend);
    GenerationConfig g;
    g.max_new_tokens = 6;
    GenerationResult r = generate(model, *cache, {{5, 6, 7, 8}, {9, 10}}, g);
    ASSERT_EQ(r.sequences.size(), 2u);
    EXPECT_EQ(r.sequences[0].tokens.size(), 6u);
    EXPECT_GT(r.peak_kv_bytes, 0u);
  }
}

// Only the cache is compressed: a prompt's prefill attends its keys and values as computed,
// so on an fp32 model its logits are the full cache's bit for bit, whatever the quantizer or
// retention policy; decode steps read the cache, where a lossy codec shows. Low-rank codecs'
// keys are their reconstruction (Palu factors the projections), so their prefill differs.
TEST_P(EveryMethod, APromptsPrefillAttendsItsKeysAsComputed) {
  const TinyLlama tiny = tiny_llama(4);
  const Transformer& model = tiny.model;
  const ModelConfig& mc = model.config();
  const PreparedCodec prepared =
      prepare_codec(make_codec(defaults(GetParam()), at::kFloat), model, &tiny.tokenizer);
  FullKVCache full(mc.num_layers, mc.num_kv_heads, mc.head_dim, at::kFloat);
  auto cache = make_kv_cache(defaults(GetParam()), prepared.codec, mc.num_layers, mc.num_kv_heads,
                             mc.head_dim, at::kFloat, "cpu");
  std::vector<int64_t> prompt;  // past KIVI's residual of 128: its groups are quantized
  for (int64_t i = 0; i < 160; ++i) prompt.push_back(3 + (i * 37) % (mc.vocab_size - 3));
  const int64_t sf = full.add_sequence(), sm = cache->add_sequence();
  const at::Tensor pf = model.forward({{sf, prompt}}, full, /*all_logits=*/true);
  const at::Tensor pm = model.forward({{sm, prompt}}, *cache, /*all_logits=*/true);
  const bool low_rank = prepared.codec->prefill_reads_stored();
  if (low_rank) {
    EXPECT_FALSE(at::equal(pf, pm)) << "a low-rank prefill attends its reconstruction";
  } else {
    EXPECT_TRUE(at::equal(pf, pm)) << (pf - pm).abs().max().item<double>();
  }
  const at::Tensor df = model.forward({{sf, {7}}}, full), dm = model.forward({{sm, {7}}}, *cache);
  const std::set<std::string> lossy = {"int8", "int4", "int2",   "kivi-2", "kivi-4",
                                       "fp8",  "gear", "gear-4", "gear-8"};
  if (lossy.count(GetParam())) EXPECT_FALSE(at::equal(df, dm)) << "decode reads the cache";
}

std::vector<std::string> all_methods() { return method_names(); }

INSTANTIATE_TEST_SUITE_P(Registry, EveryMethod, ::testing::ValuesIn(all_methods()),
                         [](const auto& info) {
                           std::string name = info.param;  // test names allow [A-Za-z0-9_]
                           for (char& c : name)
                             c = std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
                           return name;
                         });

// The fused path against an independent float64 loop, not only against the reference path.
TEST(CpuAttention, MatchesFloat64Loops) {
  IdentityCodec codec(at::kFloat);
  auto keys = codec.make_key_store(2, 64), values = codec.make_value_store(2, 64);
  at::Tensor k = kv_like(2, 700, 64, 1), v = kv_like(2, 700, 64, 2);
  keys->append(k);
  values->append(v);
  at::Tensor q = at::randn({6, 1, 64}, at::detail::createCPUGenerator(3));
  at::Tensor got = cpu_decode_attention(q, *keys, *values, 2, 0.125).to(at::kDouble);
  at::Tensor kd = k.to(at::kDouble), vd = v.to(at::kDouble), qd = q.to(at::kDouble);
  for (int64_t h = 0; h < 6; ++h) {
    const int64_t kv = h / 3;
    at::Tensor p = at::softmax(at::mv(kd[kv], qd[h][0]) * 0.125, 0);
    at::Tensor want = at::mv(vd[kv].t(), p);
    EXPECT_LT(((got[h][0] - want).norm() / want.norm()).item<double>(), 1e-5) << h;
  }
}

TEST(Simd, PolynomialExpMatchesLibm) {
  std::vector<float> x;
  for (float v = -90.0f; v <= 0.0f; v += 0.037f) x.push_back(v);
  std::vector<float> y = x;
  const float sum = simd::exp_shift_sum(y.data(), static_cast<int64_t>(y.size()), 0.0f);
  double want_sum = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double want = std::exp(static_cast<double>(x[i]));
    want_sum += want;
    if (x[i] > -87.0f) EXPECT_NEAR(y[i], want, 2e-7 * want + 1e-38) << x[i];
  }
  EXPECT_NEAR(sum, want_sum, 1e-6 * want_sum);
  std::vector<float> z = {1.0f, -3.0f, 2.5f};
  EXPECT_FLOAT_EQ(simd::scale_max(z.data(), 3, 2.0f), 5.0f);
  EXPECT_FLOAT_EQ(z[1], -6.0f);
}

TEST(BlockQuant, BytesPerBlockMatchLlamaCpp) {
  // One token, one head, head_dim 32 = one block, K and V: q8_0 34 B, q4_0 18 B, q4_1 20 B,
  // 2-bit 12 B per block.
  EXPECT_EQ(BlockQuantCodec(8, true, 32).nominal_bytes(1, 1, 32).total(), 2u * 34);
  EXPECT_EQ(BlockQuantCodec(4, true, 32).nominal_bytes(1, 1, 32).total(), 2u * 18);
  EXPECT_EQ(BlockQuantCodec(4, false, 32).nominal_bytes(1, 1, 32).total(), 2u * 20);
  EXPECT_EQ(BlockQuantCodec(2, false, 32).nominal_bytes(1, 1, 32).total(), 2u * 12);
  EXPECT_EQ(IdentityCodec(at::kHalf).nominal_bytes(1, 1, 128).total(), 512u);  // 4d per token
}

TEST(BlockQuant, ConstantGroupsAndGroupExtremes) {
  for (auto [bits, symmetric] : {std::pair{8, true}, {4, true}, {4, false}, {2, false}}) {
    BlockQuantCodec codec(bits, symmetric, 32);
    auto store = codec.make_value_store(1, 64);
    at::Tensor x = at::randn({1, 2, 64}, at::detail::createCPUGenerator(4));
    x[0][0].narrow(0, 0, 32).fill_(0.75f);  // a constant group: scale 0, no division by zero
    store->append(x);
    at::Tensor back = store->dequantize();
    EXPECT_TRUE(at::isfinite(back).all().item<bool>());
    if (!symmetric) {
      // Asymmetric: a group's min and max come back within the fp16 rounding of scale and min.
      for (int64_t g = 0; g < 2; ++g) {
        at::Tensor grp = x[0][1].narrow(0, g * 32, 32), rec = back[0][1].narrow(0, g * 32, 32);
        const float lo = grp.min().item<float>(), hi = grp.max().item<float>();
        const float tol = (std::fabs(lo) + std::fabs(hi)) * 0x1.0p-9f;
        EXPECT_NEAR(rec.min().item<float>(), lo, tol) << bits;
        EXPECT_NEAR(rec.max().item<float>(), hi, tol) << bits;
      }
    }
    // A constant group: the min-max formats exactly (scale 0, the min 0.75 fp16-exact); q8_0
    // and q4_0 within their half (q4_0: whole) step d = 0.75/127 (/8), as any group.
    const at::Tensor constant = back[0][0].narrow(0, 0, 32).to(at::kDouble);
    const double step = symmetric ? 0.75 / (bits == 8 ? 127 : 8) : 0.0;
    const double worst = (constant - 0.75).abs().max().item<double>();
    if (symmetric)
      EXPECT_LE(worst, (bits == 8 ? 0.5 : 1.0) * step * (1 + 1e-3)) << bits;
    else
      EXPECT_EQ(worst, 0.0) << bits;
  }
}

// The formats' fp16 scale and min: tiny groups get subnormal scales (or 0) and stay within the
// stated bound; a group past fp16's range (a bf16 or fp32 model's |x| > 65504) reads back NaN,
// not infinities or a wrong finite value.
TEST(BlockQuant, TinyAndHugeGroupsAgainstTheFp16Scale) {
  for (auto [bits, symmetric] : {std::pair{8, true}, {4, true}, {4, false}, {2, false}}) {
    BlockQuantCodec codec(bits, symmetric, 32);
    for (const double scale : {1e-3, 1e-4, 1e-5, 1e-7}) {
      auto store = codec.make_value_store(1, 64);
      const at::Tensor x = kv_like(1, 8, 64, 3) * scale;
      store->append(x);
      const at::Tensor back = store->dequantize();
      for (int64_t t = 0; t < 8; ++t) {
        const at::Tensor excess =
            (back[0][t] - x[0][t]).abs() - codec.max_error(x[0][t], false, 0.0);
        ASSERT_LE(excess.max().item<float>(), 0.0f)
            << bits << (symmetric ? " symmetric" : "") << " at scale " << scale << " token " << t;
      }
    }
    auto store = codec.make_value_store(1, 64);
    at::Tensor x = kv_like(1, 1, 64, 4);
    // Past what the fp16 scale or min can hold: q8_0's scale amax / 127 past 8.3e6, q4_0's
    // amax / 8 past 5.2e5, the others' min below -65504.
    x[0][0][3] = !symmetric ? -7e4f : bits == 8 ? 1e7f : 1e6f;
    store->append(x);
    const at::Tensor back = store->dequantize();
    EXPECT_TRUE(std::isnan(back[0][0][3].item<float>())) << bits;
    EXPECT_TRUE(at::isfinite(back[0][0].narrow(0, 32, 32)).all().item<bool>()) << bits;
  }
}

TEST(Fp8, E4m3ConversionRoundsToNearestEvenAndSaturates) {
  EXPECT_EQ(float_to_e4m3(1.0f), 0x38);  // exponent 7 (bias 7), mantissa 0
  EXPECT_EQ(float_to_e4m3(-2.0f), 0xC0);
  EXPECT_EQ(float_to_e4m3(448.0f), 0x7E);  // largest finite
  EXPECT_EQ(float_to_e4m3(1e6f), 0x7E);    // saturates, never NaN
  EXPECT_EQ(float_to_e4m3(-1e6f), 0xFE);
  EXPECT_EQ(float_to_e4m3(0x1.0p-9f), 0x01);  // smallest subnormal
  EXPECT_EQ(float_to_e4m3(0.0f), 0x00);
  EXPECT_EQ(float_to_e4m3(1.0625f), 0x38);  // tie between mantissas 0 and 1: even
  EXPECT_EQ(float_to_e4m3(1.1875f), 0x3A);  // tie between mantissas 1 and 2: even
  EXPECT_TRUE(std::isnan(e4m3_to_float(0x7F)));
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7F) == 0x7F) continue;
    const float v = e4m3_to_float(static_cast<uint8_t>(c));
    if (v == 0.0f) continue;              // -0 and +0 both encode to +0's neighbourhood
    EXPECT_EQ(float_to_e4m3(v), c) << c;  // every finite code round-trips exactly
  }
}

TEST(Fp8, CalibratedScaleSaturatesLaterOutliers) {
  Fp8Codec codec("amax", 1.0, 448.0, 448.0, "head");
  auto store = codec.make_key_store(1, 8);
  store->append(at::full({1, 1, 8}, 2.0f));  // calibrates s = 2 / 448
  store->append(at::full({1, 1, 8}, 5.0f));  // beyond 448 s = 2: saturates to 2
  at::Tensor back = store->dequantize();
  EXPECT_FLOAT_EQ(back[0][0][0].item<float>(), 2.0f);
  EXPECT_FLOAT_EQ(back[0][1][0].item<float>(), 2.0f);
  EXPECT_EQ(store->bytes().payload, 16u);
  EXPECT_EQ(store->bytes().metadata, 4u);  // one fp32 scale for the one head
}

// granularity "layer": one scale for the layer, from the amax over every head, stored once;
// "head": one per head, from its own amax.
TEST(Fp8, LayerGranularityCalibratesOneScaleOverAllHeads) {
  at::Tensor x = at::empty({2, 1, 8});
  x[0].fill_(1.0f), x[1].fill_(4.0f);
  for (const char* granularity : {"layer", "head"}) {
    SCOPED_TRACE(granularity);
    const bool layer = std::string(granularity) == "layer";
    Fp8Codec codec("amax", 1.0, 448.0, 448.0, granularity);
    auto store = codec.make_key_store(2, 8);
    store->append(x);  // scales: 4/448 for both heads (layer) or 1/448 and 4/448 (head)
    store->append(x * 2);
    const at::Tensor back = store->dequantize();
    EXPECT_EQ(store->bytes().metadata, layer ? 4u : 8u);
    EXPECT_FLOAT_EQ(back[0][0][0].item<float>(), 1.0f);
    EXPECT_FLOAT_EQ(back[1][0][0].item<float>(), 4.0f);
    // 2 in head 0: 224 steps of 1/112 under the layer's scale, past 448 steps under its own
    // (saturates at its amax); head 1's 8 saturates at 4 either way.
    EXPECT_FLOAT_EQ(back[0][1][0].item<float>(), layer ? 2.0f : 1.0f);
    EXPECT_FLOAT_EQ(back[1][1][0].item<float>(), 4.0f);
  }
}

// scale "fixed": s is scale_value from the first token on, nothing calibrated; values round to
// e4m3 codes of x / s and saturate at 448 s.
TEST(Fp8, FixedScaleIsNotCalibrated) {
  Fp8Codec codec("fixed", 0.01, 448.0, 448.0, "head");
  auto store = codec.make_value_store(1, 4);
  store->append(at::tensor({0.48f, -0.96f, 3.0f, 10.0f}).view({1, 1, 4}));
  const at::Tensor back = store->dequantize()[0][0];
  // x / 0.01: 48 and 96 are e4m3 values; 300 rounds to 288 (step 32 in [256, 448)); 1000
  // saturates to 448.
  const std::vector<float> want = {0.48f, -0.96f, 2.88f, 4.48f};
  for (int64_t d = 0; d < 4; ++d) EXPECT_NEAR(back[d].item<float>(), want[d], 1e-5) << d;
  EXPECT_EQ(store->bytes().metadata, 4u);
}

// The default calibration leaves vLLM's headroom: s = amax / 200 for keys and / 100 for values,
// so tokens after a one-token prompt up to 2.24x (keys) and 4.48x (values) its amax keep fp8's
// relative precision instead of saturating (as amax / 448 did).
TEST(Fp8, DefaultCalibrationLeavesHeadroomForLaterTokens) {
  const auto codec = make_codec(defaults("fp8"), at::kBFloat16);
  for (bool is_key : {true, false}) {
    auto store = is_key ? codec->make_key_store(1, 8) : codec->make_value_store(1, 8);
    const at::Tensor first = at::linspace(-2.0, 2.0, 8).view({1, 1, 8});
    const double grow = is_key ? 2.2 : 4.4;
    store->append(first);
    store->append(first * grow);
    const at::Tensor back = store->dequantize();
    const at::Tensor later = first[0][0] * grow;
    const at::Tensor error = (back[0][1] - later).abs();
    EXPECT_TRUE((error <= later.abs() * 0x1.0p-4 + 1e-6).all().item<bool>())
        << (is_key ? "keys" : "values") << ": " << back[0][1] << " for " << later;
    // Beyond the headroom, saturation at 448 s.
    store->append(first * (is_key ? 3.0 : 6.0));
    EXPECT_NEAR(store->dequantize()[0][2][7].item<float>(),
                is_key ? 2.0 * 448 / 200 : 2.0 * 448 / 100, 1e-5);
  }
  EXPECT_EQ(codec->params()["key_amax_divisor"], 200.0);
  EXPECT_EQ(codec->params()["value_amax_divisor"], 100.0);
  // The single divisor of before 2026-12-07 is gone: the closest key is named.
  EXPECT_THROW(resolve_method({{"name", "fp8"}, {"amax_divisor", 448}}, "methods[0]"), ConfigError);
  // A divisor past 448 would put the calibrating tokens' own amax past e4m3's largest value.
  EXPECT_NO_THROW(resolve_method({{"name", "fp8"}, {"key_amax_divisor", 448}}, "methods[0]"));
  for (const char* key : {"key_amax_divisor", "value_amax_divisor"})
    EXPECT_THROW(resolve_method({{"name", "fp8"}, {key, 449}}, "methods[0]"), ConfigError) << key;
}

TEST(Kivi, ResidualCoveringEveryTokenIsTheFullCache) {
  KiviCodec kivi(2, 32, 128, at::kBFloat16);
  IdentityCodec full(at::kBFloat16);
  at::Tensor x = kv_like(2, 100, 64, 3);
  for (bool is_key : {true, false}) {
    auto a = is_key ? kivi.make_key_store(2, 64) : kivi.make_value_store(2, 64);
    auto b = is_key ? full.make_key_store(2, 64) : full.make_value_store(2, 64);
    a->append(x.narrow(1, 0, 60));
    a->append(x.narrow(1, 60, 40));
    b->append(x);
    EXPECT_TRUE(at::equal(a->dequantize(), b->dequantize())) << is_key;
  }
  // At T = R the keys are one quantized block (T - T mod R, as KIVI's code quantizes a
  // prefill of a multiple of R); the values keep their window of R exact; at R + 1 one value
  // leaves it.
  const at::Tensor y = kv_like(2, 129, 64, 4);
  for (const int64_t t : {128, 129}) {
    auto keys = kivi.make_key_store(2, 64), values = kivi.make_value_store(2, 64);
    auto exact = full.make_key_store(2, 64);
    keys->append(y.narrow(1, 0, t));
    values->append(y.narrow(1, 0, t));
    exact->append(y.narrow(1, 0, t));
    EXPECT_FALSE(
        at::equal(keys->dequantize().narrow(1, 0, 128), exact->dequantize().narrow(1, 0, 128)))
        << t << ": keys not quantized";
    EXPECT_EQ(at::equal(values->dequantize(), exact->dequantize()), t == 128) << t;
  }
}

// KIVI's groups against the spec's formula in float64, each element bound by its own group's
// step (not the store's amax): keys in groups of G tokens per channel over the quantized
// blocks, values in groups of G channels per token before the residual window. A grouping bug
// (a whole block as one group) widens the steps past these bounds; a group's extremes come back
// within rounding, and a constant group exactly.
TEST(Kivi, EachGroupWithinHalfItsOwnStep) {
  const int64_t G = 32, R = 128, T = 300, D = 64;
  for (const at::ScalarType dtype : {at::kBFloat16, at::kHalf}) {
    for (const int bits : {2, 4}) {
      KiviCodec kivi(bits, G, R, dtype);
      const double qmax = (1 << bits) - 1;
      for (const bool is_key : {true, false}) {
        at::Tensor x = kv_like(2, T, D, 11);
        if (is_key)
          x[1].select(1, 7).narrow(0, 32, 32).fill_(0.375);  // a constant group
        else
          x[1][40].narrow(0, 32, 32).fill_(0.375);
        auto store = is_key ? kivi.make_key_store(2, D) : kivi.make_value_store(2, D);
        store->append(x.narrow(1, 0, 100));
        for (int64_t t = 100; t < T; ++t) store->append(x.narrow(1, t, 1));
        const at::Tensor back = store->dequantize().to(at::kDouble), xd = x.to(at::kDouble);
        // Keys: tokens [0, 256) in groups of G tokens per channel; values: tokens [0, T - R)
        // in groups of G channels per token.
        const int64_t quantized = is_key ? T - T % R : T - R;
        for (int64_t h = 0; h < 2; ++h) {
          for (int64_t a = 0; a < (is_key ? quantized / G : quantized); ++a) {
            for (int64_t b = 0; b < (is_key ? D : D / G); ++b) {
              const at::Tensor grp =
                  is_key ? xd[h].select(1, b).narrow(0, a * G, G) : xd[h][a].narrow(0, b * G, G);
              const at::Tensor rec = is_key ? back[h].select(1, b).narrow(0, a * G, G)
                                            : back[h][a].narrow(0, b * G, G);
              const double lo = grp.min().item<double>(), hi = grp.max().item<double>();
              // Half a step, plus the min's and the scale's rounding to the dtype (relative
              // 2^-8 for bf16, used for fp16 too): the min's error and the scale's times the
              // largest code, (hi - lo), plus float arithmetic.
              const double tol =
                  0.5 * (hi - lo) / qmax + 0x1.0p-8 * (std::fabs(lo) + (hi - lo)) + 1e-6;
              const double worst = (rec - grp).abs().max().item<double>();
              ASSERT_LE(worst, tol)
                  << dtype << " " << bits << " bits " << (is_key ? "keys" : "values") << " head "
                  << h << " group " << a << "," << b;
              if (hi == lo) EXPECT_EQ(worst, 0.0) << "a constant group reads back exactly";
              // The extremes take codes 0 and 2^bits - 1: they come back within rounding alone
              // (no half step): the min's, the scale's times the largest code and the output's
              // to the dtype, 2^-8 (bf16's unit roundoff) of |lo|, (hi - lo) and |hi|.
              const double rounding = 0x1.0p-8 * (std::fabs(lo) + (hi - lo) + std::fabs(hi)) + 1e-6;
              EXPECT_NEAR(rec.min().item<double>(), lo, rounding) << a << "," << b;
              EXPECT_NEAR(rec.max().item<double>(), hi, rounding) << a << "," << b;
            }
          }
        }
        // The exact part: keys' last T mod R tokens, values' last R.
        const at::Tensor exact = back.narrow(1, quantized, T - quantized);
        EXPECT_TRUE(at::equal(exact.to(dtype).to(at::kDouble), exact));
      }
    }
  }
}

// A key row's codes are whole bytes: 2 bits x 6 channels would spill into the next token's row.
TEST(Kivi, KeyRowsOfAPartialByteAreRefused) {
  KiviCodec kivi(2, 32, 128, at::kBFloat16);
  EXPECT_THROW(kivi.make_key_store(1, 6), Error);
  EXPECT_NO_THROW(kivi.make_key_store(1, 8));
}

TEST(Kivi, KeysQuantizeWholeBlocksValuesKeepASlidingWindow) {
  // T = 300, R = 128: keys quantize 256 tokens (two blocks) and keep 44 exact; values quantize
  // the oldest 172 and keep the last 128 exact.
  KiviCodec kivi(2, 32, 128, at::kFloat);
  at::Tensor x = kv_like(1, 300, 64, 4);
  auto keys = kivi.make_key_store(1, 64), values = kivi.make_value_store(1, 64);
  for (int64_t t = 0; t < 300; t += 50) {  // prefill-sized and then step-sized appends
    keys->append(x.narrow(1, t, 50));
    values->append(x.narrow(1, t, 50));
  }
  at::Tensor k = keys->dequantize(), v = values->dequantize();
  auto exact = [&](const at::Tensor& back, int64_t t) { return at::equal(back[0][t], x[0][t]); };
  EXPECT_FALSE(exact(k, 255));
  EXPECT_TRUE(exact(k, 256));
  EXPECT_TRUE(exact(k, 299));
  EXPECT_FALSE(exact(v, 171));
  EXPECT_TRUE(exact(v, 172));
  const StorageBytes b = kivi.nominal_bytes(300, 1, 64);
  EXPECT_EQ(keys->bytes().total() + values->bytes().total(), b.total());
}

// A store reserved for its tokens sizes its code, scale and min rows once: appends up to there
// never grow them (unreserved, they double), and what it holds reads back the same.
TEST(Kivi, ReservedStoresSizeTheirRowsOnce) {
  struct Shape {
    int bits;
    int64_t group, head_dim;  // 2-bit at 64: tiled keys and values; 4-bit at 48: untiled values
  };
  for (const Shape& c : {Shape{2, 32, 64}, Shape{4, 16, 48}}) {
    KiviCodec kivi(c.bits, c.group, 32, at::kHalf);
    const int64_t T = 301, heads = 2;
    at::Tensor x = kv_like(heads, T, c.head_dim, 5);
    for (bool is_key : {true, false}) {
      SCOPED_TRACE(testing::Message() << c.bits << "-bit, head_dim " << c.head_dim
                                      << (is_key ? ", keys" : ", values"));
      auto make = [&] {
        return is_key ? kivi.make_key_store(heads, c.head_dim)
                      : kivi.make_value_store(heads, c.head_dim);
      };
      auto reserved = make(), grown = make();
      reserved->reserve(77, T);
      const uint64_t rows = reserved->allocated_bytes();
      EXPECT_GT(rows, 0u);
      for (auto* store : {reserved.get(), grown.get()}) {
        store->append(x.narrow(1, 0, 77));  // a prompt, then single tokens
        for (int64_t t = 77; t < T; ++t) store->append(x.narrow(1, t, 1));
      }
      const int64_t window = T - (is_key ? T / 32 * 32 : T - 32);
      const uint64_t window_bytes = uint64_t(window * heads * c.head_dim * 2);
      EXPECT_EQ(reserved->allocated_bytes(), rows + window_bytes);  // the rows never grew
      EXPECT_LT(reserved->allocated_bytes(), grown->allocated_bytes());
      // At most a partly filled last row of each buffer beyond what is held.
      EXPECT_LT(double(reserved->allocated_bytes()), 1.1 * double(reserved->bytes().total()));
      EXPECT_TRUE(at::equal(reserved->dequantize(), grown->dequantize()));
    }
  }
}

TEST(Kivi, BytesPerTokenMatchThePaper) {
  // d = 128, G = 32, fp16 scales: 2-bit 96 B and 4-bit 160 B per token per KV head once the
  // residual window is full (each further block of R tokens adds exactly that much).
  for (auto [bits, per_token] : {std::pair{2, 96}, {4, 160}}) {
    KiviCodec kivi(bits, 32, 128, at::kHalf);
    const uint64_t grow =
        kivi.nominal_bytes(1024, 1, 128).total() - kivi.nominal_bytes(896, 1, 128).total();
    EXPECT_EQ(grow, 128u * per_token) << bits;
  }
}

TEST(MethodRegistry, UnknownNamesKeysAndValuesAreRejected) {
  EXPECT_THROW(resolve_method({{"name", "int3"}}, "methods[0]"), ConfigError);
  EXPECT_THROW(resolve_method({{"name", "int4"}, {"bits", 3}}, "methods[0]"), ConfigError);
  try {
    resolve_method({{"name", "int8"}, {"group", 24}}, "methods[1]");
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()),
              "config: methods[1].group: expected integer in {8, 16, 32, 64, 128}, got 24");
  }
  EXPECT_EQ(make_codec(defaults("int4"), at::kHalf)->name(), "q4_1");
  EXPECT_EQ(
      make_codec(resolve_method({{"name", "int4"}, {"symmetric", true}}, "m"), at::kHalf)->name(),
      "q4_0");
}

}  // namespace
}  // namespace kvbench
