#include "kvbench/model/model_config.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "kvbench/core/error.h"
#include "kvbench/core/json_text.h"
#include "kvbench/core/text.h"

namespace kvbench {
namespace {

using nlohmann::json;

// Sizes past any real model's, so that no product of them in a shape overflows int64 (a KV
// token of 4096 layers x 1024 KV heads x 1024 dims, or an embedding of 2^24 x 2^17, stays far
// below 2^63; estimates over batches and contexts are clamped where they are formed): real ones
// stay well inside (Llama-3-405B: 126 layers, hidden 16384, FFN 53248, 128 heads of 128 dims;
// Gemma: a 262144 vocabulary).
constexpr int64_t kMaxLayers = 4096;
constexpr int64_t kMaxVocab = int64_t{1} << 24;
constexpr int64_t kMaxHidden = int64_t{1} << 17;
constexpr int64_t kMaxIntermediate = int64_t{1} << 20;
constexpr int64_t kMaxHeads = 1024;
constexpr int64_t kMaxHeadDim = 1024;
constexpr int64_t kMaxPositions = int64_t{1} << 30;

struct Reader {
  const json& j;
  std::string source;

  [[noreturn]] void fail(const std::string& key, const std::string& problem) const {
    throw Error("model config: " + source + ": " + key + ": " + problem);
  }
  bool has(const std::string& key) const { return j.contains(key) && !j[key].is_null(); }
  int64_t integer(const std::string& key, std::optional<int64_t> def = {}, int64_t min = 1,
                  int64_t max = std::numeric_limits<int64_t>::max()) const {
    if (!has(key)) {
      if (!def) fail(key, "required key missing");
      return *def;
    }
    if (!j[key].is_number_integer()) fail(key, "expected an integer, got " + brief_json(j[key]));
    const int64_t v = j[key].get<int64_t>();
    if (v < min)
      fail(key, "expected an integer >= " + std::to_string(min) + ", got " + brief_json(j[key]));
    if (v > max)
      fail(key, "expected an integer <= " + std::to_string(max) + ", got " + brief_json(j[key]));
    return v;
  }
  double number(const std::string& key, double def) const {
    if (!has(key)) return def;
    if (!j[key].is_number() || !(j[key].get<double>() > 0)) {
      fail(key, "expected a positive number, got " + brief_json(j[key]));
    }
    return j[key].get<double>();
  }
  bool boolean(const std::string& key, bool def) const {
    if (!has(key)) return def;
    if (!j[key].is_boolean()) fail(key, "expected true or false, got " + brief_json(j[key]));
    return j[key].get<bool>();
  }
  std::string string(const std::string& key, const std::string& def) const {
    if (!has(key)) return def;
    if (!j[key].is_string()) fail(key, "expected a string, got " + brief_json(j[key]));
    return j[key].get<std::string>();
  }
  // eos_token_id may be one id or a list of them.
  std::vector<int64_t> ids(const std::string& key) const {
    std::vector<int64_t> out;
    if (!has(key)) return out;
    const json& v = j[key];
    if (v.is_number_integer()) return {v.get<int64_t>()};
    if (!v.is_array()) fail(key, "expected an id or a list of ids, got " + brief_json(v));
    for (const auto& x : v) {
      if (!x.is_number_integer()) fail(key, "expected integer ids, got " + brief_json(v));
      out.push_back(x.get<int64_t>());
    }
    return out;
  }
};

// Each architecture, its model_type, and the defaults transformers' config class gives keys a
// config.json leaves out (where they differ by family).
struct ArchEntry {
  const char* name;
  const char* model_type;
  Architecture arch;
  int64_t max_position_embeddings;
  // When the key is left out (0: num_attention_heads); an explicit null is always
  // num_attention_heads, as the config classes say.
  int64_t num_key_value_heads;
  int64_t head_dim;  // 0: hidden_size / num_attention_heads
  // A window when the key is left out (0: none). MistralConfig has no use_sliding_window
  // key: its window applies whenever it is set; Qwen2/Qwen3 need use_sliding_window.
  int64_t sliding_window;
  bool window_needs_flag;
};
constexpr ArchEntry kArchitectures[] = {
    {"LlamaForCausalLM", "llama", Architecture::kLlama, 2048, 0, 0, 0, false},
    {"MistralForCausalLM", "mistral", Architecture::kMistral, 4096 * 32, 8, 0, 4096, false},
    {"Qwen2ForCausalLM", "qwen2", Architecture::kQwen2, 32768, 32, 0, 4096, true},
    {"Qwen3ForCausalLM", "qwen3", Architecture::kQwen3, 32768, 32, 128, 4096, true}};

const ArchEntry& arch_entry(Architecture arch) {
  for (const auto& a : kArchitectures)
    if (a.arch == arch) return a;
  throw Error("model config: unknown architecture");
}

// transformers picks the model class by model_type (architectures is a label); kvbench by
// architectures, which every checkpoint it loads carries, or by model_type without it. The two
// must name the same family: a Llama class over a qwen2 config would run without its biases.
Architecture parse_architecture(const Reader& r) {
  std::vector<std::string> supported, types;
  for (const auto& a : kArchitectures) supported.push_back(a.name), types.push_back(a.model_type);
  const ArchEntry* by_type = nullptr;
  const std::string type = r.string("model_type", "");
  for (const auto& a : kArchitectures)
    if (type == a.model_type) by_type = &a;
  if (!r.has("architectures") && by_type != nullptr) return by_type->arch;
  if (!r.has("architectures") || !r.j["architectures"].is_array() ||
      r.j["architectures"].size() != 1 || !r.j["architectures"][0].is_string()) {
    r.fail("architectures", "expected a list with one architecture name (or a model_type: " +
                                join(types, ", ") + ")");
  }
  const std::string name = r.j["architectures"][0];
  for (const auto& a : kArchitectures) {
    if (name != a.name) continue;
    if (!type.empty() && type != a.model_type)
      r.fail("model_type", "is '" + type + "' but architectures names " + name + " (model_type '" +
                               a.model_type + "'); keep one family");
    return a.arch;
  }
  throw Error("model config: " + r.source + ": unsupported architecture: " + name +
              " (supported: " + join(supported, ", ") + ")");
}

// The scaling described by the object at `key` ("rope_scaling", or transformers 5's
// "rope_parameters", which carries the same keys beside rope_theta).
RopeScaling parse_rope_scaling(const Reader& r, const std::string& key) {
  RopeScaling s;
  if (!r.has(key)) return s;
  const json& j = r.j[key];
  if (!j.is_object()) r.fail(key, "expected an object or null, got " + brief_json(j));
  Reader sr{j, r.source};
  // transformers renamed "type" to "rope_type"; checkpoints carry either.
  s.type = sr.string("rope_type", sr.string("type", "default"));
  if (s.type == "default") return s;
  if (s.type != "linear" && s.type != "llama3") {
    r.fail(key,
           "unsupported " + key + " type: " + s.type + " (supported: default, linear, llama3)");
  }
  s.factor = sr.number("factor", 0);
  if (!(s.factor > 0)) r.fail(key + ".factor", "required for " + s.type + " scaling");
  if (s.type == "llama3") {
    // Required, as transformers requires them: a guessed default would move every frequency.
    for (const char* k :
         {"low_freq_factor", "high_freq_factor", "original_max_position_embeddings"})
      if (!sr.has(k)) r.fail(key + "." + k, "required for llama3 scaling");
    s.low_freq_factor = sr.number("low_freq_factor", 1.0);
    s.high_freq_factor = sr.number("high_freq_factor", 4.0);
    s.original_max_position_embeddings =
        sr.integer("original_max_position_embeddings", {}, 1, kMaxPositions);
    if (!(s.high_freq_factor > s.low_freq_factor)) {
      r.fail(key, "high_freq_factor must exceed low_freq_factor");
    }
  }
  return s;
}

bool same_scaling(const RopeScaling& a, const RopeScaling& b) {
  return a.type == b.type && a.factor == b.factor && a.low_freq_factor == b.low_freq_factor &&
         a.high_freq_factor == b.high_freq_factor &&
         a.original_max_position_embeddings == b.original_max_position_embeddings;
}

// rope_theta and the scaling: top-level keys (transformers 4), or "rope_parameters"
// (transformers 5 writes theta and the scaling there, and no top-level keys). Both may be
// present; where both give a value they must agree, as a checkpoint whose two halves disagree
// has no one meaning. Per-layer-type parameters (models with layer_types) and a partial rotary
// factor are refused: every supported architecture rotates whole heads with one theta.
void read_rope(const Reader& r, ModelConfig& c) {
  c.rope_theta = r.number("rope_theta", 10000.0);
  c.rope_scaling = parse_rope_scaling(r, "rope_scaling");
  if (!r.has("rope_parameters")) return;
  const json& p = r.j["rope_parameters"];
  if (!p.is_object()) r.fail("rope_parameters", "expected an object or null, got " + brief_json(p));
  for (const auto& [k, v] : p.items())
    if (v.is_object())
      r.fail("rope_parameters." + k,
             "per-layer-type RoPE parameters are not supported (one set for every layer)");
  const Reader pr{p, r.source + ": rope_parameters"};
  if (pr.has("partial_rotary_factor") && pr.number("partial_rotary_factor", 1.0) != 1.0)
    r.fail("rope_parameters.partial_rotary_factor",
           "only 1 is supported (RoPE over the whole head), got " +
               brief_json(p["partial_rotary_factor"]));
  if (pr.has("rope_theta")) {
    const double theta = pr.number("rope_theta", 0);
    if (r.has("rope_theta") && theta != c.rope_theta)
      r.fail("rope_parameters.rope_theta", "is " + brief_json(p["rope_theta"]) +
                                               " but the top-level rope_theta is " +
                                               brief_json(r.j["rope_theta"]) + "; keep one");
    c.rope_theta = theta;
  }
  const RopeScaling s = parse_rope_scaling(r, "rope_parameters");
  // No type given: nothing said about the scaling. A type, even "default", must agree.
  if (!pr.has("rope_type") && !pr.has("type")) return;
  if (c.rope_scaling.type != "default" && !same_scaling(s, c.rope_scaling))
    r.fail("rope_parameters", "its scaling and rope_scaling's differ; keep one");
  c.rope_scaling = s;
}

// eos_token_id and bos_token_id, each inside the vocabulary: an id the model can never produce
// would let every generation run to its cap unnoticed.
void read_special_ids(const Reader& r, ModelConfig& c) {
  const std::vector<int64_t> eos = r.ids("eos_token_id");
  if (!eos.empty()) c.eos_token_ids = eos;
  if (r.has("bos_token_id")) c.bos_token_id = r.integer("bos_token_id", {}, 0);
  auto check = [&](const char* key, int64_t id) {
    if (id < 0 || id >= c.vocab_size) {
      r.fail(key, "id " + std::to_string(id) + " is outside the vocabulary [0, " +
                      std::to_string(c.vocab_size) + ")");
    }
  };
  for (int64_t id : c.eos_token_ids) check("eos_token_id", id);
  if (c.bos_token_id) check("bos_token_id", *c.bos_token_id);
}

// Qwen2/Qwen3 window only the layers at and past max_window_layers (default 28), or those
// layer_types marks "sliding_attention" where the config lists them, as transformers does.
int64_t windowed_layers(const Reader& r, const ModelConfig& c) {
  if (!r.has("layer_types"))
    return std::max<int64_t>(0, c.num_layers - r.integer("max_window_layers", 28, 0));
  const json& types = r.j["layer_types"];
  if (!types.is_array() || static_cast<int64_t>(types.size()) != c.num_layers)
    r.fail("layer_types", "expected a list of num_hidden_layers (" + std::to_string(c.num_layers) +
                              ") layer types");
  int64_t windowed = 0;
  for (const json& t : types) {
    if (t == "sliding_attention")
      ++windowed;
    else if (t != "full_attention")
      r.fail("layer_types",
             "expected \"full_attention\" or \"sliding_attention\", got " + brief_json(t));
  }
  return windowed;
}

}  // namespace

const char* architecture_name(Architecture arch) {
  for (const auto& a : kArchitectures) {
    if (a.arch == arch) return a.name;
  }
  return "unknown";
}

at::ScalarType dtype_from_name(const std::string& name) {
  if (name == "float32") return at::kFloat;
  if (name == "float16") return at::kHalf;
  if (name == "bfloat16") return at::kBFloat16;
  throw Error("unsupported dtype '" + name + "' (supported: float32, float16, bfloat16)");
}

const char* dtype_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat:
      return "float32";
    case at::kHalf:
      return "float16";
    case at::kBFloat16:
      return "bfloat16";
    default:
      return "unsupported";
  }
}

