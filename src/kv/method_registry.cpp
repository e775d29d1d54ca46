#include "kvbench/kv/method_registry.h"

#include <algorithm>

#include "kvbench/core/error.h"
#include "kvbench/core/text.h"
#include "kvbench/kv/block_quant_codec.h"
#include "kvbench/kv/fp8_codec.h"
#include "kvbench/kv/full_cache.h"
#include "kvbench/kv/gear_codec.h"
#include "kvbench/kv/identity_codec.h"
#include "kvbench/kv/kivi_codec.h"
#include "kvbench/model/model_config.h"

namespace kvbench {

namespace {

using nlohmann::json;

MethodInfo identity_method(const std::string& name, const std::string& dtype) {
  return {name,
          "identity storage in " + dtype + ", every token kept",
          {},
          [dtype](const json&, at::ScalarType) {
            return std::make_shared<IdentityCodec>(dtype_from_name(dtype));
          }};
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
               .range(8, 1 << 20)},
          [bits](const json& p, at::ScalarType dtype) {
            return std::make_shared<KiviCodec>(bits, p["group"].get<int64_t>(),
                                               p["residual"].get<int64_t>(), dtype);
          }};
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
  return {name, summary, params, [fixed_bits, bits_param](const json& p, at::ScalarType dtype) {
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
          }};
}

GearParams gear_preset(int bits) {
  GearParams g;
  g.bits = bits;
  g.group = 32;
  g.buffer = 20;
  return g;
}

}  // namespace

const std::vector<MethodInfo>& method_catalog() {
  static const std::vector<MethodInfo> catalog = {
      {"full",
       "uncompressed baseline: identity storage in the model dtype (model.dtype), every token "
       "kept",
       {},
       [](const json&, at::ScalarType dtype) { return std::make_shared<IdentityCodec>(dtype); }},
      identity_method("fp32", "float32"),
      identity_method("fp16", "float16"),
      identity_method("bf16", "bfloat16"),
      {"int8",
       "q8_0: symmetric per-token blocks along head_dim, d = amax/127, 8-bit codes + fp16 scale "
       "(8.5 bits per value at group 32), every token kept",
       {group_param()},
       [](const json& p, at::ScalarType) {
         return std::make_shared<BlockQuantCodec>(8, true, p["group"].get<int64_t>());
       }},
      {"int4",
       "q4_1: asymmetric per-token blocks, d = (max-min)/15, 4-bit codes + fp16 scale and min "
       "(5 bits per value at group 32); symmetric: q4_0 (4.5 bits); every token kept",
       {group_param(),
        ParamSpec::boolean("symmetric", false, "q4_0 rule (scale only) instead of q4_1")},
       [](const json& p, at::ScalarType) {
         return std::make_shared<BlockQuantCodec>(4, p["symmetric"].get<bool>(),
                                                  p["group"].get<int64_t>());
       }},
      kivi_method(2),
      kivi_method(4),
      {"fp8",
       "FP8 e4m3 (OCP e4m3fn, saturating at +-448): one byte per value plus one fp32 scale per "
       "KV head (amax of the first tokens / 448), every token kept",
       {ParamSpec::string("scale", "amax",
                          "amax: calibrated on the first tokens a layer sees; fixed: scale_value",
                          {"amax", "fixed"}),
        ParamSpec::number("scale_value", 1.0, "the scale when scale is fixed").range(1e-12, 1e12),
        ParamSpec::number("amax_divisor", 448.0, "scale = amax / amax_divisor").range(1e-3, 1e6),
        ParamSpec::string("granularity", "head", "one scale per KV head or per layer",
                          {"head", "layer"})},
       [](const json& p, at::ScalarType) {
         return std::make_shared<Fp8Codec>(p["scale"], p["scale_value"], p["amax_divisor"],
                                           p["granularity"]);
       }},
      {"int2",
       "asymmetric per-token blocks, d = (max-min)/3, 2-bit codes + fp16 scale and min "
       "(3 bits per value at group 32), every token kept",
       {group_param()},
       [](const json& p, at::ScalarType) {
         return std::make_shared<BlockQuantCodec>(2, false, p["group"].get<int64_t>());
       }},
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
  };
  return catalog;
}

std::vector<std::string> method_names() {
  std::vector<std::string> names;
  for (const auto& m : method_catalog()) names.push_back(m.name);
  return names;
}

nlohmann::json resolve_method(const nlohmann::json& entry, const std::string& path) {
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
                      "unknown method '" + name + "'" +
                          (hint.empty() ? "" : " (did you mean '" + hint + "'?)") +
                          "; known methods: " + join(method_names(), ", "));
  }
  return resolve_params(entry, it->params, path);
}

std::shared_ptr<const Codec> make_codec(const nlohmann::json& method, at::ScalarType model_dtype) {
  const std::string name = method.at("name");
  for (const auto& m : method_catalog()) {
    if (m.name == name) return m.codec(method, model_dtype);
  }
  throw Error("unknown method '" + name + "'; known methods: " + join(method_names(), ", "));
}

std::unique_ptr<KVCache> make_kv_cache(const nlohmann::json& method, int64_t num_layers,
                                       int64_t num_kv_heads, int64_t head_dim, at::ScalarType dtype,
                                       const std::string& backend) {
  return std::make_unique<CompressedKVCache>(make_codec(method, dtype),
                                             attention_backend_from_name(backend), num_layers,
                                             num_kv_heads, head_dim);
}

}  // namespace kvbench
