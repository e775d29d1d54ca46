#include "kvbench/suites/cell.h"

#include <cstdio>
#include <map>

#include "kvbench/core/error.h"
#include "kvbench/suites/suite_registry.h"

namespace kvbench {

uint64_t fnv1a64(const std::string& text) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : text) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

std::vector<Cell> expand_cells(const RunSpec& spec) {
  std::vector<Cell> cells;
  std::map<std::string, std::string> seen;  // id -> where it came from
  for (size_t s = 0; s < spec.suites.size(); ++s) {
    for (size_t m = 0; m < spec.methods.size(); ++m) {
      Cell c;
      c.suite_index = s;
      c.method_index = m;
      c.suite = spec.suites[s].name;
      c.params = spec.suites[s].params;
      c.method = spec.methods[m];
      // Everything that changes what the cell measures. nlohmann::json objects keep keys
      // sorted, so dump() is canonical. (Model file hashes join when sweeps land.)
      const nlohmann::json identity = {
          {"suite", c.suite},
          {"params", c.params},
          {"method", c.method},
          {"device", spec.device},
          {"attention", spec.attention},
          {"threads", spec.threads},
          {"model", find_suite(c.suite).needs_model ? spec.resolved.value("model", nlohmann::json())
                                                    : nlohmann::json()}};
      const uint64_t h = fnv1a64(identity.dump());
      char hex[17];
      std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(h));
      c.id = c.suite + "." + c.method["name"].get<std::string>() + "." + hex;
      c.seed = fnv1a64(std::to_string(spec.seed) + ":" + hex);
      const std::string where =
          "suites[" + std::to_string(s) + "] x methods[" + std::to_string(m) + "]";
      auto [it, inserted] = seen.emplace(c.id, where);
      if (!inserted) {
        throw ConfigError("suites",
                          "cells " + it->second + " and " + where + " are identical; remove one");
      }
      cells.push_back(std::move(c));
    }
  }
  return cells;
}

Shard parse_shard(const std::string& text) {
  const size_t slash = text.find('/');
  Shard s;
  try {
    if (slash == std::string::npos) throw std::invalid_argument("no slash");
    size_t used = 0;
    s.index = std::stoi(text.substr(0, slash), &used);
    if (used != slash) throw std::invalid_argument("index");
    const std::string n = text.substr(slash + 1);
    s.count = std::stoi(n, &used);
    if (used != n.size()) throw std::invalid_argument("count");
  } catch (const std::exception&) {
    throw ConfigError("--shard", "expected i/n (e.g. 0/4), got '" + text + "'");
  }
  if (s.count < 1 || s.index < 0 || s.index >= s.count) {
    throw ConfigError("--shard", "expected i/n with 0 <= i < n, got '" + text + "'");
  }
  return s;
}

std::vector<Cell> select_shard(const std::vector<Cell>& cells, Shard shard) {
  std::vector<Cell> out;
  for (const auto& c : cells) {
    if (fnv1a64(c.id) % static_cast<uint64_t>(shard.count) == static_cast<uint64_t>(shard.index)) {
      out.push_back(c);
    }
  }
  return out;
}

}  // namespace kvbench
