// The tiny presets' tokenizer: a Llama-3 style byte-level BPE whose merges are trained here, at
// make-model time, on a fixed text (deterministic: the same file on every machine).
#include "kvbench/model/tiny_tokenizer.h"

#include <filesystem>
#include <map>

#include "kvbench/core/error.h"
#include "kvbench/report/atomic_file.h"
#include "tokenizer_parts.h"

namespace kvbench {
namespace {

using nlohmann::json;

constexpr const char* kSpecials[] = {
    "<|pad|>",           "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
    "<|end_header_id|>", "<|eot_id|>",        "<|im_start|>",    "<|im_end|>"};
constexpr int kNumSpecials = 8;

// Llama-3's pre-tokenizer regex.
constexpr const char* kPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// Training text: plain English about the project's subject, so prompts in tests and examples
// get realistic token counts.
constexpr const char* kTrainingText =
    "A language model generates text one token at a time. For every new token, the attention "
    "layers read the keys and values of all the tokens that came before it, so a serving "
    "engine keeps them in memory: this is the key-value cache. The cache grows with the length "
    "of the context and with the number of requests in a batch, and for long contexts it is "
    "larger than the model weights themselves. Compression methods make the cache smaller. "
    "Some keep only the tokens that receive the most attention and evict the others; some "
    "store the keys and values in fewer bits; some merge similar tokens or share them between "
    "layers. Each method saves memory, but what does it cost? It may lose accuracy on long "
    "documents, it may slow down the decoding of each token, and it may change how long the "
    "answers are. The only honest way to know is to measure all of these things together, on "
    "the same engine, with the same prompts, and to keep every sample rather than only the "
    "mean. This benchmark does that. It runs a model over a set of tasks, with and without "
    "each method, and it writes a report that says how much memory was used, how many tokens "
    "were processed per second, how long the first token took, and whether the answers were "
    "still right. The quick brown fox jumps over the lazy dog. She said that they would "
    "arrive at ten o'clock, and they did; we were there when they came in. There are 365 days "
    "in a year, 24 hours in a day and 60 minutes in an hour. What is the passkey? The passkey "
    "is 71432. Remember it, because you will be asked for it at the end of the document.\n"
    "The user asked a question and the assistant answered it.\n";

}  // namespace

json tiny_tokenizer_json(int vocab_size) {
  const int first_merge = kNumSpecials + 256;
  KVB_CHECK(vocab_size >= first_merge, "tiny tokenizer: vocab_size must be at least ", first_merge,
            ", got ", vocab_size);
  json pre_tokenizer = {{"type", "Sequence"},
                        {"pretokenizers",
                         {{{"type", "Split"},
                           {"pattern", {{"Regex", kPattern}}},
                           {"behavior", "Isolated"},
                           {"invert", false}},
                          {{"type", "ByteLevel"},
                           {"add_prefix_space", false},
                           {"trim_offsets", true},
                           {"use_regex", false}}}}};

  std::vector<std::string> names;  // token string by id
  std::map<std::string, int> vocab;
  for (const char* s : kSpecials) names.push_back(s);
  for (const std::string& b : tok::byte_symbols()) names.push_back(b);
  for (int id = 0; id < static_cast<int>(names.size()); ++id) vocab[names[id]] = id;

  // Words of the training text (byte-level mapped pre-tokens) as symbol id sequences.
  tok::PreTokenizer pre(pre_tokenizer, "tiny tokenizer");
  std::vector<tok::Piece> pieces;
  pre.run(kTrainingText, true, pieces);
  std::map<std::string, int> counts;
  for (const auto& p : pieces) ++counts[p.text];
  std::vector<std::pair<std::vector<int>, int>> words;
  for (const auto& [text, count] : counts) {
    std::vector<int> ids;
    for (size_t i = 0; i < text.size();) {
      const size_t begin = i;
      tok::next_code_point(text, i);
      ids.push_back(vocab.at(text.substr(begin, i - begin)));
    }
    words.emplace_back(std::move(ids), count);
  }

  json merges = json::array();
  while (static_cast<int>(names.size()) < vocab_size) {
    // The most frequent adjacent pair; ties go to the smallest ids (std::map order).
    std::map<std::pair<int, int>, int> pairs;
    for (const auto& [ids, count] : words) {
      for (size_t i = 0; i + 1 < ids.size(); ++i) pairs[{ids[i], ids[i + 1]}] += count;
    }
    std::pair<int, int> best{-1, -1};
    // Pairs seen once count too: the text is short, and the vocabulary must fill up.
    int best_count = 0;
    for (const auto& [pair, count] : pairs) {
      if (count > best_count) best = pair, best_count = count;
    }
    if (best.first < 0) break;
    const std::string merged = names[best.first] + names[best.second];
    auto [it, inserted] = vocab.emplace(merged, static_cast<int>(names.size()));
    if (inserted) names.push_back(merged);
    merges.push_back({names[best.first], names[best.second]});
    for (auto& [ids, count] : words) {
      std::vector<int> out;
      for (size_t i = 0; i < ids.size(); ++i) {
        if (i + 1 < ids.size() && ids[i] == best.first && ids[i + 1] == best.second) {
          out.push_back(it->second);
          ++i;
        } else {
          out.push_back(ids[i]);
        }
      }
      ids = std::move(out);
    }
  }

  json vocab_json = json::object();
  for (int id = 0; id < static_cast<int>(names.size()); ++id) vocab_json[names[id]] = id;
  json added = json::array();
  for (int id = 0; id < kNumSpecials; ++id) {
    added.push_back({{"id", id},
                     {"content", kSpecials[id]},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  }
  return {{"version", "1.0"},
          {"truncation", nullptr},
          {"padding", nullptr},
          {"added_tokens", added},
          {"normalizer", nullptr},
          {"pre_tokenizer", pre_tokenizer},
          {"post_processor",
           {{"type", "TemplateProcessing"},
            {"single",
             {{{"SpecialToken", {{"id", kSpecials[1]}, {"type_id", 0}}}},
              {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
            {"pair",
             {{{"SpecialToken", {{"id", kSpecials[1]}, {"type_id", 0}}}},
              {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
              {{"SpecialToken", {{"id", kSpecials[1]}, {"type_id", 1}}}},
              {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}}},
            {"special_tokens",
             {{kSpecials[1], {{"id", kSpecials[1]}, {"ids", {1}}, {"tokens", {kSpecials[1]}}}}}}}},
          {"decoder",
           {{"type", "ByteLevel"},
            {"add_prefix_space", true},
            {"trim_offsets", true},
            {"use_regex", true}}},
          {"model",
           {{"type", "BPE"},
            {"dropout", nullptr},
            {"unk_token", nullptr},
            {"continuing_subword_prefix", nullptr},
            {"end_of_word_suffix", nullptr},
            {"fuse_unk", false},
            {"byte_fallback", false},
            {"ignore_merges", false},
            {"vocab", vocab_json},
            {"merges", merges}}}};
}

json tiny_tokenizer_config() {
  return {{"tokenizer_class", "PreTrainedTokenizerFast"},
          {"bos_token", kSpecials[1]},
          {"eos_token", kSpecials[2]},
          {"pad_token", kSpecials[0]},
          {"add_bos_token", true},
          {"clean_up_tokenization_spaces", false},
          {"model_max_length", 4096}};
}

void write_tiny_tokenizer(const std::string& dir, int vocab_size) {
  const std::filesystem::path root(dir);
  write_file_atomically(root / "tokenizer.json", tiny_tokenizer_json(vocab_size).dump(2) + "\n");
  write_file_atomically(root / "tokenizer_config.json", tiny_tokenizer_config().dump(2) + "\n");
}

}  // namespace kvbench
