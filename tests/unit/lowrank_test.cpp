// The low-rank codecs (kvproj, palu): exact at full rank, truncation error equal to the dropped
// singular values, the prepare step, positions carried through eviction, composition with
// retention policies, and memory accounting with the shared bases.
#include <gtest/gtest.h>

#include <cmath>

#include "kvbench/attention/cpu_attention.h"
#include "kvbench/attention/reference_attention.h"
#include "kvbench/core/error.h"
#include "kvbench/engine/generator.h"
#include "kvbench/kv/full_cache.h"
#include "kvbench/kv/lowrank_codec.h"
#include "kvbench/kv/method_registry.h"
#include "kvbench/model/presets.h"
#include "kvbench/model/rope.h"
#include "kvbench/model/tiny_tokenizer.h"
#include "kvbench/suites/preparation.h"
#include "preparation_helpers.h"

namespace kvbench {
namespace {

using nlohmann::json;
using testing_support::synthetic_preparation;

json resolve(const json& entry) { return resolve_method(entry, "methods[0]"); }

std::shared_ptr<const LowRankCodec> prepared(const json& entry, const PreparationInput& in,
                                             at::ScalarType dtype = at::kFloat) {
  auto c = make_codec(resolve(entry), dtype)->prepare(in);
  return std::dynamic_pointer_cast<const LowRankCodec>(c);
}

at::Tensor randn(std::vector<int64_t> shape, uint64_t seed) {
  return at::randn(shape, at::detail::createCPUGenerator(seed), at::kFloat);
}

// Keys as the cache receives them: RoPE applied at positions start.. ([heads, n, d]).
at::Tensor rotate(const at::Tensor& pre, int64_t start, const at::Tensor& inv_freq) {
  const int64_t n = pre.size(1);
  const auto [cos, sin] = rope_cos_sin(at::arange(start, start + n, at::kLong), inv_freq);
  return apply_rope(pre.transpose(0, 1), cos, sin).transpose(0, 1).contiguous();
}

Transformer tiny_model() {
  const ModelPreset& preset = find_model_preset("tiny-llama");
  return Transformer::random(parse_model_config(preset.config, preset.name), 2);
}

Tokenizer tiny_tokenizer(const ModelConfig& mc) {
  return Tokenizer::from_json(tiny_tokenizer_json(static_cast<int>(mc.vocab_size)),
                              tiny_tokenizer_config(), nullptr, "tiny (in memory)");
}

// Full rank: U is square and orthonormal, so keys (after undoing and redoing RoPE for Palu)
// and values come back within fp32 rounding, appended in parts as prefill + decode.
TEST(LowRank, FullRankReconstructsWithinFloatTolerance) {
  const PreparationInput in = synthetic_preparation(2, 4, 64, 3);
  for (const json& entry :
       {json{{"name", "kvproj"}, {"rank_ratio", 1.0}}, json{{"name", "palu"}, {"rank_ratio", 1.0}},
        json{{"name", "palu"}, {"rank", 128}, {"group", 2}}}) {
    auto c = prepared(entry, in);
    for (int64_t layer : {0, 1}) {
      for (bool is_key : {true, false}) {
        auto store = is_key ? c->make_layer_key_store(layer, 4, 64)
                            : c->make_layer_value_store(layer, 4, 64);
        at::Tensor x = randn({4, 50, 64}, 5 + layer);
        x.select(2, 3).mul_(8);
        store->append(x.narrow(1, 0, 41));
        for (int64_t t = 41; t < 50; ++t) store->append(x.narrow(1, t, 1));
        const at::Tensor err = (store->dequantize() - x).norm(2, {2});  // [heads, tokens]
        const double rel = (err / x.norm(2, {2})).max().item<double>();
        EXPECT_LT(rel, 1e-5) << entry.dump() << (is_key ? " keys" : " values") << " layer "
                             << layer;
      }
    }
  }
}

// Palu: keys of the inputs x = e_i are W's columns, so the Frobenius error over them is
// ||W - L R||_F = sqrt(sum of the dropped s_i^2), per group, with RoPE applied on the way in
// and out (it is orthogonal). kvproj: the calibration rows themselves, against their own SVD.
TEST(LowRank, TruncationErrorEqualsTheDroppedSingularValues) {
  const int64_t kv = 4, d = 16;
  const PreparationInput in = synthetic_preparation(1, kv, d, 7, 200);
  const int64_t hidden = in.k_proj[0].size(1);
  for (int64_t group : {1, 2}) {
    for (int64_t rank : {int64_t{3}, int64_t{11}, group * d - 1}) {
      auto c = prepared({{"name", "palu"}, {"rank", rank}, {"group", group}}, in);
      for (bool is_key : {true, false}) {
        const at::Tensor w = is_key ? in.k_proj[0] : in.v_proj[0];  // [kv * d, hidden]
        at::Tensor pre = w.t().reshape({hidden, kv, d}).transpose(0, 1).contiguous();
        auto store =
            is_key ? c->make_layer_key_store(0, kv, d) : c->make_layer_value_store(0, kv, d);
        const at::Tensor x = is_key ? rotate(pre, 0, in.rope_inv_freq) : pre;
        store->append(x);
        const at::Tensor back = store->dequantize();
        for (int64_t g = 0; g < kv / group; ++g) {
          const double err = (back.narrow(0, g * group, group) - x.narrow(0, g * group, group))
                                 .norm()
                                 .item<double>();
          const at::Tensor s =
              at::linalg_svdvals(w.narrow(0, g * group * d, group * d).to(at::kDouble));
          const double want =
              s.narrow(0, rank, s.size(0) - rank).pow(2).sum().sqrt().item<double>();
          EXPECT_NEAR(err, want, 1e-4 * s[0].item<double>())
              << "group " << group << " rank " << rank << (is_key ? " keys" : " values")
              << " group index " << g;
          EXPECT_GT(want, 0.0);
        }
      }
    }
  }
  for (int64_t rank : {2, 9}) {
    auto c = prepared({{"name", "kvproj"}, {"rank", rank}}, in);
    for (bool is_key : {true, false}) {
      const at::Tensor x = is_key ? in.keys[0] : in.values[0];
      auto store = is_key ? c->make_layer_key_store(0, kv, d) : c->make_layer_value_store(0, kv, d);
      store->append(x);
      const at::Tensor back = store->dequantize();
      for (int64_t h = 0; h < kv; ++h) {
        const at::Tensor s = at::linalg_svdvals(x[h].to(at::kDouble));
        const double want = s.narrow(0, rank, d - rank).pow(2).sum().sqrt().item<double>();
        EXPECT_NEAR((back[h] - x[h]).norm().item<double>(), want, 1e-4 * s[0].item<double>())
            << "kvproj rank " << rank << " head " << h;
      }
    }
  }
}

// The fused kernels (latent-space scores and value sums; Palu's keys rebuilt per block) against
// dequantize-then-attend, over head dims, GQA ratios, lengths, groups and storage dtypes.
TEST(LowRank, FusedCpuAttentionMatchesReference) {
  for (int64_t dim : {32, 64, 128}) {
    const PreparationInput in = synthetic_preparation(1, 4, dim, 13);
    for (const json& entry : {json{{"name", "kvproj"}, {"rank_ratio", 0.25}},
                              json{{"name", "palu"}, {"group", 2}}, json{{"name", "palu-70"}}}) {
      for (at::ScalarType dtype : {at::kFloat, at::kHalf, at::kBFloat16}) {
        auto c = prepared(entry, in, dtype);
        for (int64_t gqa : {1, 2, 8}) {
          for (int64_t tokens : {1, 33, 600}) {
            auto keys = c->make_layer_key_store(0, 4, dim);
            auto values = c->make_layer_value_store(0, 4, dim);
            keys->append(rotate(randn({4, tokens, dim}, 1), 0, in.rope_inv_freq));
            values->append(randn({4, tokens, dim}, 2));
            at::Tensor q = randn({4 * gqa, 1, dim}, 3);
            const double scale = 1 / std::sqrt(double(dim));
            at::Tensor fused = cpu_decode_attention(q, *keys, *values, 4, scale);
            at::Tensor ref =
                block_attention_reference(q, keys->dequantize(), values->dequantize(), scale);
            const double rel = ((fused - ref).norm() / ref.norm()).item<double>();
            EXPECT_LT(rel, c->fused_tolerance())
                << entry.dump() << " dim " << dim << " gqa " << gqa << " tokens " << tokens;
          }
        }
      }
    }
  }
}

TEST(LowRank, UnpreparedCodecFailsClearlyInsteadOfRunningUncompressed) {
  for (const char* name : {"kvproj", "palu", "palu-70"}) {
    const json m = resolve({{"name", name}});
    EXPECT_TRUE(make_codec(m, at::kHalf)->needs_preparation());
    try {
      make_kv_cache(m, 2, 2, 64, at::kHalf);
      FAIL() << name << " built a cache without preparation";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("needs preparation"), std::string::npos) << e.what();
    }
    EXPECT_THROW(make_codec(m, at::kHalf)->make_layer_key_store(0, 2, 64), Error);
  }
  // A prepared codec refuses other shapes and layers.
  auto c = prepared({{"name", "palu"}}, synthetic_preparation(2, 2, 32, 1));
  EXPECT_THROW(c->make_layer_key_store(2, 2, 32), Error);
  EXPECT_THROW(c->make_layer_key_store(0, 4, 32), Error);
  EXPECT_THROW(c->prepare(synthetic_preparation(2, 2, 32, 1)), Error);
}

TEST(LowRank, BadParametersNameTheKey) {
  EXPECT_THROW(resolve({{"name", "palu"}, {"rank_ratio", 1.5}}), ConfigError);
  EXPECT_THROW(resolve({{"name", "kvproj"}, {"calib_source", "web"}}), ConfigError);
  try {  // rank above the full rank: named at prepare (the model decides the full rank)
    prepared({{"name", "palu"}, {"rank", 65}}, synthetic_preparation(1, 2, 32, 1));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rank 65 exceeds"), std::string::npos) << e.what();
  }
  try {
    prepared({{"name", "palu"}, {"group", 3}}, synthetic_preparation(1, 2, 32, 1));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("group 3 must divide"), std::string::npos) << e.what();
  }
  const json p = resolve({{"name", "palu-70"}});
  EXPECT_EQ(p["rank_ratio"], 0.7);
  EXPECT_EQ(p["group"], 1);
}

