#include "kvbench/cli/config_loader.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "kvbench/core/error.h"
#include "kvbench/core/json_text.h"
#include "kvbench/core/param_spec.h"
#include "kvbench/core/text.h"

namespace kvbench {
namespace {

using nlohmann::json;

// "0", "12": not "01" (a padded index names no other element, and says something else was
// meant), and not past nine digits (no list is that long; std::stoul would overflow).
bool is_index(const std::string& s) {
  return !s.empty() && s.size() <= 9 && s.find_first_not_of("0123456789") == std::string::npos &&
         (s.size() == 1 || s[0] != '0');
}

// The value may come from the grid, not the file: say which combination.
ConfigError in_grid_point(const ConfigError& e, const json& point) {
  const std::string prefix = "config: " + e.key_path() + ": ", what = e.what();
  return ConfigError(e.key_path(),
                     (what.rfind(prefix, 0) == 0 ? what.substr(prefix.size()) : what) +
                         " (in grid point " + brief_json(point) + ")");
}

}  // namespace

json read_config_file(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    throw ConfigError("", path + (std::filesystem::is_directory(path, ec)
                                      ? ": is a directory, expected a JSON config file"
                                  : std::filesystem::exists(path, ec)
                                      ? ": not a regular file, expected a JSON config file"
                                      : ": no such file"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError("", path + ": cannot be read");
  std::ostringstream buf;
  buf << in.rdbuf();
  json config = parse_json_text(buf.str(), path);
  // Said before any --set applies (which would name a key of a list, or make null an object).
  if (!config.is_object())
    throw ConfigError("", "expected a JSON object at the top level, got " + json_type_name(config));
  return config;
}

void apply_override(json& config, const std::string& assignment) {
  // JSON (and so the report that records the config) holds UTF-8 text only.
  if (!is_valid_utf8(assignment))
    throw ConfigError("", "--set " + printable_utf8(assignment) + ": not valid UTF-8 text");
  const auto eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0) {
    throw ConfigError("", "--set " + assignment + ": expected key=value, e.g. --set threads=2");
  }
  const std::string key = assignment.substr(0, eq);
  const std::string text = assignment.substr(eq + 1);
  // No config key is long or holds control characters; such a key is shown escaped, once.
  if (key_text(key) != key)
    throw ConfigError("", "--set " + key_text(key) +
                              ": expected a dotted key of printable text, at most 100 bytes");
  // getline drops a trailing empty segment ("a."), so check the ends here.
  if (key.front() == '.' || key.back() == '.') throw ConfigError(key, "--set: empty key segment");
  // JSON, checked as a config file is (a repeated key is an error); else an unquoted string.
  const bool is_json = json::accept(text);
  const json value = is_json ? parse_json_text(text, "--set " + key) : json(text);
  json* node = &config;
  std::string path;
  std::stringstream parts(key);
  std::string part;
  std::vector<std::string> segments;
  while (std::getline(parts, part, '.')) segments.push_back(part);
  // Values nested this deep would overflow the stack where they are printed, as in a file.
  if (segments.size() > static_cast<size_t>(kMaxJsonDepth))
    throw ConfigError("", "--set " + brief_json(key) + ": a key of " +
                              std::to_string(segments.size()) + " segments (at most " +
                              std::to_string(kMaxJsonDepth) + ")");
  // Keys beside a segment that was not there: an index into it names a typo ('suite.0.x'),
  // and the hint a file's unknown key would get is given here too.
  std::vector<std::string> siblings, missing_siblings;
  for (size_t i = 0; i < segments.size(); ++i) {
    const std::string& seg = segments[i];
    missing_siblings = std::move(siblings);
    siblings.clear();
    if (seg.empty()) throw ConfigError(key, "--set: empty key segment");
    const bool last = i + 1 == segments.size();
    if (node->is_array()) {
      if (!is_index(seg) || std::stoul(seg) >= node->size()) {
        throw ConfigError(path, "--set " + key + ": '" + seg + "' is not an index below " +
                                    std::to_string(node->size()));
      }
      path += "[" + seg + "]";
      node = &(*node)[std::stoul(seg)];
    } else {
      if (node->is_null() && !seg.empty() &&
          seg.find_first_not_of("0123456789") == std::string::npos) {
        const std::string hint = i > 0 ? closest_match(segments[i - 1], missing_siblings) : "";
        throw ConfigError(path, "--set " + key + ": '" + seg + "' indexes a list, but " +
                                    (path.empty() ? "the config" : path) + " has none" +
                                    (hint.empty() ? "; set the whole list instead"
                                                  : " (did you mean '" + hint + "'?)"));
      }
      if (node->is_object() && !node->contains(seg)) {
        for (const auto& item : node->items()) siblings.push_back(item.key());
      }
      if (node->is_null()) *node = json::object();
      if (!node->is_object()) {
        throw ConfigError(
            path, "--set " + key + ": cannot set a key inside a " + std::string(node->type_name()));
      }
      path = path.empty() ? seg : path + "." + seg;
      node = &(*node)[seg];
    }
    if (last) *node = value;
  }
}

namespace {

// Whether the --set value `text` (JSON or a plain string) holds the dotted `path` inside it.
bool holds_path(const std::string& text, const std::string& path) {
  if (!json::accept(text)) return false;
  const json value = json::parse(text);
  const json* node = &value;
  std::stringstream parts(path);
  for (std::string seg; std::getline(parts, seg, '.');) {
    if (node->is_object() && node->contains(seg)) {
      node = &(*node)[seg];
    } else if (node->is_array() && is_index(seg) && std::stoul(seg) < node->size()) {
      node = &(*node)[std::stoul(seg)];
    } else {
      return false;
    }
  }
  return true;
}

// An override the grid axis `axis` writes over in every run (at the axis, inside it, or around
// it holding it: --set output={"dir": ...} beside an output.dir axis) would be dropped without a
// word: an error naming both.
void refuse_overwritten_set(const std::string& assignment, const std::string& axis) {
  const size_t eq = assignment.find('=');
  const std::string set = assignment.substr(0, eq);
  const bool around = axis.rfind(set + ".", 0) == 0 &&
                      holds_path(eq == std::string::npos ? "" : assignment.substr(eq + 1),
                                 axis.substr(set.size() + 1));
  if (set == axis || set.rfind(axis + ".", 0) == 0 || around)
    throw ConfigError("grid." + key_text(axis),
                      "--set " + key_text(set) + (set == "output.dir" ? " (or --out)" : "") +
                          " sets what the grid varies; vary it in the grid or drop the --set");
}

}  // namespace

RunSpec load_run_spec(const std::string& path, const std::vector<std::string>& overrides) {
  json config = read_config_file(path);
  for (const auto& o : overrides) apply_override(config, o);
  if (config.is_object() && config.contains("grid")) {
    throw ConfigError("grid", "a sweep needs kvbench run or validate (this command takes one run)");
  }
  return parse_run_spec(config, std::filesystem::path(path).stem().string());
}

std::vector<GridRun> load_run_specs(const std::string& path,
                                    const std::vector<std::string>& overrides) {
  json config = read_config_file(path);
  for (const auto& o : overrides) apply_override(config, o);
  const std::string stem = std::filesystem::path(path).stem().string();
  if (!config.is_object() || !config.contains("grid"))
    return {{parse_run_spec(config, stem), json::object()}};
  const json grid = config["grid"];
  config.erase("grid");
  if (!grid.is_object() || grid.empty()) {
    throw ConfigError(
        "grid", "expected an object of \"dotted.key\": [values] pairs, got " + brief_json(grid));
  }
  std::vector<std::pair<std::string, json>> axes;  // json objects keep keys sorted
  for (const auto& [key, values] : grid.items()) {
    if (key_text(key) != key)
      throw ConfigError("grid", "axis " + key_text(key) +
                                    ": expected a dotted key of printable text, at most 100 bytes");
    axes.emplace_back(key, values);
  }
  size_t total = 1;
  for (const auto& [key, values] : grid.items()) {
    if (!values.is_array() || values.empty()) {
      throw ConfigError("grid." + key,
                        "expected a non-empty list of values, got " + brief_json(values));
    }
    total *= values.size();
    if (total > 100000) throw ConfigError("grid", "more than 100000 combinations");
    // One axis inside another ("model" and "model.dtype"): the outer would overwrite the
    // inner's values, leaving runs that differ only in the grid point they claim.
    for (const auto& [other, unused] : grid.items()) {
      (void)unused;
      if (other.size() > key.size() && other.compare(0, key.size() + 1, key + ".") == 0)
        throw ConfigError("grid." + other,
                          "lies inside grid." + key + ", which sets it too; vary one of them");
    }
    for (const std::string& o : overrides) refuse_overwritten_set(o, key);
    std::set<std::string> seen;
    for (const json& v : values)
      if (!seen.insert(v.dump()).second)
        throw ConfigError("grid." + key, "lists " + brief_json(v) +
                                             " twice (two runs of one config, with the same "
                                             "cell ids)");
  }
  std::vector<GridRun> runs;
  for (size_t i = 0; i < total; ++i) {
    json point = json::object();
    json c = config;
    size_t rest = i;
    for (auto it = axes.rbegin(); it != axes.rend(); ++it) {  // the last key varies fastest
      const json& v = it->second[rest % it->second.size()];
      rest /= it->second.size();
      point[it->first] = v;
      try {
        apply_override(c, it->first + "=" + v.dump());
      } catch (const ConfigError& e) {
        // Its message without the "config: <path>: " and "--set <key>: " an override's has.
        std::string what = e.what();
        for (const std::string& prefix : {"config: " + e.key_path() + ": ",
                                          "--set " + it->first + ": ", std::string("--set: ")})
          if (what.rfind(prefix, 0) == 0) what = what.substr(prefix.size());
        throw ConfigError("grid." + it->first, what);
      }
    }
    // Each run its own name (and report file): the config's name, else the file's stem.
    const json& named = c.contains("name") ? c["name"] : json();
    const std::string base =
        named.is_string() && !named.get<std::string>().empty() ? named.get<std::string>() : stem;
    if (!c.contains("name") || named.is_string()) c["name"] = base + "-g" + std::to_string(i);
    try {
      runs.push_back({parse_run_spec(c, base + "-g" + std::to_string(i)), point});
    } catch (const ConfigError& e) {
      throw in_grid_point(e, point);
    }
  }
  // Values that differ as written but not once resolved (4 and 4.0, [1, 4] and [1.0, 4.0])
  // are two runs of one config, with the same cell ids.
  std::map<std::string, const GridRun*> resolved_runs;
  for (const GridRun& g : runs) {
    json r = g.spec.resolved;
    r.erase("name");
    const auto [it, fresh] = resolved_runs.emplace(r.dump(), &g);
    if (!fresh)
      throw ConfigError("grid", "grid points " + brief_json(it->second->point) + " and " +
                                    brief_json(g.point) +
                                    " resolve to the same config (two runs with the same cell "
                                    "ids); list each value once");
  }
  // Runs of one model on one device next to each other, otherwise in grid order.
  std::stable_sort(runs.begin(), runs.end(), [](const GridRun& a, const GridRun& b) {
    return std::make_pair(a.spec.resolved.value("model", json()).dump(), a.spec.device) <
           std::make_pair(b.spec.resolved.value("model", json()).dump(), b.spec.device);
  });
  return runs;
}

void check_grid_run(const GridRun& run, const std::function<void()>& check) {
  try {
    check();
  } catch (const ConfigError& e) {
    if (run.point.empty()) throw;
    throw in_grid_point(e, run.point);
  }
}

}  // namespace kvbench