ModelConfig parse_model_config(const json& j, const std::string& source) {
  if (!j.is_object()) throw Error("model config: " + source + ": expected a JSON object");
  Reader r{j, source};
  ModelConfig c;
  c.arch = parse_architecture(r);
  c.architecture = architecture_name(c.arch);
  c.vocab_size = r.integer("vocab_size", {}, 1, kMaxVocab);
  c.hidden_size = r.integer("hidden_size", {}, 1, kMaxHidden);
  c.intermediate_size = r.integer("intermediate_size", {}, 1, kMaxIntermediate);
  // (A count in the millions would also be allocated per layer before any size check could
  // say it does not fit.)
  c.num_layers = r.integer("num_hidden_layers", {}, 1, kMaxLayers);
  c.num_heads = r.integer("num_attention_heads", {}, 1, kMaxHeads);
  const ArchEntry& family = arch_entry(c.arch);
  const bool kv_heads_named = j.contains("num_key_value_heads");  // (null: num_heads)
  c.num_kv_heads = r.integer(
      "num_key_value_heads",
      family.num_key_value_heads > 0 && !kv_heads_named ? family.num_key_value_heads : c.num_heads,
      1, kMaxHeads);
  if (c.num_heads % c.num_kv_heads != 0) {
    r.fail("num_key_value_heads", "must divide num_attention_heads (" +
                                      std::to_string(c.num_heads) + "), got " +
                                      std::to_string(c.num_kv_heads));
  }
  // A family default head_dim (Qwen3's 128) holds whatever hidden_size / heads is.
  const bool explicit_head_dim = r.has("head_dim") || family.head_dim > 0;
  if (!explicit_head_dim && c.hidden_size % c.num_heads != 0) {
    r.fail("hidden_size", "not divisible by num_attention_heads and no head_dim given");
  }
  c.head_dim =
      r.integer("head_dim", family.head_dim > 0 ? family.head_dim : c.hidden_size / c.num_heads, 1,
                kMaxHeadDim);
  if (c.head_dim % 2 != 0) r.fail("head_dim", "must be even for RoPE");
  c.max_position_embeddings =
      r.integer("max_position_embeddings", family.max_position_embeddings, 1, kMaxPositions);
  // transformers reads a top-level partial_rotary_factor for every family.
  if (r.has("partial_rotary_factor") && r.number("partial_rotary_factor", 1.0) != 1.0)
    r.fail("partial_rotary_factor", "only 1 is supported (RoPE over the whole head), got " +
                                        brief_json(j["partial_rotary_factor"]));
  if (r.has("quantization_config")) {
    const json& q = j["quantization_config"];
    r.fail("quantization_config",
           "quantized checkpoints are not supported (quant_method " +
               (q.is_object() && q.contains("quant_method") ? brief_json(q["quant_method"])
                                                            : std::string("not given")) +
               "); give the unquantized weights");
  }
  read_rope(r, c);
  c.rms_norm_eps = r.number("rms_norm_eps", 1e-6);
  c.tie_word_embeddings = r.boolean("tie_word_embeddings", false);
  const std::string act = r.string("hidden_act", "silu");
  if (act != "silu") r.fail("hidden_act", "unsupported activation '" + act + "' (supported: silu)");
  switch (c.arch) {
    case Architecture::kLlama:
      c.attention_bias = c.o_proj_bias = r.boolean("attention_bias", false);
      c.mlp_bias = r.boolean("mlp_bias", false);
      break;
    case Architecture::kMistral:
      break;
    case Architecture::kQwen2:  // q/k/v always carry biases, o_proj never
      c.attention_bias = true;
      break;
    case Architecture::kQwen3:
      c.attention_bias = c.o_proj_bias = r.boolean("attention_bias", false);
      c.qk_norm = true;
      break;
  }
  // The family's window when the key is left out; null: none. LlamaConfig has no window at
  // all: a sliding_window key in a Llama config is ignored, as transformers ignores it.
  if (c.arch != Architecture::kLlama &&
      (!family.window_needs_flag || r.boolean("use_sliding_window", false))) {
    if (!j.contains("sliding_window") && family.sliding_window > 0)
      c.sliding_window = family.sliding_window;
    else if (r.has("sliding_window"))
      c.sliding_window = r.integer("sliding_window");
  }
  if (family.window_needs_flag && c.sliding_window && windowed_layers(r, c) == 0)
    c.sliding_window.reset();
  // transformers >= 4.56 writes "dtype" where older versions wrote "torch_dtype".
  const std::string dtype_key = r.has("torch_dtype") || !r.has("dtype") ? "torch_dtype" : "dtype";
  c.torch_dtype = r.string(dtype_key, "float32");
  try {
    dtype_from_name(c.torch_dtype);
  } catch (const Error& e) {
    r.fail(dtype_key, e.what());
  }
  read_special_ids(r, c);
  return c;
}

