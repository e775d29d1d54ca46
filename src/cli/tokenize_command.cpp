#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>

#include "kvbench/cli/commands.h"
#include "kvbench/core/error.h"
#include "kvbench/core/text.h"
#include "kvbench/model/chat_format.h"
#include "kvbench/model/tokenizer.h"

namespace kvbench {
namespace {

std::string read_input_file(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))  // (pipes and /dev/stdin are fine)
    throw Error("tokenize: " + path + ": is a directory, not a file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("tokenize: cannot read " + path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

void register_tokenize_command(CLI::App& app, GlobalOptions& global) {
  struct Options {
    std::string model;
    std::string text;
    std::string file;
    bool ids = false;
    std::string chat;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* sub = app.add_subcommand(
      "tokenize", "tokenize text with a model directory's tokenizer.json; print the token count");
  sub->add_option("--model", opt->model, "model directory (tokenizer.json, tokenizer_config.json)")
      ->required();
  auto* text = sub->add_option("--text", opt->text, "the text to tokenize");
  auto* file = sub->add_option("--file", opt->file, "read the text from this file");
  text->excludes(file);
  file->excludes(text);
  sub->add_flag("--ids", opt->ids, "also print the ids as a JSON array");
  sub->add_option("--chat", opt->chat,
                  "wrap the text as one user message plus the generation prompt in this chat "
                  "format: " +
                      join(chat_format_names(), ", "))
      ->check(CLI::IsMember(chat_format_names()));
  sub->callback([opt, text, file, &global] {
    if (text->count() + file->count() != 1) {
      throw CLI::RequiredError("exactly one of --text and --file");
    }
    global.action = [opt] {
      std::string input = opt->text;
      std::optional<Tokenizer> tokenizer;
      // What the options name cannot be read or does not fit: an input error, exit 2 as a
      // usage error is.
      try {
        if (!opt->file.empty()) input = read_input_file(opt->file);
        // Text the tokenizer cannot read (encode refuses it) is an input error like the rest.
        KVB_CHECK(is_valid_utf8(input), "tokenize: ", opt->file.empty() ? "--text" : opt->file,
                  " is not valid UTF-8 text");
        tokenizer = Tokenizer::load(opt->model);
        // A chat prompt carries its own BOS; plain text is tokenised as is (no special tokens
        // added), like tokenizer.encode(text, add_special_tokens=False).
        if (!opt->chat.empty()) {
          input = render_chat(opt->chat, {{"user", input}});
          check_chat_tokens(opt->chat, *tokenizer);
        }
      } catch (const Error& e) {
        spdlog::error("{}", e.what());
        return 2;
      }
      const std::vector<int32_t> ids = tokenizer->encode(input);
      std::cout << ids.size() << "\n";
      if (opt->ids) std::cout << nlohmann::json(ids).dump() << "\n";
      return 0;
    };
  });
}

}  // namespace kvbench
