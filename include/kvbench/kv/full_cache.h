// The uncompressed baseline cache: every token kept, stored as-is in a storage dtype
// (float32, float16 or bfloat16), read back in fp32 by the reference attention.
#pragma once

#include <map>
#include <vector>

#include "kvbench/kv/kv_cache.h"

namespace kvbench {

class FullKVCache final : public KVCache {
 public:
  FullKVCache(int64_t num_layers, int64_t num_kv_heads, int64_t head_dim,
              at::ScalarType storage_dtype);

  int64_t add_sequence() override;
  void remove_sequence(int64_t seq) override;
  int64_t length(int64_t seq) const override;
  at::Tensor append_and_attend(int64_t seq, int64_t layer, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v) override;
  uint64_t bytes() const override;

 private:
  struct Layer {
    at::Tensor k, v;  // [num_kv_heads, capacity, head_dim], storage dtype
    int64_t size = 0;
  };
  struct Sequence {
    std::vector<Layer> layers;
    int64_t length = 0;
  };
  Sequence& sequence(int64_t seq);
  void reserve(Layer& layer, int64_t tokens);

  int64_t num_layers_, num_kv_heads_, head_dim_;
  at::ScalarType dtype_;
  int64_t next_id_ = 0;
  std::map<int64_t, Sequence> sequences_;
};

}  // namespace kvbench
