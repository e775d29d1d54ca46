// The method factory: which compression methods exist (each a storage codec plus, with the
// eviction issue, a retention policy), their parameters and defaults, validation of a
// `methods[i]` config entry, and construction of the method's KV cache. Presets follow
// ../shared/reference/presets.md.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvbench/core/param_spec.h"
#include "kvbench/kv/kv_cache.h"

namespace kvbench {

class Codec;

struct MethodInfo {
  std::string name;
  std::string summary;  // what the preset expands to
  std::vector<ParamSpec> params;
  // Builds the codec from resolved params; `model_dtype` is the uncompressed storage dtype.
  std::function<std::shared_ptr<const Codec>(const nlohmann::json& params,
                                             at::ScalarType model_dtype)>
      codec;
};

const std::vector<MethodInfo>& method_catalog();
std::vector<std::string> method_names();
// Validates one `{"name": ..., params}` entry and returns it with defaults filled in.
// `path` is its key path ("methods[1]") for error messages.
nlohmann::json resolve_method(const nlohmann::json& entry, const std::string& path);

// The codec a resolved method entry describes.
std::shared_ptr<const Codec> make_codec(const nlohmann::json& method, at::ScalarType model_dtype);
// Builds the KV cache a resolved method entry describes, for a model with these dimensions;
// `dtype` is the uncompressed storage dtype (model.dtype); `backend` is "reference" or "cpu".
std::unique_ptr<KVCache> make_kv_cache(const nlohmann::json& method, int64_t num_layers,
                                       int64_t num_kv_heads, int64_t head_dim, at::ScalarType dtype,
                                       const std::string& backend = "cpu");

}  // namespace kvbench
