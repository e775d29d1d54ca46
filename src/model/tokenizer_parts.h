// The stages of a Hugging Face tokenizer pipeline, private to src/model: added-token splitting,
// normalizer, pre-tokenizer, BPE model and decoder, each built from its tokenizer.json section
// and rejecting (one-line kvbench::Error) every type or option it does not implement. The
// `tokenizers` library (Rust) is the reference for every behaviour here; comments name the
// places where we knowingly differ.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace kvbench::tok {

using nlohmann::json;

// --- UTF-8 and the GPT-2 byte-to-unicode table ---------------------------------------------------
bool is_valid_utf8(std::string_view s);
// Decodes the code point at s[i] (s must be valid UTF-8) and advances i past it.
uint32_t next_code_point(std::string_view s, size_t& i);
void append_utf8(std::string& out, uint32_t cp);
// GPT-2's reversible byte -> printable code point map ("Ġ" is the space byte), as UTF-8.
const std::array<std::string, 256>& byte_symbols();
// The inverse: code point -> byte, or -1 for code points outside the map.
int symbol_byte(uint32_t cp);
// Unicode White_Space, as Rust's char::is_whitespace.
bool is_unicode_whitespace(uint32_t cp);
// Rust regex's \w: what tokenizers' single_word treats as part of a word.
bool is_unicode_word_char(uint32_t cp);

// "tokenizer: <source>: <problem>" as a one-line kvbench::Error.
[[noreturn]] void fail(const std::string& source, const std::string& problem);

// --- PCRE2 regex (UTF + UCP, JIT when available) -------------------------------------------------
class Regex {
 public:
  // `literal`: the pattern is a plain string (tokenizer.json {"String": ...}).
  Regex(const std::string& pattern, bool literal, const std::string& source);
  Regex(Regex&& other) noexcept;
  Regex& operator=(Regex&&) = delete;
  ~Regex();
  // Appends the [begin, end) byte ranges of successive non-overlapping matches in `text`
  // (valid UTF-8), leftmost-first as Rust's regex crate and Oniguruma report them.
  void find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const;

 private:
  void* code_ = nullptr;  // pcre2_code_8*
  bool jit_ = false;
  std::string source_;
};

// --- Added tokens
// ----------------------------------------------------------------------------------
struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool special = false, lstrip = false, rstrip = false, single_word = false, normalized = false;
};

// Finds added tokens in raw text, leftmost-longest (the aho-corasick mode `tokenizers` uses),
// with the lstrip/rstrip/single_word rules of AddedVocabulary::find_matches.
class AddedTokenSplitter {
 public:
  struct Segment {
    size_t begin = 0, end = 0;
    int32_t id = -1;  // -1: ordinary text to normalise and tokenise
  };
  explicit AddedTokenSplitter(const std::vector<AddedToken>& tokens);
  std::vector<Segment> split(std::string_view text) const;
  bool empty() const { return tokens_.empty(); }

 private:
  // Longest token starting at text[pos]: (length, index into tokens_) or (0, -1).
  std::pair<size_t, int> longest_at(std::string_view text, size_t pos) const;

  std::vector<AddedToken> tokens_;
  struct Node {
    std::unordered_map<unsigned char, int> next;
    int token = -1;
  };
  std::vector<Node> trie_;
  std::array<bool, 256> first_byte_{};
};

// --- Normalizer
// ------------------------------------------------------------------------------------
// NFC/NFD/NFKC/NFKD (ICU), Prepend, Replace, Sequence of those.
class Normalizer {
 public:
  // Null json: no normalizer (apply is the identity).
  Normalizer(const json& config, const std::string& source);
  void apply(std::string& text) const;
  bool empty() const { return steps_.empty(); }

