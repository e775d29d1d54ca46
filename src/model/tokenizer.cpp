// Tokenizer: loads tokenizer.json (+ tokenizer_config.json, generation_config.json) and runs the
// pipeline of `tokenizers`: added tokens split out of the raw text (those marked `normalized`
// out of the normalized text instead), then for every other segment normalizer ->
// pre-tokenizer -> BPE model; the post-processor only with add_special_tokens.
#include "kvbench/model/tokenizer.h"

#include <filesystem>
#include <fstream>
#include <sstream>
#include <unordered_map>

#include "kvbench/core/error.h"
#include "kvbench/core/json_text.h"
#include "tokenizer_parts.h"

namespace kvbench {

using nlohmann::json;
using namespace tok;

namespace {

json read_json(const std::filesystem::path& path, bool required) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    if (required) fail(path.string(), "cannot read the file");
    return nullptr;
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  try {
    return json::parse(buffer.str(), json_depth_limit("tokenizer: " + path.string()));
  } catch (const json::exception& e) {
    std::string what = json_error_text(e);  // without nlohmann's "[json.exception...]" tag
    if (auto nl = what.find('\n'); nl != std::string::npos) what.resize(nl);
    fail(path.string(), "invalid JSON: " + what);
  }
}

std::vector<AddedToken> parse_added_tokens(const json& list, const std::string& source) {
  std::vector<AddedToken> tokens;
  if (list.is_null()) return tokens;
  if (!list.is_array()) fail(source, "added_tokens: expected an array");
  for (const json& t : list) {
    AddedToken a;
    const json& id = t.at("id");
    // (Bounded so that id + 1, the vocabulary's size, cannot overflow.)
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > (1 << 30))
      fail(source, "added_tokens[" + std::to_string(tokens.size()) +
                       "].id: expected an integer in [0, 2^30], got " + brief_json(id));
    a.id = id.get<int32_t>();
    a.content = t.at("content").get<std::string>();
    a.special = t.value("special", false);
    a.lstrip = t.value("lstrip", false);
    a.rstrip = t.value("rstrip", false);
    a.single_word = t.value("single_word", false);
    a.normalized = t.value("normalized", !a.special);
    tokens.push_back(std::move(a));
  }
  return tokens;
}

// As `tokenizers` (AddedVocabulary): a token marked `normalized` is found in the normalized text,
// by its content normalized too (a Llama-2-style Prepend("\u2581") normalizer makes "<x>"
// "\u2581<x>"); the others in the raw text, first.
std::vector<AddedToken> matched_raw(const std::vector<AddedToken>& added) {
  std::vector<AddedToken> out;
  for (const AddedToken& a : added)
    if (!a.normalized) out.push_back(a);
  return out;
}

std::vector<AddedToken> matched_normalized(const std::vector<AddedToken>& added,
                                           const Normalizer& normalizer) {
  std::vector<AddedToken> out;
  for (const AddedToken& a : added) {
    if (!a.normalized) continue;
    out.push_back(a);
    normalizer.apply(out.back().content);
  }
  return out;
}

// make(), with a JSON type error inside it (a number where a string belongs) named by the
// section of tokenizer.json it is in.
template <class F>
auto in_section(const std::string& source, const char* section, F&& make) -> decltype(make()) {
  try {
    return make();
  } catch (const json::exception& e) {
    std::string what = json_error_text(e);
    if (auto nl = what.find('\n'); nl != std::string::npos) what.resize(nl);
    fail(source, std::string(section) + ": malformed: " + what);
  }
}

}  // namespace

struct Tokenizer::Impl {
  Impl(const json& t, const std::string& source_name)
      : source(source_name),
        added(in_section(
            source, "added_tokens",
            [&] { return parse_added_tokens(t.value("added_tokens", json()), source); })),
        splitter(matched_raw(added)),
        normalizer(in_section(source, "normalizer",
                              [&] { return Normalizer(t.value("normalizer", json()), source); })),
        normalized_splitter(matched_normalized(added, normalizer)),
        pre_tokenizer(
            in_section(source, "pre_tokenizer",
                       [&] { return PreTokenizer(t.value("pre_tokenizer", json()), source); })),
        model(in_section(source, "model", [&] { return BpeModel(t.at("model"), source); })),
        decoder(in_section(source, "decoder",
                           [&] { return Decoder(t.value("decoder", json()), source); })) {
    if (t.contains("truncation") && !t["truncation"].is_null()) {
      fail(source, "unsupported truncation (expected null)");
    }
    for (size_t i = 0; i < added.size(); ++i) {
      added_by_id[added[i].id] = i;
      added_by_content[added[i].content] = added[i].id;
    }
    vocab_size = static_cast<int64_t>(model.tokens().size());
    for (const AddedToken& a : added) vocab_size = std::max<int64_t>(vocab_size, a.id + 1);
    in_section(source, "post_processor",
               [&] { parse_post_processor(t.value("post_processor", json())); });
  }