// Measured bytes equal the formula: coefficients (payload), Palu's key positions and the bases
// (metadata, counted once per cache however many sequences), also after eviction.
TEST(LowRank, MemoryAccountingMatchesTheFormula) {
  const PreparationInput in = synthetic_preparation(2, 2, 64, 5);
  for (const json& entry :
       {json{{"name", "kvproj"}}, json{{"name", "palu"}}, json{{"name", "palu"}, {"group", 2}},
        json{{"name", "streamingllm"}, {"sinks", 2}, {"window", 10}, {"codec", "palu"}}}) {
    const json m = resolve(entry);
    auto c = make_codec(m, at::kHalf)->prepare(in);
    auto cache = make_kv_cache(m, c, 2, 2, 64, at::kHalf, "cpu");
    for (int s = 0; s < 2; ++s) {
      const int64_t seq = cache->add_sequence();
      for (int64_t step = 0; step < 3; ++step) {
        const int64_t n = step == 0 ? 29 : 1;
        for (int64_t layer = 0; layer < 2; ++layer) {
          cache->append_and_attend(seq, layer, randn({4, n, 64}, 1), randn({2, n, 64}, 2),
                                   randn({2, n, 64}, 3));
        }
      }
    }
    const StorageBytes measured = cache->storage(), nominal = cache->nominal();
    EXPECT_EQ(measured.payload, nominal.payload) << entry.dump();
    EXPECT_EQ(measured.metadata, nominal.metadata) << entry.dump();
    const uint64_t rg =
        static_cast<uint64_t>(std::dynamic_pointer_cast<const LowRankCodec>(c)->rank_for(64));
    // Bases: K and V of 2 layers, each [kv_heads / g, g * 64, r] fp32 = 2 * 64 * r floats.
    EXPECT_EQ(c->shared_bytes().metadata, 2u * 2 * (2 * 64 * rg) * 4u) << entry.dump();
    const uint64_t kept = static_cast<uint64_t>(cache->kept_tokens(0)[0]);
    const uint64_t groups = 2 / m.value("codec", m).value("group", uint64_t{1});
    EXPECT_EQ(measured.payload, 2u * 2 * 2 * groups * kept * rg * 2u) << entry.dump();
  }
}

