#include <gtest/gtest.h>

#include <cmath>

#include "kvbench/core/error.h"
#include "kvbench/model/model_config.h"
#include "kvbench/model/presets.h"
#include "kvbench/model/transformer.h"

namespace kvbench {
namespace {

using nlohmann::json;

json llama() { return find_model_preset("tiny-llama").config; }

std::string error_of(const json& config) {
  try {
    parse_model_config(config, "cfg.json");
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos);
    return e.what();
  }
  return "";
}

TEST(ModelConfig, EveryPresetParses) {
  for (const auto& p : model_presets()) {
    ModelConfig c = parse_model_config(p.config, p.name);
    if (!p.real_scale) EXPECT_EQ(c.num_layers, 4) << p.name;
    EXPECT_EQ(c.num_heads % c.num_kv_heads, 0);
  }
  ModelConfig q3 = parse_model_config(find_model_preset("tiny-qwen3").config, "q3");
  EXPECT_TRUE(q3.qk_norm);
  EXPECT_EQ(q3.head_dim, 64);  // explicit, not hidden / heads = 32
  EXPECT_TRUE(q3.tie_word_embeddings);
  ModelConfig q2 = parse_model_config(find_model_preset("tiny-qwen2").config, "q2");
  EXPECT_TRUE(q2.attention_bias);
  EXPECT_FALSE(q2.o_proj_bias);
  EXPECT_FALSE(q2.sliding_window.has_value());  // use_sliding_window false
  ModelConfig m = parse_model_config(find_model_preset("tiny-mistral").config, "m");
  EXPECT_EQ(m.head_dim, 16);
  EXPECT_EQ(m.group_size(), 4);
  EXPECT_EQ(m.sliding_window.value_or(0), 4096);
  ModelConfig l = parse_model_config(llama(), "l");
  EXPECT_EQ(l.rope_scaling.type, "llama3");
  EXPECT_EQ(l.eos_token_ids, std::vector<int64_t>{2});
}

// Parameter counts of the public checkpoints (8,030,261,248 is Llama-3-8B's model card
// figure; Mistral-7B-v0.1 7.24 B and Qwen2.5-7B 7.62 B likewise), from the tensors the loader
// expects, so the real-scale presets have exactly the published shapes.
TEST(ModelConfig, RealScalePresetsHaveThePublishedParameterCounts) {
  const std::vector<std::pair<std::string, uint64_t>> expected = {
      {"llama-3-8b", 8030261248ull}, {"mistral-7b", 7241732096ull}, {"qwen2.5-7b", 7615616512ull}};
  for (const auto& [name, params] : expected) {
    const ModelPreset& p = find_model_preset(name);
    EXPECT_TRUE(p.real_scale);
    const ModelConfig c = parse_model_config(p.config, name);
    uint64_t n = 0;
    for (const auto& [tensor, shape] : Transformer::expected_tensors(c)) {
      uint64_t e = 1;
      for (int64_t d : shape) e *= static_cast<uint64_t>(d);
      n += e;
    }
    EXPECT_EQ(n, params) << name;
    EXPECT_EQ(c.head_dim, 128) << name;
  }
  EXPECT_EQ(parse_model_config(find_model_preset("qwen2.5-7b").config, "q").group_size(), 7);
  EXPECT_TRUE(parse_model_config(find_model_preset("qwen2.5-7b").config, "q").attention_bias);
}

TEST(ModelConfig, RealScalePresetsAreNeverWrittenToDisk) {
  try {
    write_preset_checkpoint(find_model_preset("llama-3-8b"), "/tmp/kvbench-should-not-exist", 0);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("built in memory only"), std::string::npos) << e.what();
  }
}

TEST(ModelConfig, RejectsUnsupportedArchitecturesByName) {
  json c = llama();
  c["architectures"] = {"FalconForCausalLM"};
  EXPECT_EQ(error_of(c),
            "model config: cfg.json: unsupported architecture: FalconForCausalLM (supported: "
            "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM)");
}