  void parse_post_processor(const json& p) {
    if (p.is_null()) return;
    const std::string type = p.value("type", "");
    if (type == "Sequence") {
      for (const json& child : p.at("processors")) parse_post_processor(child);
    } else if (type == "ByteLevel") {
      // Only adjusts offsets, which we do not report.
    } else if (type == "TemplateProcessing") {
      bool after = false;
      for (const json& item : p.at("single")) {
        if (item.contains("Sequence")) {
          after = true;
          continue;
        }
        const std::string name = item.at("SpecialToken").at("id").get<std::string>();
        const json& ids = p.at("special_tokens").at(name).at("ids");
        for (const json& id : ids) {
          if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= vocab_size)
            fail(source, "post_processor: special token " + name + ": id " + brief_json(id) +
                             " is outside the vocabulary [0, " + std::to_string(vocab_size) + ")");
          (after ? suffix : prefix).push_back(id.get<int32_t>());
        }
      }
    } else {
      fail(source, "unsupported post_processor: " + (type.empty() ? p.dump() : type) +
                       " (supported: TemplateProcessing, ByteLevel, Sequence)");
    }
  }

  std::optional<int32_t> find(const std::string& token) const {
    auto it = added_by_content.find(token);
    if (it != added_by_content.end()) return it->second;
    return model.token_to_id(token);
  }

  std::string source;
  std::vector<AddedToken> added;
  AddedTokenSplitter splitter;  // the added tokens not marked `normalized`
  Normalizer normalizer;
  AddedTokenSplitter normalized_splitter;  // the others, in the normalized text
  PreTokenizer pre_tokenizer;
  BpeModel model;
  Decoder decoder;
  std::vector<int32_t> prefix, suffix;  // post-processor template around the sequence
  std::unordered_map<int32_t, size_t> added_by_id;
  std::unordered_map<std::string, int32_t> added_by_content;
  int64_t vocab_size = 0;
  std::optional<int32_t> bos;
  std::vector<int32_t> eos;
};

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::load(const std::string& dir) {
  const std::filesystem::path root(dir);
  const std::filesystem::path file = root / "tokenizer.json";
  const json t = read_json(file, true);
  return from_json(t, read_json(root / "tokenizer_config.json", false),
                   read_json(root / "generation_config.json", false), file.string());
}

Tokenizer Tokenizer::from_json(const json& tokenizer_json, const json& tokenizer_config,
                               const json& generation_config, const std::string& source) {
  if (!tokenizer_json.is_object()) fail(source, "expected a JSON object");
  if (!tokenizer_json.contains("model")) fail(source, "model: required key missing");
  std::unique_ptr<Impl> impl;
  try {
    impl = std::make_unique<Impl>(tokenizer_json, source);
  } catch (const json::exception& e) {
    std::string what = json_error_text(e);
    if (auto nl = what.find('\n'); nl != std::string::npos) what.resize(nl);
    fail(source, "malformed: " + what);
  }
  // The special tokens come from the files beside tokenizer.json; their errors name them.
  const auto beside = [&](const char* name) {
    return (std::filesystem::path(source).parent_path() / name).string();
  };
  // tokenizer_config's tokens are strings, {"content": ...} objects or null.
  const auto token_id = [&](const json& config, const char* key) -> std::optional<int32_t> {
    if (!config.is_object() || !config.contains(key) || config[key].is_null()) return {};
    const json& v = config[key];
    const bool named =
        v.is_string() || (v.is_object() && v.contains("content") && v["content"].is_string());
    if (!named)
      fail(beside("tokenizer_config.json"),
           std::string(key) +
               ": expected a string, an object with a string \"content\" or null, got " +
               brief_json(v));
    const std::string name = v.is_object() ? v["content"].get<std::string>() : v.get<std::string>();
    auto id = impl->find(name);
    if (!id)
      fail(beside("tokenizer_config.json"), std::string(key) + " not in the vocabulary: " + name);
    return id;
  };
  // generation_config's ids: an integer or a list of them, each inside the vocabulary.
  const auto config_ids = [&](const char* key) {
    std::vector<int32_t> ids;
    if (!generation_config.is_object() || !generation_config.contains(key) ||
        generation_config[key].is_null())
      return ids;
    const json& v = generation_config[key];
    const json list = v.is_array() ? v : json::array({v});
    for (const json& x : list) {
      if (!x.is_number_integer())
        fail(beside("generation_config.json"),
             std::string(key) + ": expected an integer id or a list of them, got " + brief_json(v));
      const int64_t id = x.get<int64_t>();
      if (id < 0 || id >= impl->vocab_size)
        fail(beside("generation_config.json"), std::string(key) + ": id " + std::to_string(id) +
                                                   " is outside the vocabulary [0, " +
                                                   std::to_string(impl->vocab_size) + ")");
      ids.push_back(static_cast<int32_t>(id));
    }
    return ids;
  };
  // transformers (5.x, every fast tokenizer) rebuilds the post-processor's template when
  // tokenizer_config.json names add_bos_token or add_eos_token: its bos_token before the text
  // where add_bos_token is true, its eos_token after it where add_eos_token is true (an absent
  // flag or token: none). A fine-tune with add_eos_token true ends every prompt with EOS though
  // tokenizer.json's template does not. Without either key tokenizer.json's template holds.
  const auto apply_add_special_flags = [&](const json& config) {
    if (!config.is_object() ||
        (!config.contains("add_bos_token") && !config.contains("add_eos_token")))
      return;
    const auto flag = [&](const char* key) {
      if (!config.contains(key) || config[key].is_null()) return false;
      if (!config[key].is_boolean())
        fail(beside("tokenizer_config.json"),
             std::string(key) + ": expected true, false or null, got " + brief_json(config[key]));
      return config[key].get<bool>();
    };
    impl->prefix.clear();
    impl->suffix.clear();
    if (flag("add_bos_token"))
      if (auto id = token_id(config, "bos_token")) impl->prefix.push_back(*id);
    if (flag("add_eos_token"))
      if (auto id = token_id(config, "eos_token")) impl->suffix.push_back(*id);
  };
  impl->bos = token_id(tokenizer_config, "bos_token");
  if (!impl->bos) {
    const auto ids = config_ids("bos_token_id");
    if (!ids.empty()) impl->bos = ids[0];
  }
  impl->eos = config_ids("eos_token_id");
  if (impl->eos.empty()) {
    if (auto id = token_id(tokenizer_config, "eos_token")) impl->eos.push_back(*id);
  }
  apply_add_special_flags(tokenizer_config);
  return Tokenizer(std::move(impl));
}