namespace {
json read_json_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) throw Error("model config: " + path.string() + ": cannot be read");
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return json::parse(ss.str(), json_depth_limit("model config: " + path.string()));
  } catch (const json::parse_error& e) {
    throw Error("model config: " + path.string() + ": invalid JSON at byte " +
                std::to_string(e.byte));
  } catch (const json::exception& e) {  // e.g. a number past a double's range
    throw Error("model config: " + path.string() + ": invalid JSON (" + json_error_text(e) + ")");
  }
}
}  // namespace

ModelConfig load_model_config(const std::string& dir) {
  namespace fs = std::filesystem;
  const fs::path config_path = fs::path(dir) / "config.json";
  if (!fs::is_directory(dir))
    throw Error("model: " + dir +
                (fs::exists(dir) ? ": not a directory (a checkpoint is a directory)"
                                 : ": no such directory"));
  if (!fs::is_regular_file(config_path)) {
    throw Error("model: " + dir +
                ": no config.json (expected a Hugging Face checkpoint directory)");
  }
  ModelConfig c = parse_model_config(read_json_file(config_path), config_path.string());
  const fs::path gen_path = fs::path(dir) / "generation_config.json";
  if (fs::is_regular_file(gen_path)) {
    json g = read_json_file(gen_path);
    read_special_ids(Reader{g, gen_path.string()}, c);
  }
  return c;
}

