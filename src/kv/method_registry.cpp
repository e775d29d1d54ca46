#include "kvbench/kv/method_registry.h"

#include <algorithm>
#include <cstdlib>

#include "gear_decode.h"
#include "kvbench/core/error.h"
#include "kvbench/core/json_text.h"
#include "kvbench/core/text.h"
#include "kvbench/kv/block_quant_codec.h"
#include "kvbench/kv/fp8_codec.h"
#include "kvbench/kv/full_cache.h"
#include "kvbench/kv/gear_block_cache.h"
#include "kvbench/kv/gear_codec.h"
#include "kvbench/kv/h2o_policy.h"
#include "kvbench/kv/identity_codec.h"
#include "kvbench/kv/kivi_codec.h"
#include "kvbench/kv/latent_paged_cache.h"
#include "kvbench/kv/lowrank_codec.h"
#include "kvbench/kv/paged_cache.h"
#include "kvbench/kv/palu_paged_cache.h"
#include "kvbench/kv/pyramidkv_policy.h"
#include "kvbench/kv/quest_policy.h"
#include "kvbench/kv/scissorhands_policy.h"
#include "kvbench/kv/snapkv_policy.h"
#include "kvbench/kv/streaming_llm_policy.h"
#include "kvbench/kv/tova_policy.h"
#include "kvbench/model/model_config.h"
#include "palu_decode.h"

