// Hand-written tokenizer.json files: the sentencepiece-style (Metaspace, byte fallback) path
// with ids derived by hand, both merges layouts, the errors for unsupported kinds, the tiny
// presets' tokenizer and the chat formats.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "kvbench/core/error.h"
#include "kvbench/model/chat_format.h"
#include "kvbench/model/tiny_tokenizer.h"
#include "kvbench/model/tokenizer.h"

namespace kvbench {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;
using Ids = std::vector<int32_t>;

// A Mistral-style file: Metaspace pre-tokenizer (prepend_scheme "first"), byte fallback for
// é and \n, <unk> fused, and the Replace/ByteFallback/Fuse/Strip decoder.
json metaspace_tokenizer() {
  const json vocab = {{"<unk>", 0},   {"<s>", 1},       {"</s>", 2},    {"\u2581", 3},
                      {"h", 4},       {"e", 5},         {"l", 6},       {"o", 7},
                      {"w", 8},       {"r", 9},         {"d", 10},      {"\u2581h", 11},
                      {"ll", 12},     {"\u2581he", 13}, {"llo", 14},    {"\u2581hello", 15},
                      {"<0x0A>", 16}, {"<0xC3>", 17},   {"<0xA9>", 18}, {"\u2581w", 19}};
  const json merges = {"\u2581 h", "l l", "\u2581h e", "ll o", "\u2581he llo", "\u2581 w"};
  json added = json::array();
  for (int id = 0; id < 3; ++id) {
    added.push_back({{"id", id},
                     {"content", id == 0   ? "<unk>"
                                 : id == 1 ? "<s>"
                                           : "</s>"},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  }
  return {{"version", "1.0"},
          {"added_tokens", added},
          {"normalizer", nullptr},
          {"pre_tokenizer",
           {{"type", "Metaspace"},
            {"replacement", "\u2581"},
            {"prepend_scheme", "first"},
            {"split", false}}},
          {"post_processor",
           {{"type", "TemplateProcessing"},
            {"single",
             {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
              {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
            {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}}},
          {"decoder",
           {{"type", "Sequence"},
            {"decoders",
             {{{"type", "Replace"}, {"pattern", {{"String", "\u2581"}}}, {"content", " "}},
              {{"type", "ByteFallback"}},
              {{"type", "Fuse"}},
              {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}}},
          {"model",
           {{"type", "BPE"},
            {"unk_token", "<unk>"},
            {"fuse_unk", true},
            {"byte_fallback", true},
            {"vocab", vocab},
            {"merges", merges}}}};
}

TEST(TokenizerMetaspace, EncodesAsWorkedOutByHand) {
  const Tokenizer tok = Tokenizer::from_json(metaspace_tokenizer());
  // "▁hello▁world": ▁+h (rank 0), l+l (1), ▁h+e (2), ll+o (3), ▁he+llo (4), ▁+w (5).
  EXPECT_EQ(tok.encode("hello world"), (Ids{15, 19, 7, 9, 6, 10}));
  // é and \n are not in the vocabulary: their UTF-8 bytes as <0xNN> tokens.
  EXPECT_EQ(tok.encode("h\u00e9\n"), (Ids{11, 17, 18, 16}));
  // x has neither a token nor a byte token: <unk>, two of them fused into one.
  EXPECT_EQ(tok.encode("hxxw"), (Ids{11, 0, 8}));
  // "first": only the segment at the start of the input gets the ▁ prefix; </s> is split out.
  EXPECT_EQ(tok.encode("hello</s> world"), (Ids{15, 2, 19, 7, 9, 6, 10}));
  EXPECT_EQ(tok.encode("hello", true), (Ids{1, 15}));
  EXPECT_EQ(tok.encode(""), Ids{});
}

TEST(TokenizerMetaspace, DecodesThroughByteFallbackAndStrip) {
  const Tokenizer tok = Tokenizer::from_json(metaspace_tokenizer());
  EXPECT_EQ(tok.decode({15, 19, 7, 9, 6, 10}), "hello world");
  EXPECT_EQ(tok.decode({11, 17, 18, 16}), "h\u00e9\n");
  // A run of byte tokens that is not UTF-8 becomes one U+FFFD per byte, as in `tokenizers`.
  EXPECT_EQ(tok.decode({11, 17, 16}), "h\ufffd\ufffd");
  // Lower-case hex reads as upper-case does (u8::from_str_radix): a vocabulary's "<0x0a>".
  json lower = metaspace_tokenizer();
  lower["model"]["vocab"]["<0x0a>"] = lower["model"]["vocab"]["<0x0A>"];
  lower["model"]["vocab"].erase("<0x0A>");
  EXPECT_EQ(Tokenizer::from_json(lower).decode({11, 16}), "h\n");
  EXPECT_EQ(tok.decode({1, 15, 2}, true), "hello");
  for (const char* text : {"hello world", "h\u00e9\n", "world hello  hello"}) {
    EXPECT_EQ(tok.decode(tok.encode(text)), text);
  }
}

TEST(TokenizerMetaspace, LegacyPrependReplaceNormalizer) {
  // Llama-2 files from older converters: the prefix comes from the normalizer, per segment.
  json t = metaspace_tokenizer();
  t["pre_tokenizer"] = nullptr;
  t["normalizer"] = {
      {"type", "Sequence"},
      {"normalizers",
       {{{"type", "Prepend"}, {"prepend", "\u2581"}},
        {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\u2581"}}}}};
  const Tokenizer tok = Tokenizer::from_json(t);
  EXPECT_EQ(tok.encode("hello world"), (Ids{15, 19, 7, 9, 6, 10}));
  EXPECT_EQ(tok.encode("hello</s> world"), (Ids{15, 2, 3, 19, 7, 9, 6, 10}));
}

TEST(TokenizerBpe, BothMergesLayoutsGiveTheSameIds) {
  json strings = metaspace_tokenizer();
  json pairs = strings;
  pairs["model"]["merges"] = json::array();
  for (const json& m : strings["model"]["merges"]) {
    const std::string s = m.get<std::string>();
    const size_t space = s.find(' ');
    pairs["model"]["merges"].push_back({s.substr(0, space), s.substr(space + 1)});
  }
  const Tokenizer a = Tokenizer::from_json(strings), b = Tokenizer::from_json(pairs);
  for (const char* text : {"hello world", "hello</s>hellow", "h\u00e9llo"}) {
    EXPECT_EQ(a.encode(text), b.encode(text)) << text;
  }
  EXPECT_EQ(b.encode("hello world"), (Ids{15, 19, 7, 9, 6, 10}));
}

TEST(TokenizerBpe, AddedTokenFlags) {
  json t = metaspace_tokenizer();
  t["added_tokens"].push_back({{"id", 20},
                               {"content", "<x>"},
                               {"special", false},
                               {"lstrip", true},
                               {"rstrip", true},
                               {"single_word", false},
                               {"normalized", false}});
  t["added_tokens"].push_back({{"id", 21},
                               {"content", "ll"},
                               {"special", false},
                               {"lstrip", false},
                               {"rstrip", false},
                               {"single_word", true},
                               {"normalized", false}});
  const Tokenizer tok = Tokenizer::from_json(t);
  // lstrip/rstrip swallow the spaces around <x>; the second "hello" is not at the start, so
  // it has no ▁ prefix: h, e, then l+l and ll+o.
  EXPECT_EQ(tok.encode("hello  <x>  hello"), (Ids{15, 20, 4, 5, 14}));
  // single_word: "ll" alone is the added token, inside "hello" it is not.
  EXPECT_EQ(tok.encode("hello ll"), (Ids{15, 3, 21}));
  // A word is what tokenizers' \w matches: "_" is a word character, so "_ll" holds no word
  // "ll" ("_" is <unk>, then l+l).
  EXPECT_EQ(tok.encode("_ll"), (Ids{3, 0, 12}));
  EXPECT_FALSE(tok.is_special(20));
  EXPECT_EQ(tok.vocab_size(), 22);
}

// A token marked `normalized` is found as tokenizers finds it: in the normalized text, by its
// content normalized too. With Llama 2's normalizer (Prepend "\u2581", spaces to "\u2581") "<x>"
// is "\u2581<x>": " <x>" takes its space along, and "he<x>" holds no such token. (Matched in the
// raw text before session 63: "he ", <x>, " w", each normalized alone, gave extra "\u2581"s.)
TEST(TokenizerBpe, ANormalizedAddedTokenIsFoundInTheNormalizedText) {
  json t = metaspace_tokenizer();
  t["normalizer"] = {
      {"type", "Sequence"},
      {"normalizers",
       {{{"type", "Prepend"}, {"prepend", "\u2581"}},
        {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\u2581"}}}}};
  t["pre_tokenizer"] = nullptr;
  t["added_tokens"].push_back({{"id", 20},
                               {"content", "<x>"},
                               {"special", false},
                               {"lstrip", false},
                               {"rstrip", false},
                               {"single_word", false},
                               {"normalized", true}});
  const Tokenizer tok = Tokenizer::from_json(t);
  EXPECT_EQ(tok.encode("he <x> w"), (Ids{13, 20, 19}));  // \u2581he, \u2581<x>, \u2581w
  const Ids glued = tok.encode("he<x>");
  EXPECT_EQ(std::count(glued.begin(), glued.end(), 20), 0) << json(glued).dump();
  // Not normalized: found in the raw text, as before.
  t["added_tokens"].back()["normalized"] = false;
  const Tokenizer raw = Tokenizer::from_json(t);
  EXPECT_EQ(raw.encode("he <x> w"), (Ids{13, 3, 20, 3, 19}));
  EXPECT_EQ(raw.encode("he<x>"), (Ids{13, 20}));
}

// GPT-2 style: ByteLevel with its own regex and add_prefix_space. Byte b has id b; the merges
// "i Ġ" and "Ġ t" show that merges never cross a pre-token boundary.
TEST(TokenizerBpe, Gpt2ByteLevelRegexAndPrefixSpace) {
  json vocab = json::object();
  const std::string space = "\u0120";  // Ġ, the byte-level symbol of ' '
  for (int b = 0; b < 256; ++b) {
    std::string symbol;
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE) {
      symbol = b < 0x80 ? std::string(1, static_cast<char>(b))
                        : std::string{static_cast<char>(0xC0 | (b >> 6)),
                                      static_cast<char>(0x80 | (b & 0x3F))};
    }
    if (b == ' ') symbol = space;
    if (!symbol.empty()) vocab[symbol] = b;
  }
  vocab["i" + space] = 256;
  vocab[space + "t"] = 257;
  const json t = {
      {"added_tokens", json::array()},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"use_regex", true}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", {"i " + space, space + " t"}}}}};
  const Tokenizer tok = Tokenizer::from_json(t);
  // " hi" | " there": "iĠ" spans two pre-tokens, "Ġt" does not.
  EXPECT_EQ(tok.encode("hi there"), (Ids{32, 104, 105, 257, 104, 101, 114, 101}));
  EXPECT_EQ(tok.decode(tok.encode("hi there")), " hi there");  // the prefix space stays
}

TEST(TokenizerBpe, SpecialIdsFromEitherConfig) {
  const json t = metaspace_tokenizer();
  // generation_config.json wins for EOS (Llama-3 instruct lists <|end_of_text|> and <|eot_id|>).
  Tokenizer a =
      Tokenizer::from_json(t, {{"bos_token", {{"content", "<s>"}}}, {"eos_token", "</s>"}},
                           {{"bos_token_id", 1}, {"eos_token_id", {2, 19}}});
  EXPECT_EQ(a.bos_id().value_or(-1), 1);
  EXPECT_EQ(a.eos_ids(), (Ids{2, 19}));
  Tokenizer b = Tokenizer::from_json(t, nullptr, {{"bos_token_id", 1}, {"eos_token_id", 2}});
  EXPECT_EQ(b.bos_id().value_or(-1), 1);
  EXPECT_EQ(b.eos_ids(), Ids{2});
  Tokenizer c = Tokenizer::from_json(t, {{"bos_token", nullptr}, {"eos_token", "</s>"}});
  EXPECT_FALSE(c.bos_id().has_value());
  EXPECT_EQ(c.eos_ids(), Ids{2});
  EXPECT_THROW(Tokenizer::from_json(t, {{"eos_token", "<|nope|>"}}), Error);
}

// transformers 5 rebuilds the template from tokenizer_config's add_bos_token/add_eos_token
// when either is named (an absent one: false); without them tokenizer.json's template holds.
TEST(TokenizerBpe, AddBosAndEosFlagsRebuildTheTemplate) {
  const json t = metaspace_tokenizer();  // template: <s> $A
  const json tokens = {{"bos_token", "<s>"}, {"eos_token", "</s>"}};
  const auto encode = [&](json config) {
    config.update(tokens);
    return Tokenizer::from_json(t, config).encode("hello", true);
  };
  EXPECT_EQ(encode(json::object()), (Ids{1, 15}));
  EXPECT_EQ(encode({{"add_bos_token", true}, {"add_eos_token", true}}), (Ids{1, 15, 2}));
  EXPECT_EQ(encode({{"add_eos_token", true}}), (Ids{15, 2}));
  EXPECT_EQ(encode({{"add_bos_token", false}}), Ids{15});
  EXPECT_EQ(encode({{"add_bos_token", nullptr}}), Ids{15});
  EXPECT_EQ(Tokenizer::from_json(t, {{"add_bos_token", true}, {"bos_token", nullptr}})
                .encode("hello", true),
            Ids{15});  // no bos_token: nothing to add
  EXPECT_EQ(
      Tokenizer::from_json(t, {{"add_eos_token", true}, {"eos_token", "</s>"}}).encode("hello"),
      Ids{15});  // without special tokens nothing is added
  try {
    Tokenizer::from_json(t, {{"add_bos_token", "yes"}}, nullptr, "/m/tokenizer.json");
    ADD_FAILURE() << "a string flag was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(
                  "/m/tokenizer_config.json: add_bos_token: expected true, false or null, got "
                  "\"yes\""),
              std::string::npos)
        << e.what();
  }
}

class TokenizerErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("kvbench_tok_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) +
            "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Writes `t` as tokenizer.json and returns the error of loading the directory.
  std::string load_error(const json& t) {
    std::ofstream(dir_ / "tokenizer.json") << t.dump();
    try {
      Tokenizer::load(dir_.string());
    } catch (const Error& e) {
      const std::string what = e.what();
      EXPECT_EQ(what.find('\n'), std::string::npos) << what;
      return what;
    }
    return "";
  }
  fs::path dir_;
};

// A value of the wrong JSON type is named by the section it is in (before session 63 only the
// JSON library's "type must be string, but is number").
TEST_F(TokenizerErrors, AWrongTypedFieldNamesItsSection) {
  json t = metaspace_tokenizer();
  t["model"]["merges"][0] = {"\u2581", 1};
  EXPECT_NE(load_error(t).find("tokenizer.json: model: malformed: type must be string"),
            std::string::npos)
      << load_error(t);
  t = metaspace_tokenizer();
  t["added_tokens"][0]["content"] = 7;
  EXPECT_NE(load_error(t).find("tokenizer.json: added_tokens: malformed: "), std::string::npos)
      << load_error(t);
  t = metaspace_tokenizer();
  t["decoder"]["decoders"][0]["content"] = false;
  EXPECT_NE(load_error(t).find("tokenizer.json: decoder: malformed: "), std::string::npos)
      << load_error(t);
}

TEST_F(TokenizerErrors, UnsupportedKindsAreRejectedByName) {
  json t = metaspace_tokenizer();
  t["model"]["type"] = "WordPiece";
  EXPECT_NE(load_error(t).find("unsupported tokenizer model: WordPiece"), std::string::npos);
  EXPECT_NE(load_error(t).find((dir_ / "tokenizer.json").string()), std::string::npos);

  t = metaspace_tokenizer();
  t["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", {{{"type", "Whitespace"}}}}};
  EXPECT_NE(load_error(t).find("unsupported pre_tokenizer: Whitespace"), std::string::npos);

  t = metaspace_tokenizer();
  t["normalizer"] = {{"type", "Lowercase"}};
  EXPECT_NE(load_error(t).find("unsupported normalizer: Lowercase"), std::string::npos);

  t = metaspace_tokenizer();
  t["decoder"] = {{"type", "WordPiece"}, {"prefix", "##"}};
  EXPECT_NE(load_error(t).find("unsupported decoder: WordPiece"), std::string::npos);

  t = metaspace_tokenizer();
  t["post_processor"] = {{"type", "BertProcessing"}};
  EXPECT_NE(load_error(t).find("unsupported post_processor: BertProcessing"), std::string::npos);

  t = metaspace_tokenizer();
  t["model"]["continuing_subword_prefix"] = "##";
  EXPECT_NE(load_error(t).find("unsupported BPE option: continuing_subword_prefix"),
            std::string::npos);

  t = metaspace_tokenizer();
  t["pre_tokenizer"] = {{"type", "Split"},
                        {"pattern", {{"Regex", "\\s+"}}},
                        {"behavior", "Contiguous"},
                        {"invert", false}};
  EXPECT_NE(load_error(t).find("unsupported pre_tokenizer: Split behavior Contiguous"),
            std::string::npos);
}

TEST_F(TokenizerErrors, BrokenFilesAreOneLine) {
  json t = metaspace_tokenizer();
  t["model"]["merges"].push_back("\u2581 zz");
  EXPECT_NE(load_error(t).find("merges[6]: token not in the vocabulary"), std::string::npos);
  t = metaspace_tokenizer();
  t["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}};
  EXPECT_NE(load_error(t).find("cannot compile pre-tokenizer regex"), std::string::npos);
  // The library loaded at run time is named (an older one than the headers fails here).
  EXPECT_NE(load_error(t).find("(PCRE2 10."), std::string::npos) << load_error(t);
  t = metaspace_tokenizer();  // a key missing: named without nlohmann's exception tag
  t["model"].erase("merges");
  EXPECT_NE(load_error(t).find("tokenizer.json: model: malformed: key 'merges' not found"),
            std::string::npos)
      << load_error(t);
  // A null or an object where a list belongs, an id that is not an integer: refused by key,
  // not read as no merges, no pre-tokenizers or id 4.
  t = metaspace_tokenizer();
  t["model"]["merges"] = nullptr;
  EXPECT_NE(load_error(t).find("model.merges: expected an array, got null"), std::string::npos)
      << load_error(t);
  t = metaspace_tokenizer();
  t["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", nullptr}};
  EXPECT_NE(load_error(t).find("pre_tokenizer.pretokenizers (a Sequence's): expected an array"),
            std::string::npos)
      << load_error(t);
  t = metaspace_tokenizer();
  t["decoder"] = {{"type", "Sequence"}, {"decoders", json::object()}};
  EXPECT_NE(load_error(t).find("decoder.decoders (a Sequence's): expected an array, got object"),
            std::string::npos)
      << load_error(t);
  t = metaspace_tokenizer();
  t["model"]["vocab"]["h"] = 4.7;
  EXPECT_NE(load_error(t).find("model.vocab: the id of h is 4.7, not an integer"),
            std::string::npos)
      << load_error(t);
  std::ofstream(dir_ / "tokenizer.json") << "{not json";
  try {
    Tokenizer::load(dir_.string());
    ADD_FAILURE() << "expected an Error";
  } catch (const Error& e) {
    // The parser's words, without its "[json.exception.parse_error.101]" tag.
    const std::string what = e.what();
    EXPECT_NE(what.find("tokenizer.json: invalid JSON: parse error at line 1"), std::string::npos)
        << what;
    EXPECT_EQ(what.find("json.exception"), std::string::npos) << what;
  }
  // Nesting that printing or copying would recurse through until the stack overflows.
  std::ofstream(dir_ / "tokenizer.json")
      << R"({"normalizer": )" << std::string(300000, '[') << std::string(300000, ']') << "}";
  try {
    Tokenizer::load(dir_.string());
    ADD_FAILURE() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer.json: values nested more than 64 levels"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(Tokenizer::load((dir_ / "absent").string()), Error);
  const Tokenizer tok = Tokenizer::from_json(metaspace_tokenizer());
  EXPECT_THROW(tok.encode("\xff\xfe"), Error);  // not UTF-8
  EXPECT_THROW(tok.decode({99}), Error);
}

// Ids and special tokens of the wrong type or out of range are errors naming the file and key,
// not a json exception, a silently truncated id or a vocabulary sized by one lying entry.
TEST_F(TokenizerErrors, IdsAndSpecialTokensAreChecked) {
  json t = metaspace_tokenizer();
  t["model"]["vocab"]["zz"] = 1000000000;
  EXPECT_NE(load_error(t).find("model.vocab: id 1000000000 of zz is outside [0, "),
            std::string::npos)
      << load_error(t);
  t = metaspace_tokenizer();
  t["added_tokens"] = {{{"id", -3}, {"content", "<x>"}, {"special", true}}};
  EXPECT_NE(load_error(t).find("added_tokens[0].id: expected an integer in [0, 2^30], got -3"),
            std::string::npos)
      << load_error(t);
  t["added_tokens"][0]["id"] = 2147483647;
  EXPECT_NE(load_error(t).find("added_tokens[0].id"), std::string::npos);
  const std::string tokenizer_config = (dir_ / "tokenizer_config.json").string(),
                    generation_config = (dir_ / "generation_config.json").string();
  for (const json& bad : {json(1), json{{"content", 5}}, json::array({"<s>"})}) {
    std::ofstream(tokenizer_config) << json{{"bos_token", bad}}.dump();
    EXPECT_NE(load_error(metaspace_tokenizer())
                  .find("tokenizer: " + tokenizer_config + ": bos_token: expected a string"),
              std::string::npos)
        << load_error(metaspace_tokenizer());
  }
  fs::remove(tokenizer_config);
  for (const json& bad : {json::array({"2"}), json("2"), json(2.5)}) {
    std::ofstream(generation_config) << json{{"eos_token_id", bad}}.dump();
    EXPECT_NE(load_error(metaspace_tokenizer())
                  .find("tokenizer: " + generation_config +
                        ": eos_token_id: expected an integer id or a list of them"),
              std::string::npos)
        << load_error(metaspace_tokenizer());
  }
  for (const json& bad : {json(-1), json::array({1, 100000})}) {
    std::ofstream(generation_config) << json{{"eos_token_id", bad}}.dump();
    EXPECT_NE(load_error(metaspace_tokenizer()).find("eos_token_id: id "), std::string::npos)
        << load_error(metaspace_tokenizer());
    EXPECT_NE(load_error(metaspace_tokenizer()).find("is outside the vocabulary [0, "),
              std::string::npos);
  }
  std::ofstream(generation_config) << json{{"eos_token_id", json::array({1, 2})}}.dump();
  EXPECT_EQ(load_error(metaspace_tokenizer()), "");
}

TEST(TokenizerTiny, LoadsRoundTripsAndStaysUnder512) {
  const json t = tiny_tokenizer_json(512);
  EXPECT_EQ(t, tiny_tokenizer_json(512));  // deterministic
  const Tokenizer tok = Tokenizer::from_json(t, tiny_tokenizer_config());
  EXPECT_EQ(tok.vocab_size(), 512);
  EXPECT_EQ(tok.bos_id().value_or(-1), 1);
  EXPECT_EQ(tok.eos_ids(), Ids{2});
  const std::string english = "The cache grows with the length of the context and the batch.";
  for (const std::string text : {english, std::string(""), std::string("  tabs\tand\nnewlines\r\n"),
                                 std::string("caf\u00e9 \u65e5\u672c \U0001F600 12345"),
                                 std::string("<|begin_of_text|>hi<|eot_id|>")}) {
    const Ids ids = tok.encode(text);
    for (int32_t id : ids) EXPECT_TRUE(id >= 0 && id < 512) << id;
    EXPECT_EQ(tok.decode(ids), text);
  }
  EXPECT_LT(tok.encode(english).size(), english.size() / 2);  // the merges do compress English
  EXPECT_EQ(tok.encode("hi", true).front(), 1);
  EXPECT_EQ(tok.encode(render_chat("llama3", {{"user", "hi"}})).front(), 1);
  EXPECT_NO_THROW(check_chat_tokens("llama3", tok));
  EXPECT_NO_THROW(check_chat_tokens("chatml", tok));
}

TEST(ChatFormat, ATokenizerWithoutTheMarkersIsRefused) {
  // The sentencepiece-style test tokenizer has no chat tokens: the template would be text.
  const Tokenizer tok = Tokenizer::from_json(metaspace_tokenizer());
  try {
    check_chat_tokens("chatml", tok);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("chat format chatml: <|im_start|> is not one token of "
                                         "the model's tokenizer"),
              std::string::npos)
        << e.what();
  }
}

// The byte-level piece of byte `b` (GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for
// themselves, the others for 256, 257, ... in order).
std::string byte_piece(unsigned b) {
  unsigned n = 0, cp = 0;
  for (unsigned c = 0; c < 256; ++c) {
    const bool printable = (c >= 33 && c <= 126) || (c >= 161 && c <= 172) || c >= 174;
    if (c == b) {
      cp = printable ? c : 256 + n;
      break;
    }
    n += printable ? 0 : 1;
  }
  std::string out;
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return out;
}

// Invalid UTF-8 decodes as Rust's from_utf8_lossy does: one U+FFFD per maximal subpart, each
// continuation checked against its lead byte's range (E0 takes A0-BF second, ED 80-9F, F0
// 90-BF, F4 80-8F); C0, C1 and F5-FF stand alone.
TEST(TokenizerTiny, InvalidUtf8DecodesToRustsReplacements) {
  const Tokenizer tok = Tokenizer::from_json(tiny_tokenizer_json(264), tiny_tokenizer_config());
  auto decode = [&](std::vector<unsigned> bytes) {
    std::vector<int32_t> ids;
    for (unsigned b : bytes) ids.push_back(*tok.token_to_id(byte_piece(b)));
    return tok.decode(ids);
  };
  const std::string r = "\ufffd";
  EXPECT_EQ(decode({0xE0, 0x80}), r + r);                      // overlong: E0 needs A0-BF next
  EXPECT_EQ(decode({0xED, 0xA0, 0x80}), r + r + r);            // a surrogate
  EXPECT_EQ(decode({0xC0, 0xAF}), r + r);                      // C0 never starts a character
  EXPECT_EQ(decode({0xF4, 0x90, 0x80, 0x80}), r + r + r + r);  // past U+10FFFF
  EXPECT_EQ(decode({0xF5, 0x41}), r + "A");
  EXPECT_EQ(decode({0xE0, 0xA0}), r);                    // one character cut off
  EXPECT_EQ(decode({0xF0, 0x9F, 0x98, 0x41}), r + "A");  // likewise, then a letter
  EXPECT_EQ(decode({0xE0, 0xA0, 0x80}), "\u0800");       // well formed
  EXPECT_EQ(decode({0x61, 0xE2, 0x82, 0xAC}), "a\u20ac");
}

TEST(TokenizerTiny, WrittenNextToTheCheckpointFiles) {
  const fs::path dir = fs::temp_directory_path() / "kvbench_tiny_tokenizer_test";
  write_tiny_tokenizer(dir.string(), 512);
  const Tokenizer tok = Tokenizer::load(dir.string());
  EXPECT_EQ(tok.decode(tok.encode("hello world")), "hello world");
  fs::remove_all(dir);
}

TEST(TokenizerChat, Llama3RendersLikeTheJinjaTemplate) {
  const std::vector<ChatMessage> chat = {{"system", " Be brief. "}, {"user", "Hi!\n"}};
  EXPECT_EQ(render_chat("llama3", chat),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(render_chat("llama3", {{"user", "x"}}, false),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nx<|eot_id|>");
  // BOS comes with the first message, as the template's loop adds it.
  EXPECT_EQ(render_chat("llama3", {}, true), "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(TokenizerChat, ChatmlRendersLikeQwen3) {
  const std::vector<ChatMessage> chat = {{"system", "Be brief."},
                                         {"user", "Hi"},
                                         {"assistant", "<think>\nhmm\n</think>\n\nHello!"},
                                         {"user", "Bye"}};
  EXPECT_EQ(render_chat("chatml", chat),
            "<|im_start|>system\nBe brief.<|im_end|>\n"
            "<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello!<|im_end|>\n"  // reasoning before the last query: dropped
            "<|im_start|>user\nBye<|im_end|>\n"
            "<|im_start|>assistant\n");
  // After the last user query the reasoning is kept, in canonical form.
  EXPECT_EQ(render_chat("chatml", {{"user", "Q"}, {"assistant", "<think>r</think>A"}}, false),
            "<|im_start|>user\nQ<|im_end|>\n"
            "<|im_start|>assistant\n<think>\nr\n</think>\n\nA<|im_end|>\n");
  // Consecutive tool results are one user turn.
  EXPECT_EQ(render_chat("chatml", {{"user", "Q"}, {"tool", "1"}, {"tool", "2"}}, false),
            "<|im_start|>user\nQ<|im_end|>\n<|im_start|>user\n<tool_response>\n1\n"
            "</tool_response>\n<tool_response>\n2\n</tool_response><|im_end|>\n");
}

TEST(TokenizerChat, UnknownFormatsAndRolesFail) {
  EXPECT_THROW(render_chat("vicuna", {{"user", "x"}}), Error);
  EXPECT_THROW(render_chat("chatml", {{"narrator", "x"}}), Error);
}

}  // namespace
}  // namespace kvbench

namespace kvbench {
namespace {

TEST(ChatFormat, DetectedFromTheTemplateSource) {
  // Fragments of the real templates' Jinja source.
  EXPECT_EQ(detect_chat_format(
                "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"),
            "llama3");
  EXPECT_EQ(
      detect_chat_format("{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' }}"),
      "chatml");
  EXPECT_EQ(detect_chat_format("{{ bos_token }}[INST] {{ message['content'] }} [/INST]"), "");
  // Llama 3.1+ and Qwen2.5 add a system turn of their own: other formats, not llama3/chatml.
  EXPECT_EQ(detect_chat_format("{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}"
                               "{{- \"Cutting Knowledge Date: December 2023\\n\" }}"),
            "llama3.1");
  EXPECT_EQ(detect_chat_format("{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba "
                               "Cloud. You are a helpful assistant.<|im_end|>\\n' }}"),
            "qwen2.5");
  // Qwen2's and Qwen2.5-Math's default system turns are rendered by none of them; Qwen3's
  // system turn (the message's content) is ChatML's.
  EXPECT_EQ(detect_chat_format("{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>"
                               "\\n' }}"),
            "");
  EXPECT_EQ(detect_chat_format("{{- '<|im_start|>system\\nPlease reason step by step.<|im_end|>"
                               "\\n' }}"),
            "");
  EXPECT_EQ(detect_chat_format("{{- '<|im_start|>system\\n' + messages[0].content + "
                               "'<|im_end|>\\n' }}{{- '<|im_start|>' + message.role }}"),
            "chatml");
  // QwQ's and Qwen3's Thinking-2507 templates open every reply with <think> themselves, which
  // none of the formats writes.
  EXPECT_EQ(detect_chat_format("{{- '<|im_start|>system\\n' + messages[0].content + "
                               "'<|im_end|>\\n' }}{%- if add_generation_prompt %}{{- "
                               "'<|im_start|>assistant\\n<think>\\n' }}{%- endif %}"),
            "");
}

// A message that is not UTF-8 is refused by name (Python's strip read past its end).
TEST(ChatFormat, InvalidUtf8IsRefused) {
  for (const std::string& format : chat_format_names()) {
    try {
      render_chat(format, {{"user", "\xE2\x20"}});
      FAIL() << format;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("a user message is not valid UTF-8 text"),
                std::string::npos)
          << e.what();
    }
  }
}

TEST(ChatFormat, Llama31AndQwen25RenderTheirSystemTurns) {
  EXPECT_EQ(render_chat("llama3.1", {{"user", " Hi "}}),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
            "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(render_chat("llama3.1", {{"system", "Be brief. "}, {"user", "Hi"}}, false),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
            "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nBe brief."
            "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>");
  EXPECT_THROW(render_chat("llama3.1", {{"tool", "1"}}), Error);  // tools are not rendered
  EXPECT_EQ(render_chat("qwen2.5", {{"user", "Hi"}}),
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
            "assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  // A system message replaces the default; an assistant turn's <think> text stays as it is.
  EXPECT_EQ(
      render_chat("qwen2.5", {{"system", "S"}, {"user", "Q"}, {"assistant", "<think>r</think>A"}},
                  false),
      "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n"
      "<|im_start|>assistant\n<think>r</think>A<|im_end|>\n");
}

}  // namespace
}  // namespace kvbench