// Eviction moves tokens; Palu's key stores keep each token's position so RoPE is re-applied
// where it was. At full rank in fp32 a policy over palu gives the same logits as over fp32.
TEST(LowRank, PaluKeepsPositionsThroughEviction) {
  Transformer model = tiny_model();
  const ModelConfig& mc = model.config();
  for (const char* evict : {"decode", "after_prefill"}) {
    json base = {{"name", "streamingllm"}, {"sinks", 4}, {"window", 20}, {"evict", evict}};
    json lossless = base, low = base;
    lossless["codec"] = "fp32";
    low["codec"] = {{"name", "palu"}, {"rank_ratio", 1.0}};
    auto ref = make_kv_cache(resolve(lossless), mc.num_layers, mc.num_kv_heads, mc.head_dim,
                             at::kFloat, "cpu");
    const PreparedCodec p = prepare_codec(make_codec(resolve(low), at::kFloat), model, nullptr);
    auto cache = make_kv_cache(resolve(low), p.codec, mc.num_layers, mc.num_kv_heads, mc.head_dim,
                               at::kFloat, "cpu");
    std::vector<int64_t> prompt;
    for (int64_t i = 0; i < 40; ++i) prompt.push_back(3 + (i * 37) % 400);
    const int64_t a = ref->add_sequence(), b = cache->add_sequence();
    at::Tensor la = model.forward({{a, prompt}}, *ref), lb = model.forward({{b, prompt}}, *cache);
    for (int64_t step = 0; step < 12; ++step) {
      EXPECT_LT((la - lb).abs().max().item<double>(), 1e-3) << evict << " step " << step;
      const int64_t next = la[0].argmax().item<int64_t>();
      la = model.forward({{a, {next}}}, *ref);
      lb = model.forward({{b, {next}}}, *cache);
    }
    EXPECT_EQ(cache->kept_tokens(b), ref->kept_tokens(a));
    EXPECT_LT(cache->kept_tokens(b)[0], 52);
  }
}

