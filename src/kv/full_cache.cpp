#include "kvbench/kv/full_cache.h"

#include <cmath>

#include "kvbench/attention/cpu_attention.h"
#include "kvbench/attention/reference_attention.h"
#include "kvbench/core/error.h"
#include "kvbench/kv/identity_codec.h"

namespace kvbench {

AttentionBackend attention_backend_from_name(const std::string& name) {
  if (name == "reference") return AttentionBackend::kReference;
  if (name == "cpu") return AttentionBackend::kCpu;
  throw Error("unknown attention backend '" + name + "' (known: reference, cpu)");
}

CompressedKVCache::CompressedKVCache(std::shared_ptr<const Codec> codec, AttentionBackend backend,
                                     int64_t num_layers, int64_t num_kv_heads, int64_t head_dim)
    : codec_(std::move(codec)),
      backend_(backend),
      num_layers_(num_layers),
      num_kv_heads_(num_kv_heads),
      head_dim_(head_dim) {}

int64_t CompressedKVCache::add_sequence() {
  const int64_t id = next_id_++;
  Sequence& s = sequences_[id];
  for (int64_t l = 0; l < num_layers_; ++l) {
    s.layers.push_back({codec_->make_key_store(num_kv_heads_, head_dim_),
                        codec_->make_value_store(num_kv_heads_, head_dim_)});
  }
  return id;
}

void CompressedKVCache::remove_sequence(int64_t seq) {
  KVB_CHECK(sequences_.erase(seq) == 1, "KV cache: unknown sequence ", seq);
}

CompressedKVCache::Sequence& CompressedKVCache::sequence(int64_t seq) {
  auto it = sequences_.find(seq);
  KVB_CHECK(it != sequences_.end(), "KV cache: unknown sequence ", seq);
  return it->second;
}

int64_t CompressedKVCache::length(int64_t seq) const {
  auto it = sequences_.find(seq);
  KVB_CHECK(it != sequences_.end(), "KV cache: unknown sequence ", seq);
  return it->second.length;
}

at::Tensor CompressedKVCache::append_and_attend(int64_t seq, int64_t layer_index,
                                                const at::Tensor& q, const at::Tensor& k,
                                                const at::Tensor& v) {
  Sequence& s = sequence(seq);
  KVB_CHECK(layer_index >= 0 && layer_index < num_layers_, "KV cache: layer ", layer_index,
            " out of range");
  Layer& layer = s.layers[static_cast<size_t>(layer_index)];
  layer.keys->append(k);
  layer.values->append(v);
  if (layer_index == num_layers_ - 1) s.length += k.size(1);
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim_));
  // Attention reads what the cache stores, so a lossy codec shows its effect on every token.
  if (backend_ == AttentionBackend::kCpu && q.size(1) == 1) {
    return cpu_decode_attention(q, *layer.keys, *layer.values, num_kv_heads_, scale);
  }
  return block_attention_reference(q, layer.keys->dequantize(), layer.values->dequantize(), scale);
}

StorageBytes CompressedKVCache::storage() const {
  StorageBytes total;
  for (const auto& [id, s] : sequences_) {
    for (const auto& l : s.layers) {
      total += l.keys->bytes();
      total += l.values->bytes();
    }
  }
  return total;
}

StorageBytes CompressedKVCache::nominal() const {
  StorageBytes total;
  for (const auto& [id, s] : sequences_) {
    for (const auto& l : s.layers) {
      const auto k = l.keys->history_nominal(), v = l.values->history_nominal();
      if (k && v) {
        total += *k;
        total += *v;
      } else {
        total += codec_->nominal_bytes(l.keys->size(), num_kv_heads_, head_dim_);
      }
    }
  }
  return total;
}

FullKVCache::FullKVCache(int64_t num_layers, int64_t num_kv_heads, int64_t head_dim,
                         at::ScalarType dtype)
    : CompressedKVCache(std::make_shared<IdentityCodec>(dtype), AttentionBackend::kReference,
                        num_layers, num_kv_heads, head_dim) {}

}  // namespace kvbench
