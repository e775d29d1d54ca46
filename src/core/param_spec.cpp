#include "kvbench/core/param_spec.h"

#include <algorithm>
#include <cmath>

#include "kvbench/core/error.h"
#include "kvbench/core/json_text.h"
#include "kvbench/core/text.h"

namespace kvbench {
namespace {

using nlohmann::json;

std::string number_text(double v) {
  if (v == std::floor(v) && std::fabs(v) < 1e15) return std::to_string(static_cast<int64_t>(v));
  return json(v).dump();
}

std::string range_text(const ParamSpec& s) {
  if (!s.int_choices.empty()) {
    std::vector<std::string> parts;
    for (auto c : s.int_choices) parts.push_back(std::to_string(c));
    return " in {" + join(parts, ", ") + "}";
  }
  if (s.min && s.max) return " in [" + number_text(*s.min) + ", " + number_text(*s.max) + "]";
  if (s.min) return " >= " + number_text(*s.min);
  if (s.max) return " <= " + number_text(*s.max);
  return "";
}

bool in_range(const ParamSpec& s, double v) {
  if (!s.int_choices.empty()) {
    // (Checked before the cast: a double past int64's range does not convert.)
    const auto [lo, hi] = std::minmax_element(s.int_choices.begin(), s.int_choices.end());
    if (v < static_cast<double>(*lo) || v > static_cast<double>(*hi)) return false;
    return std::find(s.int_choices.begin(), s.int_choices.end(), static_cast<int64_t>(v)) !=
           s.int_choices.end();
  }
  return (!s.min || v >= *s.min) && (!s.max || v <= *s.max);
}

[[noreturn]] void fail(const ParamSpec& s, const json& value, const std::string& path) {
  throw ConfigError(path, "expected " + describe_expected(s) + ", got " + brief_json(value));
}

// A NUL would cut a path short where the system reads it.
void refuse_nul(const json& value, const std::string& path) {
  if (value.get_ref<const std::string&>().find('\0') != std::string::npos)
    throw ConfigError(path, "contains a NUL character (\\u0000), got " + brief_json(value));
}

ParamSpec make(std::string name, ParamType type, json def, std::string help) {
  ParamSpec s;
  s.name = std::move(name);
  s.type = type;
  s.default_value = std::move(def);
  s.help = std::move(help);
  return s;
}

}  // namespace

ParamSpec ParamSpec::integer(std::string name, json def, std::string help) {
  return make(std::move(name), ParamType::kInt, std::move(def), std::move(help));
}
ParamSpec ParamSpec::number(std::string name, json def, std::string help) {
  return make(std::move(name), ParamType::kFloat, std::move(def), std::move(help));
}
ParamSpec ParamSpec::boolean(std::string name, bool def, std::string help) {
  return make(std::move(name), ParamType::kBool, def, std::move(help));
}
ParamSpec ParamSpec::string(std::string name, json def, std::string help,
                            std::vector<std::string> choices) {
  ParamSpec s = make(std::move(name), ParamType::kString, std::move(def), std::move(help));
  s.choices = std::move(choices);
  return s;
}
ParamSpec ParamSpec::path(std::string name, json def, std::string help) {
  ParamSpec s = make(std::move(name), ParamType::kString, std::move(def), std::move(help));
  s.is_path = true;
  return s;
}
ParamSpec ParamSpec::int_list(std::string name, json def, std::string help) {
  return make(std::move(name), ParamType::kIntList, std::move(def), std::move(help));
}
ParamSpec ParamSpec::number_list(std::string name, json def, std::string help) {
  return make(std::move(name), ParamType::kNumberList, std::move(def), std::move(help));
}
ParamSpec ParamSpec::string_list(std::string name, json def, std::string help) {
  return make(std::move(name), ParamType::kStringList, std::move(def), std::move(help));
}
ParamSpec ParamSpec::object(std::string name, std::string help) {
  return make(std::move(name), ParamType::kObject, json::object(), std::move(help));
}
ParamSpec ParamSpec::range(double lo, double hi) const {
  ParamSpec s = *this;
  s.min = lo;
  s.max = hi;
  return s;
}
ParamSpec ParamSpec::at_least(double lo) const {
  ParamSpec s = *this;
  s.min = lo;
  return s;
}
ParamSpec ParamSpec::one_of(std::vector<int64_t> values) const {
  ParamSpec s = *this;
  s.int_choices = std::move(values);
  return s;
}
ParamSpec ParamSpec::or_auto() const {
  ParamSpec s = *this;
  s.allow_auto = true;
  return s;
}

std::string json_type_name(const json& value) {
  switch (value.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::boolean:
      return "boolean";
    case json::value_t::string:
      return "string";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
      return "integer";
    case json::value_t::number_float:
      return "number";
    case json::value_t::array:
      return "list";
    case json::value_t::object:
      return "object";
    default:
      return "value";
  }
}

std::string describe_expected(const ParamSpec& s) {
  std::string text;
  switch (s.type) {
    case ParamType::kInt:
      text = "integer" + range_text(s);
      break;
    case ParamType::kFloat:
      text = "number" + range_text(s);
      break;
    case ParamType::kBool:
      text = "true or false";
      break;
    case ParamType::kString: {
      std::vector<std::string> quoted;
      for (const auto& c : s.choices) quoted.push_back("\"" + c + "\"");
      text = s.choices.empty() ? "string" : "one of " + join(quoted, ", ");
      break;
    }
    case ParamType::kIntList:
      text = "non-empty list of integers" + range_text(s);
      break;
    case ParamType::kNumberList:
      text = "list of numbers" + range_text(s);
      break;
    case ParamType::kStringList:
      text = "list of strings";
      break;
    case ParamType::kObject:
      text = "object";
      break;
  }
  if (s.allow_auto) text += " or \"auto\"";
  return text;
}

void check_listed_once(const json& params, const std::vector<std::string>& keys) {
  for (const std::string& key : keys) {
    if (!params[key].is_array()) continue;
    std::vector<int64_t> v = params[key].get<std::vector<int64_t>>();
    std::sort(v.begin(), v.end());
    const auto twice = std::adjacent_find(v.begin(), v.end());
    if (twice != v.end())
      throw ConfigError(key, "lists " + std::to_string(*twice) +
                                 " twice (each value is a point of the grid, measured once)");
  }
}

void check_known_keys(const json& object, const std::vector<std::string>& known,
                      const std::string& path) {
  for (const auto& item : object.items()) {
    if (std::find(known.begin(), known.end(), item.key()) != known.end()) continue;
    std::string hint = closest_match(item.key(), known);
    std::string msg = "unknown key";
    if (!hint.empty()) msg += " (did you mean '" + hint + "'?)";
    msg += "; valid keys: " + join(known, ", ");
    throw ConfigError(join_path(path, key_text(item.key())), msg);
  }
}

void check_param(const ParamSpec& s, const json& value, const std::string& path) {
  if (s.allow_auto && value == "auto") return;
  switch (s.type) {
    case ParamType::kInt:
      if (!value.is_number_integer() || !in_range(s, value.get<double>())) fail(s, value, path);
      return;
    case ParamType::kFloat:
      if (!value.is_number() || !std::isfinite(value.get<double>()) ||
          !in_range(s, value.get<double>())) {
        fail(s, value, path);
      }
      return;
    case ParamType::kBool:
      if (!value.is_boolean()) fail(s, value, path);
      return;
    case ParamType::kString:
      if (!value.is_string()) fail(s, value, path);
      if (s.is_path) refuse_nul(value, path);
      if (!s.choices.empty() && std::find(s.choices.begin(), s.choices.end(),
                                          value.get<std::string>()) == s.choices.end()) {
        const std::string hint = closest_match(value.get<std::string>(), s.choices);
        if (hint.empty()) fail(s, value, path);
        throw ConfigError(path, "expected " + describe_expected(s) + ", got " + brief_json(value) +
                                    " (did you mean \"" + hint + "\"?)");
      }
      return;
    case ParamType::kIntList:
      if (!value.is_array() || value.empty()) fail(s, value, path);
      for (size_t i = 0; i < value.size(); ++i) {
        const json& v = value[i];
        if (!v.is_number_integer() || !in_range(s, v.get<double>())) {
          throw ConfigError(path + "[" + std::to_string(i) + "]",
                            "expected integer" + range_text(s) + ", got " + brief_json(v));
        }
      }
      return;
    case ParamType::kNumberList:
    case ParamType::kStringList: {
      if (!value.is_array()) fail(s, value, path);
      const bool numbers = s.type == ParamType::kNumberList;
      for (size_t i = 0; i < value.size(); ++i) {
        const json& v = value[i];
        const bool ok = numbers ? v.is_number() && std::isfinite(v.get<double>()) &&
                                      in_range(s, v.get<double>())
                                : v.is_string();
        if (!ok) {
          throw ConfigError(
              path + "[" + std::to_string(i) + "]",
              std::string(numbers ? "expected number" + range_text(s) : "expected string") +
                  ", got " + brief_json(v));
        }
      }
      return;
    }
    case ParamType::kObject:
      if (!value.is_object()) fail(s, value, path);
      return;
  }
}

json resolve_params(const json& given, const std::vector<ParamSpec>& specs, const std::string& path,
                    const std::vector<std::string>& passthrough) {
  if (!given.is_object()) {
    throw ConfigError(path, "expected an object, got " + json_type_name(given));
  }
  std::vector<std::string> known = passthrough;
  for (const auto& s : specs) known.push_back(s.name);
  check_known_keys(given, known, path);
  json out = json::object();
  for (const auto& key : passthrough) {
    if (given.contains(key)) out[key] = given[key];
  }
  for (const auto& s : specs) {
    if (given.contains(s.name)) {
      check_param(s, given[s.name], join_path(path, s.name));
      out[s.name] = given[s.name];
    } else {
      out[s.name] = s.default_value;
    }
    // 4 and 4.0 are the same setting, alone or in a list: store numbers as doubles so cell ids
    // agree (a rate list written [1, 4, 16] is the default [1.0, 4.0, 16.0]).
    json& v = out[s.name];
    if (s.type == ParamType::kFloat && v.is_number()) v = v.get<double>();
    if (s.type == ParamType::kNumberList && v.is_array()) {
      for (json& e : v)
        if (e.is_number()) e = e.get<double>();
    }
  }
  return out;
}

std::string join_path(const std::string& path, const std::string& key) {
  return path.empty() ? key : path + "." + key;
}

}  // namespace kvbench