// Any codec with any policy from one JSON entry: per-head selections (SnapKV) need g = 1;
// a shared latent (g = 2) works with policies that keep the same tokens for every head and is
// rejected with the reason otherwise.
TEST(LowRank, ComposesWithRetentionPolicies) {
  Transformer model = tiny_model();
  const ModelConfig& mc = model.config();
  const Tokenizer tok = tiny_tokenizer(mc);
  std::vector<int64_t> prompt;
  for (int64_t i = 0; i < 80; ++i) prompt.push_back(3 + (i * 53) % 450);
  for (const json& entry :
       {json{{"name", "snapkv"}, {"budget", 40}, {"codec", "palu"}},
        json{{"name", "snapkv-1024+kvproj"}},
        json{{"name", "h2o"}, {"heavy", 10}, {"recent", 20}, {"codec", "kvproj"}},
        json{{"name", "tova"}, {"budget", 30}, {"codec", {{"name", "palu"}, {"group", 2}}}},
        json{{"name", "stream-512"}, {"codec", "palu-70"}}}) {
    const json m = resolve(entry);
    const PreparedCodec p = prepare_codec(make_codec(m, at::kBFloat16), model, &tok);
    for (const char* backend : {"cpu", "reference"}) {
      auto cache = make_kv_cache(m, p.codec, mc.num_layers, mc.num_kv_heads, mc.head_dim,
                                 at::kFloat, backend);
      GenerationConfig g;
      g.max_new_tokens = 8;
      GenerationResult r = generate(model, *cache, {prompt}, g);
      EXPECT_EQ(r.sequences[0].tokens.size(), 8u) << entry.dump();
      EXPECT_EQ(r.peak_storage.total(), r.peak_nominal.total()) << entry.dump();
    }
  }
  // Resolution refuses a per-head policy over a group; the store refuses such selections too
  // (here a group-2 codec under a SnapKV resolved beside group 1).
  EXPECT_THROW(
      resolve({{"name", "snapkv"}, {"budget", 40}, {"codec", {{"name", "palu"}, {"group", 2}}}}),
      ConfigError);
  const json m = resolve({{"name", "snapkv"}, {"budget", 40}, {"codec", {{"name", "palu"}}}});
  const PreparedCodec p = prepare_codec(
      make_codec(resolve({{"name", "palu"}, {"group", 2}}), at::kBFloat16), model, nullptr);
  auto cache =
      make_kv_cache(m, p.codec, mc.num_layers, mc.num_kv_heads, mc.head_dim, at::kFloat, "cpu");
  GenerationConfig g;
  g.max_new_tokens = 2;
  try {
    generate(model, *cache, {prompt}, g);
    FAIL() << "palu group 2 under per-head SnapKV selections ran";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("kept different tokens for KV heads"), std::string::npos)
        << e.what();
  }
}

