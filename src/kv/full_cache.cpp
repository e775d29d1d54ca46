#include "kvbench/kv/full_cache.h"

#include <cmath>

#include "kvbench/attention/reference_attention.h"
#include "kvbench/core/error.h"

namespace kvbench {

FullKVCache::FullKVCache(int64_t num_layers, int64_t num_kv_heads, int64_t head_dim,
                         at::ScalarType storage_dtype)
    : num_layers_(num_layers),
      num_kv_heads_(num_kv_heads),
      head_dim_(head_dim),
      dtype_(storage_dtype) {}

int64_t FullKVCache::add_sequence() {
  const int64_t id = next_id_++;
  sequences_[id].layers.resize(static_cast<size_t>(num_layers_));
  return id;
}

void FullKVCache::remove_sequence(int64_t seq) {
  KVB_CHECK(sequences_.erase(seq) == 1, "KV cache: unknown sequence ", seq);
}

FullKVCache::Sequence& FullKVCache::sequence(int64_t seq) {
  auto it = sequences_.find(seq);
  KVB_CHECK(it != sequences_.end(), "KV cache: unknown sequence ", seq);
  return it->second;
}

int64_t FullKVCache::length(int64_t seq) const {
  auto it = sequences_.find(seq);
  KVB_CHECK(it != sequences_.end(), "KV cache: unknown sequence ", seq);
  return it->second.length;
}

void FullKVCache::reserve(Layer& layer, int64_t tokens) {
  const int64_t capacity = layer.k.defined() ? layer.k.size(1) : 0;
  if (tokens <= capacity) return;
  // Doubling keeps appends amortised O(1) per token.
  const int64_t grown = std::max<int64_t>({tokens, 2 * capacity, 16});
  auto opts = at::TensorOptions().dtype(dtype_);
  at::Tensor k = at::empty({num_kv_heads_, grown, head_dim_}, opts);
  at::Tensor v = at::empty({num_kv_heads_, grown, head_dim_}, opts);
  if (layer.size > 0) {
    k.narrow(1, 0, layer.size).copy_(layer.k.narrow(1, 0, layer.size));
    v.narrow(1, 0, layer.size).copy_(layer.v.narrow(1, 0, layer.size));
  }
  layer.k = k;
  layer.v = v;
}

at::Tensor FullKVCache::append_and_attend(int64_t seq, int64_t layer_index, const at::Tensor& q,
                                          const at::Tensor& k, const at::Tensor& v) {
  Sequence& s = sequence(seq);
  KVB_CHECK(layer_index >= 0 && layer_index < num_layers_, "KV cache: layer ", layer_index,
            " out of range");
  Layer& layer = s.layers[static_cast<size_t>(layer_index)];
  const int64_t n = k.size(1);
  reserve(layer, layer.size + n);
  layer.k.narrow(1, layer.size, n).copy_(k);
  layer.v.narrow(1, layer.size, n).copy_(v);
  layer.size += n;
  if (layer_index == num_layers_ - 1) s.length += n;
  const at::Tensor keys = layer.k.narrow(1, 0, layer.size).to(at::kFloat);
  const at::Tensor values = layer.v.narrow(1, 0, layer.size).to(at::kFloat);
  return block_attention_reference(q, keys, values, 1.0 / std::sqrt(double(head_dim_)));
}

uint64_t FullKVCache::bytes() const {
  uint64_t tokens = 0;
  for (const auto& [id, s] : sequences_) {
    for (const auto& l : s.layers) tokens += static_cast<uint64_t>(l.size);
  }
  return tokens * 2 * num_kv_heads_ * head_dim_ * at::elementSize(dtype_);
}

}  // namespace kvbench
