// JSON text as kvbench reads what a person wrote (configs, --set values, training recipes).
#pragma once

#include <exception>
#include <string>

#include <nlohmann/json.hpp>

namespace kvbench {

// Parses `text`. Throws ConfigError "<source>:<line>:<column>: invalid JSON: <problem>" on a
// syntax error, and "<source>: key "<k>" appears twice in one object ..." when an object repeats
// a key: JSON allows it and nlohmann keeps the later value, so one of the two settings would be
// lost without a word. `comments`: // and /* */ comments are allowed.
// Nesting deeper than kMaxJsonDepth is refused too: a config is a few levels deep, and printing
// a value nested tens of thousands of levels (an error message's "got ...") would overflow the
// stack.
nlohmann::json parse_json_text(const std::string& text, const std::string& source,
                               bool comments = false);
constexpr int kMaxJsonDepth = 64;

// Throws Error "<source>: values nested more than kMaxJsonDepth levels deep".
[[noreturn]] void throw_nested_too_deep(const std::string& source);

// A parser callback for json::parse (or ordered_json's, `Json`) over a file kvbench did not
// write (a checkpoint's headers and configs, tokenizer.json, datasets, traces): it refuses
// values nested more than kMaxJsonDepth levels deep (throw_nested_too_deep). nlohmann parses
// without recursion, but copying or printing a value recurses once per level, so a 600 KB
// header of nested brackets would overflow the stack; real files are a few levels deep.
template <class Json = nlohmann::json>
typename Json::parser_callback_t json_depth_limit(const std::string& source) {
  return [source](int depth, typename Json::parse_event_t, Json&) {
    if (depth > kMaxJsonDepth) throw_nested_too_deep(source);
    return true;
  };
}

// An exception's message without nlohmann's "[json.exception.type_error.302] " tag (other
// messages as they are), for errors a person reads.
std::string json_error_text(const std::exception& e);

// `value` as JSON text for an error message: at most `max_bytes` bytes, cut between UTF-8
// characters and ending "..." when cut (a string's then followed by its length), nested values past
// a few levels as [...] /
// {...}, never recursing deeper.
std::string brief_json(const nlohmann::json& value, size_t max_bytes = 100);

// A key or name from the user's input as an error message shows it: as it is when it is at
// most 100 bytes of text without control characters, else as brief_json of it (quoted, escaped,
// cut; bytes that are not UTF-8 as \xNN), so a message stays one short line.
std::string key_text(const std::string& key);

}  // namespace kvbench