// After eviction (per-head selections, decode-time eviction) the fused cpu path over the
// low-rank stores gives the reference path's logits: both backends fed the same tokens.
TEST(LowRank, FusedPathOverEvictedLowRankCachesMatchesReference) {
  Transformer model = tiny_model();
  const ModelConfig& mc = model.config();
  std::vector<int64_t> prompt;
  for (int64_t i = 0; i < 70; ++i) prompt.push_back(3 + (i * 29) % 430);
  for (const json& entry :
       {json{{"name", "h2o"},
             {"heavy", 12},
             {"recent", 20},
             {"codec", {{"name", "kvproj"}, {"calib_source", "random"}}}},
        json{{"name", "snapkv"}, {"budget", 40}, {"codec", "palu"}},
        json{{"name", "tova"}, {"budget", 30}, {"codec", {{"name", "palu"}, {"group", 2}}}},
        json{{"name", "streamingllm"}, {"sinks", 4}, {"window", 24}, {"codec", "palu-70"}}}) {
    const json m = resolve(entry);
    const PreparedCodec p = prepare_codec(make_codec(m, at::kBFloat16), model, nullptr);
    auto cpu =
        make_kv_cache(m, p.codec, mc.num_layers, mc.num_kv_heads, mc.head_dim, at::kFloat, "cpu");
    auto ref = make_kv_cache(m, p.codec, mc.num_layers, mc.num_kv_heads, mc.head_dim, at::kFloat,
                             "reference");
    const int64_t a = cpu->add_sequence(), b = ref->add_sequence();
    at::Tensor la = model.forward({{a, prompt}}, *cpu), lb = model.forward({{b, prompt}}, *ref);
    for (int64_t step = 0; step < 10; ++step) {
      const double rel = ((la - lb).norm() / lb.norm()).item<double>();
      EXPECT_LT(rel, 1e-4) << entry.dump() << " step " << step;
      const int64_t next = lb[0].argmax().item<int64_t>();
      la = model.forward({{a, {next}}}, *cpu);
      lb = model.forward({{b, {next}}}, *ref);
    }
    EXPECT_EQ(cpu->kept_tokens(a), ref->kept_tokens(b)) << entry.dump();
    EXPECT_LT(cpu->kept_tokens(a)[0], 80) << entry.dump();
  }
}