at::Tensor rope_inverse_frequencies(const ModelConfig& c) {
  const int64_t half = c.head_dim / 2;
  at::Tensor inv = at::empty({half}, at::kDouble);
  auto a = inv.accessor<double, 1>();
  const RopeScaling& s = c.rope_scaling;
  for (int64_t i = 0; i < half; ++i) {
    double f = 1.0 / std::pow(c.rope_theta, static_cast<double>(2 * i) / c.head_dim);
    if (s.type == "linear") {
      f /= s.factor;  // positions divided by the factor
    } else if (s.type == "llama3") {
      // Long wavelengths are slowed by `factor`, short ones kept, a smooth blend between.
      const double old_ctx = static_cast<double>(s.original_max_position_embeddings);
      const double wavelen = 2 * M_PI / f;
      const double low_wavelen = old_ctx / s.low_freq_factor;
      const double high_wavelen = old_ctx / s.high_freq_factor;
      if (wavelen > low_wavelen) {
        f /= s.factor;
      } else if (wavelen >= high_wavelen) {
        const double smooth =
            (old_ctx / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        f = (1 - smooth) * f / s.factor + smooth * f;
      }
    }
    a[i] = f;
  }
  return inv;
}

json ModelConfig::to_json() const {
  json j = {{"architecture", architecture},     {"vocab_size", vocab_size},
            {"hidden_size", hidden_size},       {"intermediate_size", intermediate_size},
            {"num_layers", num_layers},         {"num_heads", num_heads},
            {"num_kv_heads", num_kv_heads},     {"head_dim", head_dim},
            {"rope_theta", rope_theta},         {"rope_scaling", rope_scaling.type},
            {"rms_norm_eps", rms_norm_eps},     {"tie_word_embeddings", tie_word_embeddings},
            {"attention_bias", attention_bias}, {"qk_norm", qk_norm},
            {"torch_dtype", torch_dtype}};
  j["sliding_window"] = sliding_window ? json(*sliding_window) : json(nullptr);
  return j;
}

}  // namespace kvbench
