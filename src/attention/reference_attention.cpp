#include "kvbench/attention/reference_attention.h"

#include "kvbench/core/error.h"

namespace kvbench {

at::Tensor decode_attention_reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      double scale) {
  KVB_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4,
            "decode attention: q, k, v must be 4-D [batch, kv_heads, n, head_dim]");
  KVB_CHECK(k.sizes() == v.sizes(), "decode attention: k and v shapes differ");
  KVB_CHECK(q.size(0) == k.size(0) && q.size(1) == k.size(1) && q.size(3) == k.size(3),
            "decode attention: q ", q.sizes(), " does not match k ", k.sizes());
  at::Tensor scores = at::matmul(q, k.transpose(-1, -2)).mul_(scale);  // [b, h, g, tokens]
  return at::matmul(at::softmax(scores, -1), v);
}

}  // namespace kvbench
