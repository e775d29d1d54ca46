// The method factory: which compression methods exist, their parameters and defaults,
// validation of a `methods[i]` config entry, and construction of the method's KV cache.
// A method is a storage codec plus a retention policy. Codec methods (`full`, `int4`, `kivi-2`,
// ...) keep every token; retention methods (`streamingllm`, `stream-512`, `snapkv`,
// `snapkv-2048`, ...) name a policy and take their codec from a `codec` entry, a codec
// method's name or an object with its parameters:
//   {"name": "snapkv", "budget": 2048, "codec": "kivi-4"}
//   {"name": "snapkv-2048", "codec": {"name": "kivi-4", "residual": 64}}
//   {"name": "snapkv-2048+kivi-4"}          (shorthand for the first form's codec)
// Resolved entries always carry the codec as a resolved object. A preset (`kivi-2`,
// `stream-512`, `snapkv-2048`, ...) is another entry of the same codec or policy with other
// defaults: a paper's setting, or the seed paper's where that differs (the plain name keeps
// the original defaults); its summary says what it expands to (`kvbench list methods`), and
// docs/methods.md lists the methods and presets.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvbench/core/param_spec.h"
#include "kvbench/kv/kv_cache.h"
#include "kvbench/kv/retention_policy.h"

namespace kvbench {

class Codec;

struct MethodInfo {
  std::string name;
  std::string summary;  // what the preset expands to
  std::vector<ParamSpec> params;
  // Codec methods: builds the codec from resolved params; `model_dtype` is the uncompressed
  // storage dtype. Empty for retention methods, whose codec is their resolved `codec` entry.
  std::function<std::shared_ptr<const Codec>(const nlohmann::json& params,
                                             at::ScalarType model_dtype)>
      codec;
  // Retention methods: builds the policy from resolved params. Empty: every token kept.
  std::function<std::shared_ptr<const RetentionPolicy>(const nlohmann::json& params)> policy;
  // Pairs of a count and the ratio that may replace it ({"heavy", "heavy_ratio"}): a ratio
  // above 0 is used and its count left out of the resolved entry; a count given without its
  // ratio sets the ratio to 0 (so `{"name": "h2o", "heavy": 64}` means 64 tokens whatever
  // h2o's default ratio); both given, the ratio above 0, is a config error.
  std::vector<std::pair<std::string, std::string>> count_or_ratio = {};
  // Parameters that act only when another has one value (fp8's scale_value only with "scale":
  // "fixed"): given other than its default while the other differs, such a parameter is a
  // config error; it would give the cell another id and change nothing measured.
  struct AppliesOnlyWhen {
    std::string param, key;
    nlohmann::json value;
  };
  std::vector<AppliesOnlyWhen> applies_only_when = {};
};

const std::vector<MethodInfo>& method_catalog();
std::vector<std::string> method_names();
// Methods that are storage codecs (valid values of a retention method's `codec`).
std::vector<std::string> codec_method_names();
// Validates one `{"name": ..., params}` entry and returns it with defaults filled in.
// `path` is its key path ("methods[1]") for error messages.
nlohmann::json resolve_method(const nlohmann::json& entry, const std::string& path);

// The codec a resolved method entry describes.
std::shared_ptr<const Codec> make_codec(const nlohmann::json& method, at::ScalarType model_dtype);
// The retention policy a resolved method entry describes (FullRetention for codec methods).
std::shared_ptr<const RetentionPolicy> make_policy(const nlohmann::json& method);
// Builds the KV cache a resolved method entry describes, for a model with these dimensions;
// `dtype` is the uncompressed storage dtype (model.dtype); `backend` is "reference", "cpu" or
// "paged" (PagedKVCache: the GPU path's paged formats, reference attention over the pages);
// `rope_inv_freq`: the model's RoPE frequencies (rope_inverse_frequencies), needed by methods
// whose kept tokens take cache positions (streamingllm with positions "rerotated").
// `device`: where a paged cache's pools live (cpu for every other backend).
std::unique_ptr<KVCache> make_kv_cache(const nlohmann::json& method, int64_t num_layers,
                                       int64_t num_kv_heads, int64_t head_dim, at::ScalarType dtype,
                                       const std::string& backend = "cpu",
                                       const at::Tensor& rope_inv_freq = at::Tensor(),
                                       at::Device device = at::kCPU);
// The same with the method's codec given, e.g. prepared (prepare_codec) for a low-rank method
// (not "paged": make_paged_cache). `dtype`: model.dtype, as above: what a prompt's prefill
// rounds its keys and values to (CompressedKVCache::set_computed_dtype).
std::unique_ptr<KVCache> make_kv_cache(const nlohmann::json& method,
                                       std::shared_ptr<const Codec> codec, int64_t num_layers,
                                       int64_t num_kv_heads, int64_t head_dim, at::ScalarType dtype,
                                       const std::string& backend = "cpu",
                                       const at::Tensor& rope_inv_freq = at::Tensor());
// Whether KVBENCH_PAGED_PATH=kernels is set: paged caches on the CPU then take the GPU path
// with the kernels' host references (tests; whole runs check that path without a GPU). Their
// numbers differ from the plain paged path's (16-bit queries, the kernel path's own buffers),
// so cells record it (cell ids, hence --resume and compare, keep the two apart).
bool paged_kernel_path_on_cpu();
// Throws Error saying why a resolved method entry cannot run on the paged path for a model of
// these dimensions and storage dtype: no paged format for what it stores, a retention policy
// its paged cache cannot run, a head size or GQA group the GPU kernels do not take
// (`kernel_path`: the GPU path's checks, as on a GPU). The checks the paged caches make when
// built or at their first step, made before any model is loaded (validate, --dry-run); a
// low-rank codec's bases are not needed.
void check_paged_method(const nlohmann::json& method, int64_t num_heads, int64_t num_kv_heads,
                        int64_t head_dim, at::ScalarType dtype, bool kernel_path);
// How the paged cache of a resolved method entry (make_paged_cache, storage `dtype`) lays out
// what its retention policy keeps: in a ring of slots (`ring`, paged_ring: no list of kept
// positions), or compacted into the first slots of pages of `compacting_page` tokens
// (paged_compacts; 0: not compacted), or listed in place in pages of `listing_page` tokens
// (KIVI's pages, whose key groups span tokens, and Palu's, attended by its own kernel: a page
// is freed only once no head of any layer keeps a token in it). GEAR's block cache does none;
// a low-rank projection's coefficients are paged in `dtype`'s 16-bit format.
struct PagedRetention {
  bool ring = false;
  int64_t compacting_page = 0;
  int64_t listing_page = 0;
};
PagedRetention paged_retention_of(const nlohmann::json& method, at::ScalarType dtype);
// What one sequence of the paged cache of a resolved method entry (make_paged_cache, storage
// `dtype`, heads of `head_dim`) holds per KV head and layer once it has `slots` slots: whole
// pages of `page` tokens, `page_bytes` each, and `reserve` beside them from its first token
// (KIVI's rings, fp8's scales: paged_sequence_reserve). `page` 0: not pages of the method's
// own keys and values (latent coefficients, GEAR's blocks); its codec's formula plans those.
struct PagedSequenceBytes {
  int64_t page = 0;
  uint64_t page_bytes = 0;
  uint64_t reserve = 0;
  uint64_t of(int64_t slots) const {  // page > 0 only
    return uint64_t((slots + page - 1) / page) * page_bytes + reserve;
  }
};
PagedSequenceBytes paged_sequence_bytes_of(const nlohmann::json& method, at::ScalarType dtype,
                                           int64_t head_dim);
// The paged cache of a resolved method entry with its codec (prepared when it needs it): a
// LatentPagedCache of coefficients for kvproj, a PagedKVCache in the method's fixed format
// otherwise. `dtype`: the uncompressed storage dtype; `device`: where the pools live.
std::unique_ptr<KVCache> make_paged_cache(const nlohmann::json& method,
                                          std::shared_ptr<const Codec> codec, int64_t num_layers,
                                          int64_t num_kv_heads, int64_t head_dim,
                                          at::ScalarType dtype, at::Device device = at::kCPU);

}  // namespace kvbench
