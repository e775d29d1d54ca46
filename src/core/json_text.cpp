#include "kvbench/core/json_text.h"

#include <algorithm>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "kvbench/core/error.h"
#include "kvbench/core/text.h"

namespace kvbench {
namespace {

using nlohmann::json;

// 1-based line and column of byte offset `pos` in `text`.
std::pair<size_t, size_t> line_column(const std::string& text, size_t pos) {
  size_t line = 1, column = 1;
  for (size_t i = 0; i < pos && i < text.size(); ++i) {
    if (text[i] == '\n') {
      ++line;
      column = 1;
    } else {
      ++column;
    }
  }
  return {line, column};
}

// nlohmann's messages start with "[json.exception.parse_error.101] parse error at line 3,
// column 5: "; keep only the part after the location.
std::string parse_problem(const std::string& what) {
  auto colon = what.find(": ");
  return colon == std::string::npos ? what : what.substr(colon + 2);
}

void brief_into(const json& v, std::string& out, size_t max_bytes, int depth) {
  if (out.size() > max_bytes) return;
  if (!v.is_structured()) {
    out += v.dump();
    return;
  }
  const bool array = v.is_array();
  if (v.empty() || depth >= 4) {
    out += v.empty() ? (array ? "[]" : "{}") : (array ? "[...]" : "{...}");
    return;
  }
  out += array ? '[' : '{';
  bool first = true;
  for (auto it = v.begin(); it != v.end() && out.size() <= max_bytes; ++it, first = false) {
    if (!first) out += ',';
    if (!array) out += json(it.key()).dump() + ':';
    brief_into(*it, out, max_bytes, depth + 1);
  }
  out += array ? ']' : '}';
}

}  // namespace

std::string json_error_text(const std::exception& e) {
  const std::string what = e.what();
  const size_t tag = what.find("] ");
  return what.rfind("[json.exception.", 0) == 0 && tag != std::string::npos ? what.substr(tag + 2)
                                                                            : what;
}

std::string key_text(const std::string& key) {
  const bool plain =
      key.size() <= 100 && is_valid_utf8(key) && std::none_of(key.begin(), key.end(), [](char c) {
        const auto b = static_cast<unsigned char>(c);
        return b < 0x20 || b == 0x7f;
      });
  return plain ? key : brief_json(json(printable_utf8(key)));
}

std::string brief_json(const json& value, size_t max_bytes) {
  std::string out;
  brief_into(value, out, max_bytes, 0);
  if (out.size() <= max_bytes) return out;
  size_t cut = max_bytes > 3 ? max_bytes - 3 : 0;  // with "...": max_bytes; not inside a character
  while (cut > 0 && (static_cast<unsigned char>(out[cut]) & 0xC0) == 0x80) --cut;
  const size_t full = value.is_string() ? value.get_ref<const std::string&>().size() : 0;
  return out.substr(0, cut) + "..." +
         (value.is_string() ? " (a string of " + std::to_string(full) + " bytes)" : "");
}

namespace {

std::string nested_too_deep(const std::string& source) {
  return source + ": values nested more than " + std::to_string(kMaxJsonDepth) + " levels deep";
}

}  // namespace

void throw_nested_too_deep(const std::string& source) { throw Error(nested_too_deep(source)); }

json parse_json_text(const std::string& text, const std::string& source, bool comments) {
  // A key given twice in one object would silently keep the later value (JSON allows the
  // text, nlohmann keeps the last); the author meant one of them.
  std::vector<std::set<std::string>> keys;  // per open object
  const json::parser_callback_t no_duplicates = [&](int depth, json::parse_event_t event,
                                                    json& parsed) {
    if (depth > kMaxJsonDepth) throw ConfigError("", nested_too_deep(source));
    if (event == json::parse_event_t::object_start) keys.emplace_back();
    if (event == json::parse_event_t::object_end && !keys.empty()) keys.pop_back();
    if (event == json::parse_event_t::key && !keys.empty() &&
        !keys.back().insert(parsed.get<std::string>()).second)
      throw ConfigError("", source + ": key \"" + parsed.get<std::string>() +
                                "\" appears twice in one object (the later value would "
                                "silently win); keep one");
    return true;
  };
  try {
    return json::parse(text, no_duplicates, /*allow_exceptions=*/true, comments);
  } catch (const json::parse_error& e) {
    // byte is 1-based and points one past the offending character.
    auto [line, column] = line_column(text, e.byte > 0 ? e.byte - 1 : 0);
    throw ConfigError("", source + ":" + std::to_string(line) + ":" + std::to_string(column) +
                              ": invalid JSON: " + parse_problem(e.what()));
  } catch (const json::exception& e) {  // e.g. out_of_range.406: a number past a double's range
    throw ConfigError("", source + ": invalid JSON: " + json_error_text(e));
  }
}

}  // namespace kvbench
