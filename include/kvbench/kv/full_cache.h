// The KV cache behind every method: per sequence and layer, a key store and a value store made
// by the method's codec; attention through the chosen backend (`reference`: dequantize, then
// plain attention — the oracle; `cpu`: fused kernels reading the stored format). Retention
// policies (which tokens stay) plug in here with the eviction issue; today every token stays.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kvbench/kv/codec.h"
#include "kvbench/kv/kv_cache.h"

namespace kvbench {

enum class AttentionBackend { kReference, kCpu };
// "reference" | "cpu"; throws Error otherwise.
AttentionBackend attention_backend_from_name(const std::string& name);

class CompressedKVCache : public KVCache {
 public:
  CompressedKVCache(std::shared_ptr<const Codec> codec, AttentionBackend backend,
                    int64_t num_layers, int64_t num_kv_heads, int64_t head_dim);

  int64_t add_sequence() override;
  void remove_sequence(int64_t seq) override;
  int64_t length(int64_t seq) const override;
  at::Tensor append_and_attend(int64_t seq, int64_t layer, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v) override;
  StorageBytes storage() const override;
  StorageBytes nominal() const override;

  const Codec& codec() const { return *codec_; }

 private:
  struct Layer {
    std::unique_ptr<TokenStore> keys, values;
  };
  struct Sequence {
    std::vector<Layer> layers;
    int64_t length = 0;
  };
  Sequence& sequence(int64_t seq);

  std::shared_ptr<const Codec> codec_;
  AttentionBackend backend_;
  int64_t num_layers_, num_kv_heads_, head_dim_;
  int64_t next_id_ = 0;
  std::map<int64_t, Sequence> sequences_;
};

// The uncompressed cache: identity storage in `dtype`, reference attention.
class FullKVCache final : public CompressedKVCache {
 public:
  FullKVCache(int64_t num_layers, int64_t num_kv_heads, int64_t head_dim, at::ScalarType dtype);
};

}  // namespace kvbench
