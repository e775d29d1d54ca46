// The method factory's front door: which compression methods exist, their parameters and
// defaults, and validation of a `methods[i]` config entry. Only the uncompressed baseline
// `full` exists so far; codecs and retention policies arrive with the compression framework.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvbench/core/param_spec.h"
#include "kvbench/kv/kv_cache.h"

namespace kvbench {

struct MethodInfo {
  std::string name;
  std::string summary;
  std::vector<ParamSpec> params;
};

const std::vector<MethodInfo>& method_catalog();
std::vector<std::string> method_names();
// Validates one `{"name": ..., params}` entry and returns it with defaults filled in.
// `path` is its key path ("methods[1]") for error messages.
nlohmann::json resolve_method(const nlohmann::json& entry, const std::string& path);

// Builds the KV cache a resolved method entry describes, for a model with these dimensions;
// `dtype` is the uncompressed storage dtype (model.dtype).
std::unique_ptr<KVCache> make_kv_cache(const nlohmann::json& method, int64_t num_layers,
                                       int64_t num_kv_heads, int64_t head_dim,
                                       at::ScalarType dtype);

}  // namespace kvbench
