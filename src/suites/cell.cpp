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

}  // namespace kvbench
