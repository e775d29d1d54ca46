// JSON text as kvbench reads what a person wrote (configs, --set values, training recipes).
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace kvbench {

// Parses `text`. Throws ConfigError "<source>:<line>:<column>: invalid JSON: <problem>" on a
// syntax error, and "<source>: key "<k>" appears twice in one object ..." when an object repeats
// a key: JSON allows it and nlohmann keeps the later value, so one of the two settings would be
// lost without a word. `comments`: // and /* */ comments are allowed.
nlohmann::json parse_json_text(const std::string& text, const std::string& source,
                               bool comments = false);

}  // namespace kvbench