namespace kvbench {

namespace {

using nlohmann::json;

MethodInfo identity_method(const std::string& name, const std::string& dtype) {
  return {name,
          "identity storage in " + dtype + ", every token kept",
          {},
          [dtype](const json&, at::ScalarType) {
            return std::make_shared<IdentityCodec>(dtype_from_name(dtype));
          },
          {}};
}

ParamSpec query_int8_param() {
  return ParamSpec::boolean("query_int8", true,
                            "fused cpu attention: integer key dot products against the query "
                            "quantized to int8 blocks of 32 once per step (needs group a multiple "
                            "of 32); false: the exact fp32 path");
}

// Values against int8 weights: on by default where its bound is small beside the codes' own
// rounding (4- and 2-bit codes); off for 8-bit codes, whose half step it can exceed.
ParamSpec value_int8_param(bool on) {
  return ParamSpec::boolean("value_int8", on,
                            "fused cpu attention: accumulate values against the weights p*scale "
                            "quantized to int8 per 32-token tile (vpdpbusd; AVX-512 VNNI; "
                            "block formats: group a multiple of 32, head_dim of 64; KIVI: group "
                            "a multiple of 16, head_dim of 128/bits, at most 256); false: exact "
                            "fp32 weights");
}

ParamSpec group_param() {
  return ParamSpec::integer("group", 32, "channels per quantization group (divides head_dim)")
      .one_of({8, 16, 32, 64, 128});
}

MethodInfo kivi_method(int bits) {
  return {"kivi-" + std::to_string(bits),
          "KIVI " + std::to_string(bits) +
              "-bit: keys per channel (groups of G tokens, quantized in blocks of R), values per "
              "token (groups of G channels), last R tokens exact; G = 32, R = 128 (seed paper)",
          {ParamSpec::integer("group", 32, "G: tokens per key group, channels per value group")
               .one_of({8, 16, 32, 64, 128}),
           ParamSpec::integer("residual", 128, "R: full-precision tokens (a multiple of group)")
               .range(8, 1 << 20),
           ParamSpec::boolean("query_int8", true,
                              "fused cpu attention: per key group the query times the channel "
                              "scales, quantized to int8 blocks of 32, scored with integer dot "
                              "products on the codes (head_dim a multiple of 32); false: the "
                              "scaled query stays fp32"),
           value_int8_param(true)},
          [bits](const json& p, at::ScalarType dtype) {
            return std::make_shared<KiviCodec>(
                bits, p["group"].get<int64_t>(), p["residual"].get<int64_t>(), dtype,
                p["query_int8"].get<bool>(), p["value_int8"].get<bool>());
          },
          {}};
}

// GEAR: `gear` keeps the GEAR repository's defaults (2-bit, G = 64, buffer 64) and exposes
// bits; the presets fix bits by name and follow the seed paper (G = 32, re-compress every 20).
MethodInfo gear_method(const std::string& name, const std::string& summary, const GearParams& d,
                       bool bits_param) {
  std::vector<ParamSpec> params;
  if (bits_param) {
    params.push_back(ParamSpec::integer("bits", d.bits, "code width of D").one_of({2, 4, 8}));
  }
  params.push_back(
      ParamSpec::integer("group", d.group, "G: tokens per key group, channels per value group")
          .one_of({8, 16, 32, 64, 128}));
  params.push_back(ParamSpec::number("outlier_ratio", d.outlier_ratio,
                                     "s: fraction of each vector kept exact (s/2 largest, s/2 "
                                     "smallest); keys per channel, values per token")
                       .range(0, 1));
  params.push_back(ParamSpec::integer("rank_prefill", d.rank_prefill,
                                      "rank of L for a block compressed from a prefill")
                       .range(0, 4096));
  params.push_back(ParamSpec::integer("rank_decode", d.rank_decode,
                                      "rank of L for a block compressed during decode")
                       .range(0, 4096));
  params.push_back(
      ParamSpec::integer("power_iters", d.power_iters, "power iterations per low-rank fit")
          .range(1, 100));
  params.push_back(ParamSpec::integer("buffer", d.buffer,
                                      "streaming buffer: newest tokens kept exact, compressed as "
                                      "one block every `buffer` decode steps")
                       .range(1, 1 << 20));
  params.push_back(ParamSpec::integer("seed", 0, "seed of the power iteration's random start")
                       .range(0, 2147483647));
  const int fixed_bits = d.bits;
  return {name,
          summary,
          params,
          [fixed_bits, bits_param](const json& p, at::ScalarType dtype) {
            GearParams g;
            g.bits = bits_param ? p["bits"].get<int>() : fixed_bits;
            g.group = p["group"].get<int64_t>();
            g.outlier_ratio = p["outlier_ratio"].get<double>();
            g.rank_prefill = p["rank_prefill"].get<int64_t>();
            g.rank_decode = p["rank_decode"].get<int64_t>();
            g.power_iters = p["power_iters"].get<int64_t>();
            g.buffer = p["buffer"].get<int64_t>();
            g.seed = p["seed"].get<uint64_t>();
            return std::make_shared<GearCodec>(g, dtype);
          },
          {}};
}

ParamSpec rank_param() {
  return ParamSpec::integer("rank", 0,
                            "r: coefficients kept per token (per KV head; palu: per group of "
                            "heads); 0: round(rank_ratio * head_dim), palu: round(rank_ratio * "
                            "group * head_dim)")
      .range(0, 1 << 20);
}

MethodInfo kvproj_method() {
  return {
      "kvproj",
      "key/value projection: per layer and KV head, orthonormal bases (top-r principal "
      "directions, uncentred) of the keys (RoPE applied) and values of calibration prompts "
      "run through the model in the untimed prepare step; coefficients stored in the model "
      "dtype, bases fp32; rank 0.5 of head_dim, 4 seeded text prompts of 512 tokens",
      {rank_param(),
       ParamSpec::number("rank_ratio", 0.5, "r as a fraction of head_dim when rank is 0")
           .range(1e-6, 1),
       ParamSpec::integer("calib_prompts", 4, "calibration prompts").range(1, 1024),
       ParamSpec::integer("calib_tokens", 512, "tokens per calibration prompt").range(1, 1 << 20),
       ParamSpec::integer("calib_seed", 0, "seed of the calibration prompts").range(0, 2147483647),
       ParamSpec::string("calib_source", "text",
                         "text: seeded sentences of the project's word lists, tokenized by the "
                         "run's tokenizer; random: uniform token ids",
                         {"text", "random"})},
      [](const json& p, at::ScalarType dtype) {
        LowRankParams l;
        l.kind = LowRankKind::kProjection;
        l.rank = p["rank"].get<int64_t>();
        l.rank_ratio = p["rank_ratio"].get<double>();
        l.group = 1;
        l.calibration.prompts = p["calib_prompts"].get<int64_t>();
        l.calibration.tokens = p["calib_tokens"].get<int64_t>();
        l.calibration.seed = p["calib_seed"].get<uint64_t>();
        l.calibration.source = p["calib_source"].get<std::string>();
        return std::make_shared<LowRankCodec>(l, dtype);
      },
      {},
      {},
      {{"rank_ratio", "rank", 0}}};
}

MethodInfo palu_method(const std::string& name, const std::string& summary) {
  return {name,
          summary,
          {rank_param(),
           ParamSpec::number("rank_ratio", 0.7,
                             "r as a fraction of group * head_dim (Palu's H*d) when rank is 0")
               .range(1e-6, 1),
           ParamSpec::integer("group", 1,
                              "g: KV heads per SVD group (divides the KV heads); Palu's G-LRD "
                              "uses 4, which needs a policy keeping the same tokens per head")
               .range(1, 1024)},
          [](const json& p, at::ScalarType dtype) {
            LowRankParams l;
            l.kind = LowRankKind::kPalu;
            l.rank = p["rank"].get<int64_t>();
            l.rank_ratio = p["rank_ratio"].get<double>();
            l.group = p["group"].get<int64_t>();
            return std::make_shared<LowRankCodec>(l, dtype);
          },
          {},
          {},
          {{"rank_ratio", "rank", 0}}};
}

EvictionTiming timing_from_name(const std::string& name) {
  return name == "decode" ? EvictionTiming::kDecode : EvictionTiming::kAfterPrefill;
}

ParamSpec codec_param(const std::vector<std::string>& codecs) {
  return ParamSpec::string("codec", "full",
                           "storage codec: a codec method's name, or an object {\"name\": ..., "
                           "its params}; decode-time eviction needs a per-token codec (full, "
                           "fp32, fp16, bf16, int8, int4, int2, fp8, kvproj, palu)",
                           codecs);
}

MethodInfo streaming_method(const std::string& name, const std::string& summary, int64_t sinks,
                            int64_t window, const std::vector<std::string>& codecs) {
  return {name,
          summary,
          {ParamSpec::integer("sinks", sinks, "S: first tokens always kept (attention sinks)")
               .range(0, 1 << 24),
           ParamSpec::integer("window", window, "W: most recent tokens kept").range(1, 1 << 24),
           ParamSpec::string("evict", "decode",
                             "decode: evict whenever a layer holds more than S + W tokens; "
                             "after_prefill: once, after the prefill",
                             {"decode", "after_prefill"}),
           ParamSpec::string("positions", "original",
                             "original: kept keys keep their logical RoPE positions; rerotated: "
                             "kept tokens take their positions inside the cache (their rank "
                             "among the kept tokens), as the StreamingLLM paper does",
                             {"original", "rerotated"}),
           codec_param(codecs)},
          {},
          [](const json& p) {
            return std::make_shared<StreamingLlmPolicy>(
                p["sinks"].get<int64_t>(), p["window"].get<int64_t>(), timing_from_name(p["evict"]),
                p["positions"] == "rerotated");
          }};
}

// The parameters SnapKV's scoring takes (PyramidKV scores the same way): budget, observation
// window, pooling kernel and pooling.
std::vector<ParamSpec> snapkv_scoring_params(int64_t budget, const std::string& budget_help,
                                             int64_t window) {
  return {ParamSpec::integer("budget", budget, budget_help).range(2, 1 << 24),
          ParamSpec::integer("window", window, "w: observation window (last prefill queries)")
              .range(1, 1 << 20),
          ParamSpec::integer("kernel", 7, "pooling kernel along tokens (odd)").range(1, 1023),
          ParamSpec::string("pooling", "max", "pooling of the window's votes", {"max", "avg"})};
}

MethodInfo snapkv_method(const std::string& name, const std::string& summary, int64_t budget,
                         const std::vector<std::string>& codecs) {
  std::vector<ParamSpec> params = snapkv_scoring_params(
      budget, "C: tokens kept per KV head per layer, the window included", 32);
  params.push_back(codec_param(codecs));
  return {name, summary, params, {}, [](const json& p) {
            return std::make_shared<SnapKvPolicy>(p["budget"].get<int64_t>(),
                                                  p["window"].get<int64_t>(),
                                                  p["kernel"].get<int64_t>(), p["pooling"]);
          }};
}

MethodInfo pyramidkv_method(const std::string& name, const std::string& summary, int64_t budget,
                            const std::vector<std::string>& codecs) {
  std::vector<ParamSpec> params = snapkv_scoring_params(
      budget, "C: average tokens kept per KV head per layer, the window included", 8);
  params.push_back(ParamSpec::number("beta", 20.0,
                                     "beta: the last layer keeps (C - w) / beta + w, the first "
                                     "2 (C - w) - (C - w) / beta + w (rounded; the first at "
                                     "most T - w)")
                       .range(1, 1e6));
  params.push_back(codec_param(codecs));
  return {name, summary, params, {}, [](const json& p) {
            return std::make_shared<PyramidKvPolicy>(
                p["budget"].get<int64_t>(), p["window"].get<int64_t>(), p["kernel"].get<int64_t>(),
                p["pooling"], p["beta"].get<double>());
          }};
}

MethodInfo scissorhands_method(const std::string& name, const std::string& summary, int64_t budget,
                               const std::vector<std::string>& codecs) {
  return {
      name,
      summary,
      {ParamSpec::integer("budget", budget, "tokens kept per KV head per layer").range(2, 1 << 24),
       ParamSpec::integer("recent", 32, "newest tokens never dropped (less than budget)")
           .range(1, 1 << 24),
       ParamSpec::integer("history", 32,
                          "history window: the last queries whose below-uniform attention "
                          "(< 1/t over t attended tokens) is counted per token")
           .range(1, 4096),
       ParamSpec::string("evict", "decode",
                         "decode: evict whenever a layer holds more than the budget; "
                         "after_prefill: once, after the prefill",
                         {"decode", "after_prefill"}),
       codec_param(codecs)},
      {},
      [](const json& p) {
        return std::make_shared<ScissorHandsPolicy>(
            p["budget"].get<int64_t>(), p["recent"].get<int64_t>(), p["history"].get<int64_t>(),
            timing_from_name(p["evict"]));
      }};
}

// `ratio`: the default fraction of the prompt for both heavy and recent (0: the counts).
MethodInfo h2o_method(const std::string& name, const std::string& summary, int64_t heavy,
                      int64_t recent, double ratio, const std::vector<std::string>& codecs) {
  return {
      name,
      summary,
      {ParamSpec::integer("heavy", heavy,
                          "heavy hitters kept outside the recent window, when heavy_ratio is 0 "
                          "(giving heavy sets heavy_ratio to 0)")
           .range(0, 1 << 24),
       ParamSpec::integer("recent", recent,
                          "most recent tokens always kept, when recent_ratio is 0 (giving recent "
                          "sets recent_ratio to 0)")
           .range(1, 1 << 24),
       ParamSpec::number("heavy_ratio", ratio,
                         "heavy hitters as a fraction of the prompt, floor(ratio * prompt); "
                         "0: the count `heavy`")
           .range(0, 1),
       ParamSpec::number("recent_ratio", ratio,
                         "recent tokens as a fraction of the prompt, floor(ratio * prompt) and "
                         "at least 1; 0: the count `recent`")
           .range(0, 1),
       ParamSpec::boolean("normalize", false,
                          "divide each score by the number of queries that could see the token"),
       ParamSpec::string("evict", "decode",
                         "decode: evict whenever a layer holds more than heavy + recent tokens; "
                         "after_prefill: once, after the prefill",
                         {"decode", "after_prefill"}),
       codec_param(codecs)},
      {},
      [](const json& p) {
        // A count left out of the resolved entry is unused (its ratio is above 0).
        return std::make_shared<H2oPolicy>(
            p.value("heavy", int64_t{0}), p.value("recent", int64_t{1}), p["normalize"].get<bool>(),
            timing_from_name(p["evict"]),
            H2oRatios{p["heavy_ratio"].get<double>(), p["recent_ratio"].get<double>()});
      },
      {{"heavy", "heavy_ratio"}, {"recent", "recent_ratio"}}};
}

MethodInfo tova_method(const std::string& name, const std::string& summary, int64_t budget,
                       const std::vector<std::string>& codecs) {
  return {
      name,
      summary,
      {ParamSpec::integer("budget", budget, "tokens kept per KV head per layer").range(1, 1 << 24),
       ParamSpec::string("evict", "decode",
                         "decode: evict whenever a layer holds more than the budget; "
                         "after_prefill: once, after the prefill",
                         {"decode", "after_prefill"}),
       codec_param(codecs)},
      {},
      [](const json& p) {
        return std::make_shared<TovaPolicy>(p["budget"].get<int64_t>(),
                                            timing_from_name(p["evict"]));
      }};
}

MethodInfo quest_method(const std::string& name, const std::string& summary, int64_t budget,
                        const std::vector<std::string>& codecs) {
  return {name,
          summary,
          {ParamSpec::integer("budget", budget, "tokens read per KV head per decode step")
               .range(1, 1 << 24),
           ParamSpec::integer("page_size", 16, "P: tokens per page").range(1, 4096),
           ParamSpec::integer("dense_layers", 2, "first layers that always attend densely")
               .range(0, 1024),
           codec_param(codecs)},
          {},
          [](const json& p) {
            return std::make_shared<QuestPolicy>(p["budget"].get<int64_t>(),
                                                 p["page_size"].get<int64_t>(),
                                                 p["dense_layers"].get<int64_t>());
          }};
}

// Codec methods first (the composition's valid codecs), then the retention methods.
std::vector<MethodInfo> build_catalog();

GearParams gear_preset(int bits) {
  GearParams g;
  g.bits = bits;
  g.group = 32;
  g.buffer = 20;
  return g;
}

}  // namespace

const std::vector<MethodInfo>& method_catalog() {
  static const std::vector<MethodInfo> catalog = build_catalog();
  return catalog;
}

namespace {

std::vector<MethodInfo> build_catalog() {
  std::vector<MethodInfo> catalog = {
      {"full",
       "uncompressed baseline: identity storage in the model dtype (model.dtype), every token "
       "kept",
       {},
       [](const json&, at::ScalarType dtype) { return std::make_shared<IdentityCodec>(dtype); },
       {}},
      identity_method("fp32", "float32"),
      identity_method("fp16", "float16"),
      identity_method("bf16", "bfloat16"),
      {"int8",
       "q8_0: symmetric per-token blocks along head_dim, d = amax/127, 8-bit codes + fp16 scale "
       "(8.5 bits per value at group 32), every token kept",
       {group_param(), query_int8_param(), value_int8_param(false)},
       [](const json& p, at::ScalarType) {
         return std::make_shared<BlockQuantCodec>(8, true, p["group"].get<int64_t>(),
                                                  p["query_int8"].get<bool>(),
                                                  p["value_int8"].get<bool>());
       },
       {}},
      {"int4",
       "q4_1: asymmetric per-token blocks, d = (max-min)/15, 4-bit codes + fp16 scale and min "
       "(5 bits per value at group 32); symmetric: q4_0 (4.5 bits); every token kept",
       {group_param(),
        ParamSpec::boolean("symmetric", false, "q4_0 rule (scale only) instead of q4_1"),
        query_int8_param(), value_int8_param(true)},
       [](const json& p, at::ScalarType) {
         return std::make_shared<BlockQuantCodec>(
             4, p["symmetric"].get<bool>(), p["group"].get<int64_t>(), p["query_int8"].get<bool>(),
             p["value_int8"].get<bool>());
       },
       {}},
      kivi_method(2),
      kivi_method(4),
      {"fp8",
       "FP8 e4m3 (OCP e4m3fn, saturating at +-448): one byte per value plus one fp32 scale per "
       "KV head (amax of the first tokens / 200 for keys, / 100 for values, as vLLM), every "
       "token kept",
       {ParamSpec::string("scale", "amax",
                          "amax: calibrated on the first tokens a layer sees; fixed: scale_value",
                          {"amax", "fixed"}),
        ParamSpec::number("scale_value", 1.0, "the scale when scale is fixed").range(1e-12, 1e12),
        ParamSpec::number("key_amax_divisor", 200.0,
                          "keys' scale = amax / key_amax_divisor (448: no headroom; "
                          "more would saturate the calibrating tokens themselves)")
            .range(1e-3, 448),
        ParamSpec::number("value_amax_divisor", 100.0,
                          "values' scale = amax / value_amax_divisor (at most 448)")
            .range(1e-3, 448),
        ParamSpec::string("granularity", "head", "one scale per KV head or per layer",
                          {"head", "layer"})},
       [](const json& p, at::ScalarType) {
         return std::make_shared<Fp8Codec>(p["scale"], p["scale_value"], p["key_amax_divisor"],
                                           p["value_amax_divisor"], p["granularity"]);
       },
       {},
       {},
       {{"scale_value", "scale", "fixed"},
        {"key_amax_divisor", "scale", "amax"},
        {"value_amax_divisor", "scale", "amax"}}},
      {"int2",
       "asymmetric per-token blocks, d = (max-min)/3, 2-bit codes + fp16 scale and min "
       "(3 bits per value at group 32), every token kept",
       {group_param(), query_int8_param(), value_int8_param(true)},
       [](const json& p, at::ScalarType) {
         return std::make_shared<BlockQuantCodec>(2, false, p["group"].get<int64_t>(),
                                                  p["query_int8"].get<bool>(),
                                                  p["value_int8"].get<bool>());
       },
       {}},
      gear_method("gear",
                  "GEAR X ~ D + L + S: KIVI-style quantization D (keys per channel, values per "
                  "token) of X minus outliers S (s/2 largest + s/2 smallest of each vector, "
                  "exact), plus a rank-r power-iteration fit L of the residual; newest tokens "
                  "exact in a streaming buffer compressed every N steps. GEAR repo defaults: "
                  "2-bit, G = 64, s = 0.02, rank 4 prefill / 2 decode, 3 iterations, N = 64",
                  GearParams{}, true),
      gear_method("gear-4",
                  "GEAR with 4-bit KIVI-style D, G = 32, outliers 2% per vector, rank 4 at "
                  "prefill and 2 in decode, 3 power iterations, re-compress every 20 steps "
                  "(seed paper + GEAR defaults)",
                  gear_preset(4), false),
      gear_method("gear-8",
                  "GEAR with 8-bit KIVI-style D, G = 32, outliers 2% per vector, rank 4 at "
                  "prefill and 2 in decode, 3 power iterations, re-compress every 20 steps "
                  "(seed paper + GEAR defaults)",
                  gear_preset(8), false),
      kvproj_method(),
      palu_method("palu",
                  "Palu latent cache: per layer and group of g KV heads, W_k and W_v ~ L R by SVD "
                  "(L = U_r) in the untimed prepare step; the cache stores the latent L^T k of "
                  "each pre-RoPE key (RoPE undone at the token's position) and L^T v, and "
                  "reconstructs L h then applies RoPE; rank 0.7 of g * head_dim, g = 1"),
      palu_method("palu-70",
                  "Palu with rank ratio 0.7 of H*d per group (Palu README), g = 1 KV head per "
                  "group"),
  };
  std::vector<std::string> codecs;
  for (const auto& m : catalog) codecs.push_back(m.name);
  catalog.push_back(streaming_method(
      "streamingllm",
      "StreamingLLM: keep S = 4 sink tokens + the W most recent (W = 2000, the reference code's "
      "recent size), evicting during decode; original positions kept; any codec",
      4, 2000, codecs));
  catalog.push_back(streaming_method(
      "stream-512",
      "StreamingLLM with 64 sink + 448 recent tokens (512 per KV head per layer), evicting during "
      "decode (seed paper throughput engine); any codec",
      64, 448, codecs));
  const std::string snap =
      "SnapKV: after the prefill, keep per KV head the top C - w prefix tokens by the attention "
      "of the last w = 32 queries (summed, max-pooled with kernel 7, averaged over the query "
      "group) plus the w window tokens: C = ";
  catalog.push_back(h2o_method(
      "h2o",
      "H2O: keep the `recent` newest tokens and the `heavy` others with the most attention "
      "accumulated over every query so far (probabilities computed from the stored keys each "
      "step), evicting during decode; heavy = recent = 10% of the prompt by default (the "
      "paper's); any per-token codec",
      256, 256, 0.1, codecs));
  catalog.push_back(h2o_method(
      "h2o-512",
      "H2O with 256 heavy hitters + 256 recent tokens (the H2O paper's even split, budget 512)",
      256, 256, 0, codecs));
  catalog.push_back(tova_method(
      "tova",
      "TOVA: whenever a layer holds more than the budget, keep the tokens the newest query "
      "attends to most (averaged over every head of the layer; no sinks or window); budget 512 "
      "by default; any per-token codec",
      512, codecs));
  catalog.push_back(tova_method("tova-512", "TOVA with a budget of 512 tokens", 512, codecs));
  catalog.push_back(scissorhands_method(
      "scissorhands",
      "ScissorHands: whenever a layer holds more than the budget, drop the tokens most often "
      "given less than uniform attention (1/t) by the last `history` = 32 queries, the "
      "`recent` = 32 newest protected; budget 512 by default; any per-token codec",
      512, codecs));
  catalog.push_back(scissorhands_method(
      "scissorhands-512",
      "ScissorHands with a budget of 512 tokens, history window 32, 32 recent tokens protected",
      512, codecs));
  const std::string pyramid =
      "PyramidKV: SnapKV's selection after the prefill with per-layer budgets falling linearly "
      "from 2 (C - w) - (C - w) / beta + w at the first layer to (C - w) / beta + w at the last "
      "(exact step, rounded), window w = 8, max-pool kernel 7, beta = 20: C = ";
  catalog.push_back(
      pyramidkv_method("pyramidkv", pyramid + "1024 tokens on average; any codec", 1024, codecs));
  catalog.push_back(pyramidkv_method(
      "pyramidkv-2048", pyramid + "2048 tokens on average (KVCache-Factory); any codec", 2048,
      codecs));
  const std::string quest =
      "Quest: every token stays stored; per page of P = 16 tokens the keys' elementwise min and "
      "max bound q.k, and each decode step attends exactly over the top budget / P pages per "
      "KV head (the newest always); the first 2 layers dense. Saves bandwidth, not memory; "
      "any per-token codec. Budget ";
  catalog.push_back(quest_method("quest", quest + "1024 tokens", 1024, codecs));
  catalog.push_back(quest_method("quest-1024", quest + "1024 tokens (Quest)", 1024, codecs));
  catalog.push_back(snapkv_method("snapkv", snap + "1024 tokens; any codec", 1024, codecs));
  catalog.push_back(snapkv_method(
      "snapkv-1024", snap + "1024 tokens (SnapKV LongBench config); any codec", 1024, codecs));
  catalog.push_back(snapkv_method(
      "snapkv-2048", snap + "2048 tokens (SnapKV LongBench config); any codec", 2048, codecs));
  return catalog;
}

}  // namespace

std::vector<std::string> method_names() {
  std::vector<std::string> names;
  for (const auto& m : method_catalog()) names.push_back(m.name);
  return names;
}

std::vector<std::string> codec_method_names() {
  std::vector<std::string> names;
  for (const auto& m : method_catalog()) {
    if (m.codec) names.push_back(m.name);
  }
  return names;
}

namespace {

const MethodInfo* find_method(const std::string& name) {
  for (const auto& m : method_catalog()) {
    if (m.name == name) return &m;
  }
  return nullptr;
}

// MethodInfo::applies_only_when, on a resolved entry.
void refuse_inert_params(const json& resolved, const MethodInfo& m, const std::string& path) {
  for (const auto& rule : m.applies_only_when) {
    if (resolved.at(rule.key) == rule.value) continue;
    auto spec = std::find_if(m.params.begin(), m.params.end(),
                             [&](const ParamSpec& p) { return p.name == rule.param; });
    if (spec == m.params.end() || resolved.at(rule.param) == spec->default_value) continue;
    throw ConfigError(join_path(path, rule.param),
                      "applies only with \"" + rule.key + "\": " + rule.value.dump() + " (here " +
                          resolved.at(rule.key).dump() + "); leave it out");
  }
}

// The resolved codec object of a retention method's `codec` entry (a name or an object).
json resolve_codec_entry(const json& given, const std::string& path) {
  const json entry = given.is_string() ? json{{"name", given}} : given;
  const std::vector<std::string> codecs = codec_method_names();
  if (!entry.is_object() || !entry.contains("name") || !entry["name"].is_string()) {
    throw ConfigError(path,
                      "expected a codec name or an object like {\"name\": \"kivi-4\"}, "
                      "got " +
                          json_type_name(given) + "; codecs: " + join(codecs, ", "));
  }
  const std::string name = entry["name"];
  const MethodInfo* m = find_method(name);
  if (m == nullptr || !m->codec) {
    const std::string hint = closest_match(name, codecs);
    throw ConfigError(join_path(path, "name"),
                      "unknown codec '" + key_text(name) + "'" +
                          (m != nullptr ? " (a retention method, not a codec)" : "") +
                          (hint.empty() || m != nullptr ? "" : " (did you mean '" + hint + "'?)") +
                          "; codecs: " + join(codecs, ", "));
  }
  json resolved = resolve_params(entry, m->params, path);
  refuse_inert_params(resolved, *m, path);
  return resolved;
}

}  // namespace

namespace {

// Builds the codec of a resolved entry once, so that parameters that contradict each other
// (a KIVI residual that is not a multiple of its group) fail as config errors at `path`.
std::shared_ptr<const Codec> check_codec_builds(const json& codec, const std::string& path) {
  try {
    return make_codec(codec, at::kHalf);
  } catch (const ConfigError&) {
    throw;
  } catch (const Error& e) {
    throw ConfigError(path, e.what());
  }
}

// "retention+codec": both halves named, the retention method first.
void check_composed_name(const std::string& full, size_t plus, const std::string& path) {
  const std::string left = full.substr(0, plus), right = full.substr(plus + 1);
  if (left.empty() || right.empty())
    throw ConfigError(path, "'" + full +
                                "': expected a retention method and its codec, as in "
                                "'snapkv-2048+kivi-4'");
  const auto& catalog = method_catalog();
  auto it = std::find_if(catalog.begin(), catalog.end(),
                         [&](const MethodInfo& m) { return m.name == left; });
  if (it == catalog.end() || it->policy) return;
  auto other = std::find_if(catalog.begin(), catalog.end(),
                            [&](const MethodInfo& m) { return m.name == right; });
  const std::string lead = "'" + full + "': '" + left + "' is a codec, not a retention method";
  if (other == catalog.end()) throw ConfigError(path, lead + ", and '" + right + "' is no method");
  if (other->policy)
    throw ConfigError(
        path, lead + "; the retention method comes first, as in '" + right + "+" + left + "'");
  throw ConfigError(path, lead + "; both are codecs: give one alone ('" + right +
                              "'), or after a retention method, as in 'snapkv+" + right + "'");
}

}  // namespace

namespace {

// MethodInfo::count_or_ratio before resolve_params: a count given alone switches its ratio off.
void prefer_given_counts(json& entry, const MethodInfo& m, const std::string& path) {
  for (const auto& [count, ratio] : m.count_or_ratio) {
    if (!entry.contains(count)) continue;
    const json* r = entry.contains(ratio) ? &entry[ratio] : nullptr;
    if (r == nullptr) {
      entry[ratio] = 0.0;
    } else if (r->is_number() && r->get<double>() > 0) {  // the rest: resolve_params says
      throw ConfigError(join_path(path, ratio), "'" + count + "' and '" + ratio +
                                                    "' both set the same count; give one (or '" +
                                                    ratio + "': 0 with '" + count + "')");
    }
  }
}

// ... and after it: a ratio in use leaves its count out of the resolved entry.
void drop_replaced_counts(json& resolved, const MethodInfo& m) {
  for (const auto& [count, ratio] : m.count_or_ratio)
    if (resolved[ratio].get<double>() > 0) resolved.erase(count);
}

}  // namespace

nlohmann::json resolve_method(const nlohmann::json& entry_in, const std::string& path) {
  json entry = entry_in;
  if (entry.is_object() && entry.contains("name") && entry["name"].is_string()) {
    // "snapkv-2048+kivi-4": a retention method and its codec in one name.
    const std::string full = entry["name"];
    const size_t plus = full.find('+');
    if (plus != std::string::npos) {
      if (entry.contains("codec")) {
        throw ConfigError(join_path(path, "codec"), "'" + full +
                                                        "' already names its codec; give the "
                                                        "codec once");
      }
      entry["name"] = full.substr(0, plus);
      entry["codec"] = full.substr(plus + 1);
      check_composed_name(full, plus, join_path(path, "name"));
    }
  }
  if (!entry.is_object()) {
    throw ConfigError(path,
                      "expected an object like {\"name\": \"full\"}, got " + json_type_name(entry));
  }
  if (!entry.contains("name") || !entry["name"].is_string()) {
    throw ConfigError(join_path(path, "name"), "expected a method name (string); known methods: " +
                                                   join(method_names(), ", "));
  }
  const std::string name = entry["name"];
  const auto& catalog = method_catalog();
  auto it = std::find_if(catalog.begin(), catalog.end(),
                         [&](const MethodInfo& m) { return m.name == name; });
  if (it == catalog.end()) {
    std::string hint = closest_match(name, method_names());
    throw ConfigError(join_path(path, "name"),
                      "unknown method '" + key_text(name) + "'" +
                          (hint.empty() ? "" : " (did you mean '" + hint + "'?)") +
                          "; known methods: " + join(method_names(), ", "));
  }
  if (!it->policy) {
    json resolved = resolve_params(entry, it->params, path);
    refuse_inert_params(resolved, *it, path);
    check_codec_builds(resolved, path);
    return resolved;
  }

  // A retention method: resolve its codec, check the pair, and build the policy once so that
  // inconsistent parameters (budget <= window, an even kernel) fail here.
  const std::string codec_path = join_path(path, "codec");
  const json codec = resolve_codec_entry(entry.value("codec", json("full")), codec_path);
  json plain = entry;
  plain["codec"] = codec["name"];
  prefer_given_counts(plain, *it, path);
  json resolved = resolve_params(plain, it->params, path);
  refuse_inert_params(resolved, *it, path);
  drop_replaced_counts(resolved, *it);
  resolved["codec"] = codec;
  std::shared_ptr<const RetentionPolicy> policy;
  try {
    policy = it->policy(resolved);
  } catch (const ConfigError&) {
    throw;
  } catch (const Error& e) {
    throw ConfigError(path, e.what());
  }
  const std::shared_ptr<const Codec> built = check_codec_builds(codec, codec_path);
  const bool drops = built->can_drop_tokens();
  // Palu's G-LRD stores one latent per group of KV heads: they cannot keep different tokens.
  if (auto lowrank = std::dynamic_pointer_cast<const LowRankCodec>(built);
      lowrank && lowrank->kind() == LowRankKind::kPalu && lowrank->group() > 1 &&
      !policy->same_tokens_every_head())
    throw ConfigError(
        join_path(codec_path, "group"),
        "palu's group " + std::to_string(lowrank->group()) +
            " shares one latent between KV heads, for which '" + name +
            (name == "quest" ? "' would read different pages" : "' would keep different tokens") +
            "; use \"group\": 1 or a policy that keeps the same tokens for "
            "every head (streamingllm, tova)");
  if (policy->timing() == EvictionTiming::kDecode && !drops) {
    const std::string why =
        "codec '" + codec["name"].get<std::string>() + "' cannot (its codes span tokens); ";
    const std::string per_token =
        "a per-token codec (full, fp32, fp16, bf16, int8, int4, int2, fp8, kvproj, palu)";
    // Only the methods with an `evict` key can move their selection after the prefill.
    if (resolved.contains("evict"))
      throw ConfigError(join_path(path, "evict"),
                        "decode-time eviction drops tokens in place, which " + why +
                            "use \"evict\": \"after_prefill\" or " + per_token);
    throw ConfigError(codec_path, "'" + name + "' selects tokens at every decode step, which " +
                                      why + "use " + per_token);
  }
  return resolved;
}

std::shared_ptr<const Codec> make_codec(const nlohmann::json& method, at::ScalarType model_dtype) {
  if (method.contains("codec")) return make_codec(method["codec"], model_dtype);
  const std::string name = method.at("name");
  const MethodInfo* m = find_method(name);
  if (m != nullptr && m->codec) return m->codec(method, model_dtype);
  throw Error("unknown codec method '" + name + "'; codecs: " + join(codec_method_names(), ", "));
}

std::shared_ptr<const RetentionPolicy> make_policy(const nlohmann::json& method) {
  const std::string name = method.at("name");
  const MethodInfo* m = find_method(name);
  KVB_CHECK(m != nullptr, "unknown method '", name,
            "'; known methods: ", join(method_names(), ", "));
  if (!m->policy) return std::make_shared<FullRetention>();
  return m->policy(method);
}

bool paged_kernel_path_on_cpu() {
  static const bool on = [] {
    const char* path = std::getenv("KVBENCH_PAGED_PATH");
    return path != nullptr && std::string(path) == "kernels";
  }();
  return on;
}

namespace {

// PagedKVCache's kernel_path_on_cpu argument, from KVBENCH_PAGED_PATH.
bool kernel_path_on_cpu() { return paged_kernel_path_on_cpu(); }

// GEAR's presets (or a composition storing with one): its own cache on the paged path.
bool is_gear(const nlohmann::json& method) {
  const nlohmann::json& m = method.contains("codec") ? method["codec"] : method;
  return m.at("name").get<std::string>().rfind("gear", 0) == 0;
}

}  // namespace

std::unique_ptr<KVCache> make_kv_cache(const nlohmann::json& method, int64_t num_layers,
                                       int64_t num_kv_heads, int64_t head_dim, at::ScalarType dtype,
                                       const std::string& backend, const at::Tensor& rope_inv_freq,
                                       at::Device device) {
  if (backend == "paged" && is_gear(method))
    return make_paged_cache(method, make_codec(method, dtype), num_layers, num_kv_heads, head_dim,
                            dtype, device);
  if (backend == "paged")
    return std::make_unique<PagedKVCache>(paged_format_for(method, dtype), num_layers, num_kv_heads,
                                          head_dim, PagedCapacity{}, device, make_policy(method),
                                          kernel_path_on_cpu());
  KVB_CHECK(device.is_cpu(), "KV cache: device ", device.str(), " needs the paged cache");
  auto cache = std::make_unique<CompressedKVCache>(
      make_codec(method, dtype), attention_backend_from_name(backend), num_layers, num_kv_heads,
      head_dim, make_policy(method), rope_inv_freq);
  cache->set_computed_dtype(dtype);
  return cache;
}

PagedRetention paged_retention_of(const nlohmann::json& method, at::ScalarType dtype) {
  const std::shared_ptr<const RetentionPolicy> policy = make_policy(method);
  if (dynamic_cast<const FullRetention*>(policy.get()) != nullptr ||
      dynamic_cast<const QuestPolicy*>(policy.get()) != nullptr)
    return {};  // nothing evicted: no need to know the format
  const std::shared_ptr<const Codec> codec = make_codec(method, dtype);
  if (std::dynamic_pointer_cast<const GearCodec>(codec)) return {};
  PagedFormat format;
  if (auto lowrank = std::dynamic_pointer_cast<const LowRankCodec>(codec)) {
    // As make_paged_cache builds them: Palu's latent pages attended by its own kernel, the
    // projection's coefficient pages, both in the 16-bit format of their dtype.
    format = paged_format_16bit(dtype);
    format.own_attention = lowrank->kind() == LowRankKind::kPalu;
  } else {
    format = paged_format_for(method, dtype);
  }
  PagedRetention out;
  out.ring = paged_ring(format, policy.get()).has_value();
  if (paged_compacts(format, policy.get()))
    out.compacting_page = format.page_size;
  else if (!out.ring)
    out.listing_page = format.page_size;
  return out;
}

PagedSequenceBytes paged_sequence_bytes_of(const nlohmann::json& method, at::ScalarType dtype,
                                           int64_t head_dim) {
  const std::shared_ptr<const Codec> codec = make_codec(method, dtype);
  if (std::dynamic_pointer_cast<const GearCodec>(codec) ||
      std::dynamic_pointer_cast<const LowRankCodec>(codec))
    return {};
  const PagedFormat format = paged_format_for(method, dtype);
  return {format.page_size, paged_page_bytes(format, head_dim).total(),
          paged_sequence_reserve(format, head_dim).total()};
}

std::unique_ptr<KVCache> make_paged_cache(const nlohmann::json& method,
                                          std::shared_ptr<const Codec> codec, int64_t num_layers,
                                          int64_t num_kv_heads, int64_t head_dim,
                                          at::ScalarType dtype, at::Device device) {
  if (auto gear = std::dynamic_pointer_cast<const GearCodec>(codec))
    return std::make_unique<GearBlockCache>(std::move(gear), num_layers, num_kv_heads, head_dim,
                                            device, make_policy(method), kernel_path_on_cpu());
  auto lowrank = std::dynamic_pointer_cast<const LowRankCodec>(codec);
  if (lowrank && lowrank->kind() == LowRankKind::kPalu)
    return std::make_unique<PaluPagedCache>(std::move(lowrank), dtype, num_layers, num_kv_heads,
                                            head_dim, PagedCapacity{}, device, make_policy(method),
                                            kernel_path_on_cpu());
  if (lowrank)
    return std::make_unique<LatentPagedCache>(std::move(lowrank), dtype, num_layers, num_kv_heads,
                                              head_dim, PagedCapacity{}, device,
                                              make_policy(method), kernel_path_on_cpu());
  return make_kv_cache(method, num_layers, num_kv_heads, head_dim, dtype, "paged", at::Tensor(),
                       device);
}

void check_paged_method(const nlohmann::json& method, int64_t num_heads, int64_t num_kv_heads,
                        int64_t head_dim, at::ScalarType dtype, bool kernel_path) {
  const std::shared_ptr<const Codec> codec = make_codec(method, dtype);
  // The GPU path's decode kernels (the dense one every method's cache uses, Palu's, GEAR's)
  // hold a KV head's query group in one mma's 8 rows.
  const auto latent = std::dynamic_pointer_cast<const LowRankCodec>(codec);
  const int64_t group = num_heads / std::max<int64_t>(num_kv_heads, 1);
  KVB_CHECK(!kernel_path || group <= kernels::kDecodeMaxQPerKv, "paged cache: ", codec->name(),
            " on the GPU path takes at most ", kernels::kDecodeMaxQPerKv,
            " query heads per KV head; the model has ", group);
  static_assert(kernels::kPaluMaxQPerKv == kernels::kDecodeMaxQPerKv &&
                    kernels::kGearMaxQPerKv == kernels::kDecodeMaxQPerKv,
                "one limit for every decode kernel");
  if (const auto& lowrank = latent) {
    // Its cache needs the fitted bases; what it checks besides them: 16-bit latents, the rank
    // the GPU kernels take, and Palu's policies.
    KVB_CHECK(dtype == at::kHalf || dtype == at::kBFloat16, "paged cache: method '", codec->name(),
              "' stores ", c10::toString(dtype),
              " latents, which have no paged format (model dtype fp16 or bf16)");
    const int64_t rank = lowrank->rank_for(head_dim);
    KVB_CHECK(!kernel_path || latent_row_width(lowrank->kind(), rank, true) <= 128,
              "paged cache: ", codec->name(), " rank ", rank,
              ": the GPU decode kernels take latent ranks up to 128");
    if (lowrank->kind() == LowRankKind::kProjection) check_paged_policy(make_policy(method).get());
    if (lowrank->kind() == LowRankKind::kPalu) {
      KVB_CHECK(!kernel_path || head_dim == 64 || head_dim == 128, "paged cache: palu at head_dim ",
                head_dim, ": the GPU kernel takes head_dim 64 or 128");
      check_palu_paged_policy(make_policy(method).get());
    }
    return;
  }
  // Every other method: its cache built for one layer on the CPU (its constructor's checks),
  // with the GPU path's checks when asked.
  if (auto gear = std::dynamic_pointer_cast<const GearCodec>(codec)) {
    GearBlockCache(std::move(gear), 1, num_kv_heads, head_dim, at::kCPU, make_policy(method),
                   kernel_path);
    return;
  }
  PagedKVCache(paged_format_for(method, dtype), 1, num_kv_heads, head_dim, PagedCapacity{1, 0, 1},
               at::kCPU, make_policy(method), kernel_path);
}

std::unique_ptr<KVCache> make_kv_cache(const nlohmann::json& method,
                                       std::shared_ptr<const Codec> codec, int64_t num_layers,
                                       int64_t num_kv_heads, int64_t head_dim, at::ScalarType dtype,
                                       const std::string& backend,
                                       const at::Tensor& rope_inv_freq) {
  KVB_CHECK(backend != "paged",
            "make_kv_cache: a paged cache with a given codec comes from make_paged_cache");
  auto cache = std::make_unique<CompressedKVCache>(
      std::move(codec), attention_backend_from_name(backend), num_layers, num_kv_heads, head_dim,
      make_policy(method), rope_inv_freq);
  cache->set_computed_dtype(dtype);
  return cache;
}

}  // namespace kvbench