// The prepare step: what it reports, and its calibration prompts (seeded, exact length).
TEST(LowRank, PrepareStepReportsItsInputsAndIsDeterministic) {
  Transformer model = tiny_model();
  const Tokenizer tok = tiny_tokenizer(model.config());
  const json kv = resolve({{"name", "kvproj"}, {"calib_prompts", 2}, {"calib_tokens", 64}});
  const PreparedCodec a = prepare_codec(make_codec(kv, at::kHalf), model, &tok);
  EXPECT_FALSE(a.codec->needs_preparation());
  EXPECT_EQ(a.report["timed"], false);
  EXPECT_GE(a.report["duration_s"].get<double>(), 0.0);
  EXPECT_EQ(a.report["calibration"]["prompts"], 2);
  EXPECT_EQ(a.report["calibration"]["tokens"], 128);
  EXPECT_EQ(a.report["calibration"]["source"], "text");
  const PreparedCodec b = prepare_codec(make_codec(kv, at::kHalf), model, &tok);
  auto la = std::dynamic_pointer_cast<const LowRankCodec>(a.codec);
  auto lb = std::dynamic_pointer_cast<const LowRankCodec>(b.codec);
  EXPECT_TRUE(at::equal(la->key_basis(1), lb->key_basis(1)));
  // A different seed: different prompts, different bases.
  const json kv2 =
      resolve({{"name", "kvproj"}, {"calib_prompts", 2}, {"calib_tokens", 64}, {"calib_seed", 5}});
  const PreparedCodec c = prepare_codec(make_codec(kv2, at::kHalf), model, &tok);
  EXPECT_FALSE(at::equal(la->key_basis(1),
                         std::dynamic_pointer_cast<const LowRankCodec>(c.codec)->key_basis(1)));
  CalibrationSpec spec;
  spec.prompts = 3;
  spec.tokens = 100;
  spec.seed = 4;
  const auto text = calibration_prompts(spec, model.config().vocab_size, &tok);
  ASSERT_EQ(text.size(), 3u);
  for (const auto& t : text) EXPECT_EQ(t.size(), 100u);
  EXPECT_NE(text[0], text[1]);
  EXPECT_THROW(calibration_prompts(spec, model.config().vocab_size, nullptr), Error);
  // Long text prompts: the text doubles until it tokenizes long enough (was 32 sentences at a
  // time, each round re-tokenizing the whole text: quadratic).
  spec.prompts = 1, spec.tokens = 3000;
  EXPECT_EQ(calibration_prompts(spec, model.config().vocab_size, &tok)[0].size(), 3000u);
  spec.source = "random";
  EXPECT_EQ(calibration_prompts(spec, 500, nullptr), calibration_prompts(spec, 500, nullptr));
  // Prompts longer than the model's positions are refused before any is made.
  const json too_long = resolve({{"name", "kvproj"},
                                 {"calib_prompts", 1},
                                 {"calib_tokens", model.config().max_position_embeddings + 1}});
  try {
    prepare_codec(make_codec(too_long, at::kHalf), model, &tok);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("is more than the model's max_position_embeddings"),
              std::string::npos)
        << e.what();
  }

  const PreparedCodec palu =
      prepare_codec(make_codec(resolve({{"name", "palu"}}), at::kHalf), model, nullptr);
  EXPECT_TRUE(palu.report["calibration"].is_null());
  EXPECT_EQ(palu.report["inputs"], "the model's W_k and W_v");
  // Codecs without preparation pass through with no report.
  const PreparedCodec full =
      prepare_codec(make_codec(resolve({{"name", "int8"}}), at::kHalf), model, nullptr);
  EXPECT_TRUE(full.report.is_null());
}

// Palu's bases are the top left singular vectors of each group's W (not any orthonormal basis
// of the right size): L^T W carries the top singular values.
TEST(LowRank, PaluBasesAreTheTopSingularVectors) {
  const PreparationInput in = synthetic_preparation(1, 2, 16, 21);
  auto c = prepared({{"name", "palu"}, {"rank", 5}}, in);
  const at::Tensor basis = c->key_basis(0);  // [2, 16, 5]
  for (int64_t g = 0; g < 2; ++g) {
    const at::Tensor w = in.k_proj[0].narrow(0, g * 16, 16).to(at::kDouble);
    const at::Tensor l = basis[g].to(at::kDouble);
    EXPECT_TRUE(at::allclose(at::mm(l.t(), l), at::eye(5, at::kDouble), 1e-5, 1e-5));
    const at::Tensor got = at::linalg_svdvals(at::mm(l.t(), w));
    const at::Tensor want = at::linalg_svdvals(w).narrow(0, 0, 5);
    EXPECT_TRUE(at::allclose(got, want, 1e-4, 1e-4)) << got << want;
  }
}

}  // namespace
}  // namespace kvbench