// model_type and architectures name one family (transformers picks the class by model_type);
// model_type alone picks it too.
TEST(ModelConfig, ModelTypeAndArchitecturesAgree) {
  json c = llama();
  c["model_type"] = "qwen2";
  EXPECT_NE(error_of(c).find("model_type: is 'qwen2' but architectures names LlamaForCausalLM"),
            std::string::npos)
      << error_of(c);
  c["model_type"] = "llama";
  EXPECT_EQ(error_of(c), "");
  c = find_model_preset("tiny-qwen2").config;
  c.erase("architectures");
  c["model_type"] = "qwen2";
  EXPECT_EQ(parse_model_config(c, "q2").arch, Architecture::kQwen2);
  c.erase("model_type");
  EXPECT_NE(error_of(c).find("architectures"), std::string::npos);
}

// Keys a config leaves out take the defaults of transformers' class for its family.
TEST(ModelConfig, MissingKeysTakeTheirFamilysDefaults) {
  json c = find_model_preset("tiny-qwen3").config;
  c.erase("head_dim");
  c.erase("max_position_embeddings");
  ModelConfig q3 = parse_model_config(c, "q3");
  EXPECT_EQ(q3.head_dim, 128);  // Qwen3Config's, not hidden / heads
  EXPECT_EQ(q3.max_position_embeddings, 32768);
  c = llama();
  c.erase("max_position_embeddings");
  EXPECT_EQ(parse_model_config(c, "l").max_position_embeddings, 2048);
  c["sliding_window"] = 4096;  // LlamaConfig has no window: the key is ignored, as there
  EXPECT_FALSE(parse_model_config(c, "l").sliding_window.has_value());
  c = find_model_preset("tiny-mistral").config;
  for (const char* k : {"max_position_embeddings", "num_key_value_heads", "sliding_window"})
    c.erase(k);
  c["num_attention_heads"] = 16;
  c["hidden_size"] = 16 * 64;
  ModelConfig m = parse_model_config(c, "m");
  EXPECT_EQ(m.max_position_embeddings, 131072);
  EXPECT_EQ(m.num_kv_heads, 8);
  EXPECT_EQ(m.sliding_window.value_or(0), 4096);
  c["sliding_window"] = nullptr;  // Mistral v0.2 and later: no window
  EXPECT_FALSE(parse_model_config(c, "m").sliding_window.has_value());
  c["num_key_value_heads"] = nullptr;  // an explicit null: one KV head per query head
  EXPECT_EQ(parse_model_config(c, "m").num_kv_heads, 16);
  // Qwen2Config and Qwen3Config: 32 KV heads when the key is left out.
  for (const char* preset : {"tiny-qwen2", "tiny-qwen3"}) {
    json q = find_model_preset(preset).config;
    q.erase("num_key_value_heads");
    q["num_attention_heads"] = 64;
    EXPECT_EQ(parse_model_config(q, preset).num_kv_heads, 32) << preset;
  }
}

// Qwen2/Qwen3 window only layers at and past max_window_layers (default 28), or those that
// layer_types marks; a window no layer has is not noted.
TEST(ModelConfig, AQwenWindowHoldsOnlyWhereALayerHasIt) {
  json c = find_model_preset("tiny-qwen2").config;  // 4 layers
  c.erase("max_window_layers");
  c["use_sliding_window"] = true;
  c["sliding_window"] = 512;
  EXPECT_FALSE(parse_model_config(c, "q2").sliding_window.has_value());  // 4 < 28
  c["max_window_layers"] = 2;
  EXPECT_EQ(parse_model_config(c, "q2").sliding_window.value_or(0), 512);
  json d = c;
  d.erase("sliding_window");  // Qwen2Config's default window
  EXPECT_EQ(parse_model_config(d, "q2").sliding_window.value_or(0), 4096);
  c["max_window_layers"] = 4;
  EXPECT_FALSE(parse_model_config(c, "q2").sliding_window.has_value());
  c["layer_types"] = {"full_attention", "full_attention", "full_attention", "sliding_attention"};
  EXPECT_EQ(parse_model_config(c, "q2").sliding_window.value_or(0), 512);
  c["layer_types"] = {"full_attention", "full_attention"};
  EXPECT_NE(error_of(c).find("layer_types: expected a list of num_hidden_layers (4)"),
            std::string::npos)
      << error_of(c);
  c["layer_types"] = {"full_attention", "full_attention", "full_attention", "chunked"};
  EXPECT_NE(error_of(c).find("got \"chunked\""), std::string::npos) << error_of(c);
  c["use_sliding_window"] = false;  // no window at all: layer_types is not read
  EXPECT_FALSE(parse_model_config(c, "q2").sliding_window.has_value());
}