 private:
  enum class Kind { kUnicode, kPrepend, kReplace };
  struct Step {
    Kind kind = Kind::kUnicode;
    const void* icu = nullptr;  // const icu::Normalizer2* for kUnicode
    std::string a, b;           // Prepend: a; Replace: a -> b (a literal or regex)
    std::shared_ptr<Regex> regex;
  };
  void add(const json& config, const std::string& source);
  std::vector<Step> steps_;
};

// --- Pre-tokenizer
// ---------------------------------------------------------------------------------
struct Piece {
  std::string text;
  bool at_start = false;  // begins at offset 0 of the original input (Metaspace "first")
};

// Split (regex or string; Isolated, Removed, MergedWithPrevious, MergedWithNext), ByteLevel,
// Metaspace, Sequence of those.
class PreTokenizer {
 public:
  PreTokenizer(const json& config, const std::string& source);
  // Splits one normalised segment; appends the final pieces (byte-level mapped when the
  // pipeline has a ByteLevel step) to `out`.
  void run(std::string text, bool at_start, std::vector<Piece>& out) const;
  bool has_byte_level() const { return byte_level_; }

 private:
  enum class Kind { kSplit, kByteLevel, kMetaspace };
  enum class Behavior { kIsolated, kRemoved, kMergedWithPrevious, kMergedWithNext };
  struct Step {
    Kind kind = Kind::kSplit;
    std::shared_ptr<Regex> regex;  // Split pattern; ByteLevel use_regex (GPT-2 pattern)
    Behavior behavior = Behavior::kIsolated;
    bool add_prefix_space = false;
    std::string replacement;  // Metaspace
    std::string prepend_scheme = "always";
    bool split = true;
  };
  void add(const json& config, const std::string& source);
  static void split_pieces(const Regex& regex, Behavior behavior, std::vector<Piece>& pieces);
  std::vector<Step> steps_;
  bool byte_level_ = false;
};

// --- BPE model
// ---------------------------------------------------------------------------------------
class BpeModel {
 public:
  BpeModel(const json& model, const std::string& source);
  // Appends the ids of one pre-token. Merges are applied lowest rank first (ties: leftmost),
  // with a priority queue over a linked list of symbols, as `tokenizers` does; results are
  // cached per pre-token.
  void encode(const std::string& piece, std::vector<int32_t>& out) const;
  std::optional<int32_t> token_to_id(const std::string& token) const;
  // Token strings by id; "" for ids the vocabulary does not use.
  const std::vector<std::string>& tokens() const { return tokens_; }

 private:
  void merge_word(const std::string& piece, std::vector<int32_t>& out) const;

  std::unordered_map<std::string, int32_t> vocab_;
  std::vector<std::string> tokens_;
  struct Merge {
    int32_t rank;
    int32_t new_id;
  };
  std::unordered_map<uint64_t, Merge> merges_;  // key: (left id << 32) | right id
  bool ignore_merges_ = false;
  bool byte_fallback_ = false;
  bool fuse_unk_ = false;
  std::optional<int32_t> unk_id_;
  std::array<int32_t, 256> byte_ids_{};  // "<0xNN>" ids for byte fallback, -1 when absent

  static constexpr size_t kMaxCachedPieceBytes = 256;
  static constexpr size_t kMaxCacheEntries = 1 << 18;
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

// --- Decoder
// ------------------------------------------------------------------------------------------
// ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, Sequence of those; null: tokens
// joined with spaces, as `tokenizers` does without a decoder.
class Decoder {
 public:
  Decoder(const json& config, const std::string& source);
  std::string decode(std::vector<std::string> tokens) const;

 private:
  enum class Kind { kByteLevel, kMetaspace, kReplace, kByteFallback, kFuse, kStrip };
  struct Step {
    Kind kind = Kind::kByteLevel;
    std::string a, b;  // Metaspace: replacement; Replace: pattern -> content; Strip: content
    bool prepend = true;
    int start = 0, stop = 0;
  };
  void add(const json& config, const std::string& source);
  std::vector<Step> steps_;
  bool none_ = false;
};

}  // namespace kvbench::tok