const std::vector<int32_t>& Tokenizer::special_prefix() const { return impl_->prefix; }
const std::vector<int32_t>& Tokenizer::special_suffix() const { return impl_->suffix; }

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  if (!is_valid_utf8(text)) throw Error("tokenizer: input text is not valid UTF-8");
  std::vector<int32_t> ids;
  if (add_special_tokens) ids = impl_->prefix;
  std::vector<Piece> pieces;
  for (const auto& segment : impl_->splitter.split(text)) {
    if (segment.id >= 0) {
      ids.push_back(segment.id);
      continue;
    }
    std::string part(text.substr(segment.begin, segment.end - segment.begin));
    impl_->normalizer.apply(part);
    if (part.empty()) continue;
    const bool first = segment.begin == 0;
    if (impl_->normalized_splitter.empty()) {  // every real byte-level file
      pieces.clear();
      impl_->pre_tokenizer.run(std::move(part), first, pieces);
      for (const Piece& p : pieces) impl_->model.encode(p.text, ids);
      continue;
    }
    for (const auto& sub : impl_->normalized_splitter.split(part)) {
      if (sub.id >= 0) {
        ids.push_back(sub.id);
        continue;
      }
      pieces.clear();
      impl_->pre_tokenizer.run(part.substr(sub.begin, sub.end - sub.begin), first && sub.begin == 0,
                               pieces);
      for (const Piece& p : pieces) impl_->model.encode(p.text, ids);
    }
  }
  if (add_special_tokens) ids.insert(ids.end(), impl_->suffix.begin(), impl_->suffix.end());
  return ids;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    if (skip_special_tokens && is_special(id)) continue;
    tokens.push_back(id_to_token(id));
  }
  return impl_->decoder.decode(std::move(tokens));
}

int64_t Tokenizer::vocab_size() const { return impl_->vocab_size; }

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  return impl_->find(std::string(token));
}

std::string Tokenizer::id_to_token(int32_t id) const {
  auto it = impl_->added_by_id.find(id);
  if (it != impl_->added_by_id.end()) return impl_->added[it->second].content;
  const auto& tokens = impl_->model.tokens();
  KVB_CHECK(id >= 0 && static_cast<size_t>(id) < tokens.size() && !tokens[id].empty(),
            "tokenizer: ", impl_->source, ": no token with id ", id);
  return tokens[id];
}

bool Tokenizer::is_special(int32_t id) const {
  auto it = impl_->added_by_id.find(id);
  return it != impl_->added_by_id.end() && impl_->added[it->second].special;
}

std::optional<int32_t> Tokenizer::bos_id() const { return impl_->bos; }
const std::vector<int32_t>& Tokenizer::eos_ids() const { return impl_->eos; }

}  // namespace kvbench
