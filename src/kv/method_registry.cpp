#include "kvbench/kv/method_registry.h"

#include <algorithm>

#include "kvbench/core/error.h"
#include "kvbench/core/text.h"
#include "kvbench/kv/full_cache.h"

namespace kvbench {

const std::vector<MethodInfo>& method_catalog() {
  static const std::vector<MethodInfo> catalog = {
      {"full", "uncompressed baseline: identity storage in the model dtype, every token kept", {}},
  };
  return catalog;
}

std::vector<std::string> method_names() {
  std::vector<std::string> names;
  for (const auto& m : method_catalog()) names.push_back(m.name);
  return names;
}

nlohmann::json resolve_method(const nlohmann::json& entry, const std::string& path) {
  if (!entry.is_object()) {
    throw ConfigError(path,
                      "expected an object like {\"name\": \"full\"}, got " + json_type_name(entry));
  }
  if (!entry.contains("name") || !entry["name"].is_string()) {
    throw ConfigError(join_path(path, "name"), "expected a method name (string); known methods: " +
                                                   join(method_names(), ", "));
  }
  const std::string name = entry["name"];
  const auto& catalog = method_catalog();
  auto it = std::find_if(catalog.begin(), catalog.end(),
                         [&](const MethodInfo& m) { return m.name == name; });
  if (it == catalog.end()) {
    std::string hint = closest_match(name, method_names());
    throw ConfigError(join_path(path, "name"),
                      "unknown method '" + name + "'" +
                          (hint.empty() ? "" : " (did you mean '" + hint + "'?)") +
                          "; known methods: " + join(method_names(), ", "));
  }
  return resolve_params(entry, it->params, path);
}

std::unique_ptr<KVCache> make_kv_cache(const nlohmann::json& method, int64_t num_layers,
                                       int64_t num_kv_heads, int64_t head_dim,
                                       at::ScalarType dtype) {
  const std::string name = method.at("name");
  KVB_CHECK(name == "full", "method '", name, "' has no KV cache implementation yet");
  return std::make_unique<FullKVCache>(num_layers, num_kv_heads, head_dim, dtype);
}

}  // namespace kvbench
