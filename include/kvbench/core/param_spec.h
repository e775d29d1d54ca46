// Declarative parameter tables. Suites and methods describe their parameters once (name, type,
// default, range, help); the same table validates user JSON, fills defaults, and backs
// `kvbench list`. Errors name the key path and what was expected.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace kvbench {

enum class ParamType { kInt, kFloat, kBool, kString, kIntList, kNumberList, kStringList, kObject };

struct ParamSpec {
  std::string name;
  ParamType type = ParamType::kInt;
  nlohmann::json default_value;  // used when the key is absent
  std::string help;
  std::optional<double> min;         // inclusive, for numbers and list elements
  std::optional<double> max;         // inclusive
  std::vector<std::string> choices;  // allowed strings (kString)
  std::vector<int64_t> int_choices;  // allowed integers (kInt and list elements), if non-empty
  bool allow_auto = false;           // also accepts the string "auto"
  bool is_path = false;              // a file or directory: no NUL (the system would cut it)

  // Builders, so tables read as one line per parameter:
  //   ParamSpec::integer("repeats", 20, "timed calls").range(1, 100000)
  static ParamSpec integer(std::string name, nlohmann::json def, std::string help);
  static ParamSpec number(std::string name, nlohmann::json def, std::string help);
  static ParamSpec boolean(std::string name, bool def, std::string help);
  static ParamSpec string(std::string name, nlohmann::json def, std::string help,
                          std::vector<std::string> choices = {});
  // A string naming a file or directory (kString with is_path).
  static ParamSpec path(std::string name, nlohmann::json def, std::string help);
  static ParamSpec int_list(std::string name, nlohmann::json def, std::string help);
  // Lists that may be empty (an empty list switches the feature off).
  static ParamSpec number_list(std::string name, nlohmann::json def, std::string help);
  static ParamSpec string_list(std::string name, nlohmann::json def, std::string help);
  // A JSON object whose keys the owner checks against its own table (a task's parameters).
  static ParamSpec object(std::string name, std::string help);
  ParamSpec range(double lo, double hi) const;
  ParamSpec at_least(double lo) const;
  ParamSpec one_of(std::vector<int64_t> values) const;
  ParamSpec or_auto() const;
};

// "integer in [1, 1000]", "list of integers >= 1 or \"auto\"", ... for errors and `list`.
std::string describe_expected(const ParamSpec& spec);
// JSON type as a user would name it: "string", "integer", "number", "list", "object", ...
std::string json_type_name(const nlohmann::json& value);

// Throws ConfigError("<path>.<key>", "unknown key ...") for a key of `object` not in `known`,
// naming the closest known key and listing all of them.
void check_known_keys(const nlohmann::json& object, const std::vector<std::string>& known,
                      const std::string& path);
// Checks one value against its spec; `path` is the full key path used in the error.
void check_param(const ParamSpec& spec, const nlohmann::json& value, const std::string& path);
// Validates `given` (an object) against `specs` and returns it with defaults filled in.
// Keys listed in `passthrough` (e.g. "name") are copied unchecked.
nlohmann::json resolve_params(const nlohmann::json& given, const std::vector<ParamSpec>& specs,
                              const std::string& path,
                              const std::vector<std::string>& passthrough = {"name"});

// Throws ConfigError(key, "lists V twice ...") when the integer list at one of `keys` repeats a
// value: each value is a point of a suite's grid, measured once (a repeat would give two
// records of one point, of which `compare` keeps one). A key that is not a list ("auto") passes.
void check_listed_once(const nlohmann::json& params, const std::vector<std::string>& keys);

// Joins a key path: join_path("suites[0]", "repeats") == "suites[0].repeats".
std::string join_path(const std::string& path, const std::string& key);

}  // namespace kvbench