// What transformers would read differently is refused, not run another way.
TEST(ModelConfig, RefusesPartialRotaryAndQuantizedCheckpoints) {
  json c = llama();
  c["partial_rotary_factor"] = 0.5;
  EXPECT_NE(error_of(c).find("partial_rotary_factor: only 1 is supported"), std::string::npos)
      << error_of(c);
  c["partial_rotary_factor"] = 1.0;
  EXPECT_EQ(error_of(c), "");
  c["quantization_config"] = {{"quant_method", "gptq"}, {"bits", 4}};
  EXPECT_NE(error_of(c).find("quantized checkpoints are not supported (quant_method \"gptq\")"),
            std::string::npos)
      << error_of(c);
}

TEST(ModelConfig, RejectsBadValues) {
  json c = llama();
  c.erase("hidden_size");
  EXPECT_EQ(error_of(c), "model config: cfg.json: hidden_size: required key missing");
  c = llama();
  c["num_key_value_heads"] = 3;
  EXPECT_NE(error_of(c).find("num_key_value_heads: must divide num_attention_heads (4), got 3"),
            std::string::npos);
  c = llama();
  c["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  EXPECT_NE(error_of(c).find("unsupported rope_scaling type: yarn"), std::string::npos);
  c = llama();
  c["hidden_act"] = "gelu";
  EXPECT_NE(error_of(c).find("unsupported activation 'gelu'"), std::string::npos);
  c = llama();
  c["vocab_size"] = "big";
  EXPECT_NE(error_of(c).find("vocab_size: expected an integer"), std::string::npos);
  // A layer count no model has would be allocated layer by layer before a size check.
  c = llama();
  c["num_hidden_layers"] = 1000000000;
  EXPECT_EQ(
      error_of(c),
      "model config: cfg.json: num_hidden_layers: expected an integer <= 4096, got 1000000000");
  // Sizes past any real model's are refused by name before a shape or a byte estimate is
  // formed from them: 4 heads of 2^62 dims once multiplied to a q_proj of 0 rows, and a 2^62
  // vocabulary gave a dry-run estimate of a few MiB.
  const std::pair<const char*, int64_t> too_large[] = {
      {"vocab_size", int64_t{1} << 24},        {"hidden_size", int64_t{1} << 17},
      {"intermediate_size", int64_t{1} << 20}, {"num_attention_heads", 1024},
      {"num_key_value_heads", 1024},           {"head_dim", 1024},
      {"max_position_embeddings", 1 << 30}};
  for (const auto& [key, cap] : too_large) {
    for (int64_t v : {cap + 1, int64_t{1} << 62}) {
      c = llama();
      c[key] = v;
      EXPECT_EQ(error_of(c), std::string("model config: cfg.json: ") + key +
                                 ": expected an integer <= " + std::to_string(cap) + ", got " +
                                 std::to_string(v));
    }
  }
  c = llama();
  c["rope_scaling"]["original_max_position_embeddings"] = int64_t{1} << 40;
  EXPECT_NE(error_of(c).find("original_max_position_embeddings: expected an integer <= 1073741824"),
            std::string::npos)
      << error_of(c);
  c = llama();
  c["torch_dtype"] = "float64";
  EXPECT_EQ(error_of(c),
            "model config: cfg.json: torch_dtype: unsupported dtype 'float64' "
            "(supported: float32, float16, bfloat16)");
  // An EOS the model can never produce would let every generation run to its cap unnoticed.
  c = llama();
  c["eos_token_id"] = {2, c["vocab_size"].get<int64_t>()};
  EXPECT_EQ(error_of(c), "model config: cfg.json: eos_token_id: id " +
                             std::to_string(c["vocab_size"].get<int64_t>()) +
                             " is outside the vocabulary [0, " +
                             std::to_string(c["vocab_size"].get<int64_t>()) + ")");
  c = llama();
  c["eos_token_id"] = -1;
  EXPECT_NE(error_of(c).find("eos_token_id: id -1 is outside"), std::string::npos);
  // transformers requires llama3 scaling's frequency bounds; a guessed default is refused.
  for (const char* key : {"original_max_position_embeddings", "low_freq_factor"}) {
    c = llama();
    ASSERT_EQ(c["rope_scaling"]["rope_type"], "llama3");
    c["rope_scaling"].erase(key);
    EXPECT_EQ(error_of(c), std::string("model config: cfg.json: rope_scaling.") + key +
                               ": required for llama3 scaling");
  }
}

// transformers 5 writes rope_theta and the scaling inside "rope_parameters" and no top-level
// keys: read there, Qwen3's theta is 1e6 (not the 10000 default) and Llama-3.1's llama3 scaling
// is kept. Values given twice must agree; per-layer-type parameters and a partial rotary factor
// are refused.
TEST(ModelConfig, ReadsTheRopeParametersOfTransformers5) {
  json c = find_model_preset("tiny-qwen3").config;
  c.erase("rope_theta");
  c.erase("rope_scaling");
  c["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1000000.0}};
  ModelConfig m = parse_model_config(c, "q3");
  EXPECT_EQ(m.rope_theta, 1000000.0);
  EXPECT_EQ(m.rope_scaling.type, "default");
  // Llama-3.1's scaling, moved from rope_scaling into rope_parameters, reads the same.
  const json l3 = llama();
  ASSERT_EQ(l3["rope_scaling"]["rope_type"], "llama3");
  json moved = l3;
  moved["rope_parameters"] = l3["rope_scaling"];
  moved["rope_parameters"]["rope_theta"] = 500000.0;
  moved.erase("rope_scaling");
  moved.erase("rope_theta");
  const ModelConfig a = parse_model_config(l3, "a"), b = parse_model_config(moved, "b");
  EXPECT_EQ(b.rope_theta, 500000.0);
  EXPECT_EQ(b.rope_scaling.type, "llama3");
  EXPECT_EQ(b.rope_scaling.factor, a.rope_scaling.factor);
  EXPECT_EQ(b.rope_scaling.original_max_position_embeddings,
            a.rope_scaling.original_max_position_embeddings);
  moved["rope_parameters"]["rope_theta"] = a.rope_theta;
  EXPECT_TRUE(
      rope_inverse_frequencies(parse_model_config(moved, "b")).equal(rope_inverse_frequencies(a)));
  // Both places, agreeing: fine; disagreeing: which one is meant is unknown.
  moved["rope_scaling"] = l3["rope_scaling"];
  moved["rope_theta"] = a.rope_theta;
  EXPECT_EQ(error_of(moved), "");
  moved["rope_theta"] = 10000.0;
  EXPECT_NE(error_of(moved).find("rope_parameters.rope_theta: is"), std::string::npos)
      << error_of(moved);
  moved["rope_theta"] = a.rope_theta;
  moved["rope_scaling"]["factor"] = 2.0;
  EXPECT_NE(error_of(moved).find("rope_parameters: its scaling and rope_scaling's differ"),
            std::string::npos);
  moved["rope_scaling"] = l3["rope_scaling"];
  moved["rope_parameters"] = {{"rope_type", "default"}};
  EXPECT_NE(error_of(moved).find("its scaling and rope_scaling's differ"), std::string::npos);
  // What the supported architectures cannot take.
  c["rope_parameters"] = {{"full_attention", {{"rope_theta", 1e6}}},
                          {"sliding_attention", {{"rope_theta", 1e4}}}};
  EXPECT_NE(error_of(c).find("rope_parameters.full_attention: per-layer-type"), std::string::npos)
      << error_of(c);
  c["rope_parameters"] = {{"rope_theta", 1e6}, {"partial_rotary_factor", 0.5}};
  EXPECT_NE(error_of(c).find("partial_rotary_factor: only 1 is supported"), std::string::npos);
  c["rope_parameters"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  EXPECT_NE(error_of(c).find("unsupported rope_parameters type: yarn"), std::string::npos);
  c["rope_parameters"] = "1e6";
  EXPECT_NE(error_of(c).find("rope_parameters: expected an object or null"), std::string::npos);
}

TEST(ModelConfig, ReadsTheDtypeKeyOfNewerTransformers) {
  // transformers >= 4.56 writes "dtype"; "torch_dtype" wins when both are present.
  json c = llama();
  c.erase("torch_dtype");
  c["dtype"] = "bfloat16";
  EXPECT_EQ(parse_model_config(c, "l").torch_dtype, "bfloat16");
  c["torch_dtype"] = "float16";
  EXPECT_EQ(parse_model_config(c, "l").torch_dtype, "float16");
  c.erase("torch_dtype");
  c["dtype"] = "int8";
  EXPECT_NE(error_of(c).find("cfg.json: dtype: unsupported dtype 'int8'"), std::string::npos);
}

TEST(ModelConfig, DefaultRopeFrequencies) {
  json c = llama();
  c.erase("rope_scaling");
  ModelConfig m = parse_model_config(c, "l");
  at::Tensor inv = rope_inverse_frequencies(m);
  ASSERT_EQ(inv.size(0), 16);  // head_dim 32
  for (int i = 0; i < 16; ++i) {
    EXPECT_DOUBLE_EQ(inv[i].item<double>(), std::pow(500000.0, -2.0 * i / 32));
  }
}

TEST(ModelConfig, LinearAndLlama3RopeScaling) {
  json c = llama();
  c["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  at::Tensor lin = rope_inverse_frequencies(parse_model_config(c, "l"));
  EXPECT_DOUBLE_EQ(lin[3].item<double>(), std::pow(500000.0, -6.0 / 32) / 2);

  // llama3 with original context 1024, low 1, high 4: wavelengths above 1024 are divided by 8,
  // below 256 kept, between blended with smooth = (1024 / wavelen - 1) / 3.
  ModelConfig m = parse_model_config(llama(), "l");
  at::Tensor inv = rope_inverse_frequencies(m);
  for (int i = 0; i < 16; ++i) {
    const double f = std::pow(500000.0, -2.0 * i / 32), wavelen = 2 * M_PI / f;
    double want = f;
    if (wavelen > 1024) {
      want = f / 8;
    } else if (wavelen >= 256) {
      const double s = (1024 / wavelen - 1) / 3;
      want = (1 - s) * f / 8 + s * f;
    }
    EXPECT_NEAR(inv[i].item<double>(), want, 1e-15 * f) << i;
  }
  // The preset covers all three regimes: index 1 kept (wavelength 14), 5 and 6 blended
  // (379, 862: strictly between f / 8 and f), 7 on divided by 8 (1957).
  auto f = [](int i) { return std::pow(500000.0, -2.0 * i / 32); };
  EXPECT_NEAR(inv[1].item<double>(), f(1), 1e-15 * f(1));
  for (int i : {5, 6}) {
    EXPECT_GT(inv[i].item<double>(), f(i) / 8 * (1 + 1e-3)) << i;
    EXPECT_LT(inv[i].item<double>(), f(i) * (1 - 1e-3)) << i;
  }
  EXPECT_NEAR(inv[7].item<double>(), f(7) / 8, 1e-15 * f(7));
}

}  // namespace
}  // namespace kvbench
