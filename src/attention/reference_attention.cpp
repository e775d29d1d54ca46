#include "kvbench/attention/reference_attention.h"

#include <limits>

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

at::Tensor block_attention_reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     double scale) {
  KVB_CHECK(q.dim() == 3 && k.dim() == 3 && k.sizes() == v.sizes() && q.size(2) == k.size(2),
            "block attention: q ", q.sizes(), ", k ", k.sizes(), ", v ", v.sizes(),
            " are not [heads, n, head_dim] / [kv_heads, L, head_dim]");
  const int64_t heads = q.size(0), n = q.size(1), d = q.size(2);
  const int64_t kv_heads = k.size(0), total = k.size(1);
  KVB_CHECK(heads % kv_heads == 0 && n <= total, "block attention: ", heads, " heads over ",
            kv_heads, " KV heads, ", n, " queries over ", total, " keys");
  const int64_t group = heads / kv_heads;
  at::Tensor qg = q.reshape({kv_heads, group * n, d});             // rows: (g, i)
  at::Tensor scores = at::bmm(qg, k.transpose(1, 2)).mul_(scale);  // [kvh, g*n, L]
  if (n > 1) {
    // Query i may see keys up to total - n + i. (The mask where the scores are: on a GPU a
    // host mask is an error.)
    const auto longs = scores.options().dtype(at::kLong);
    at::Tensor key_pos = at::arange(total, longs).view({1, total});
    at::Tensor limit = at::arange(n, longs).add_(total - n).view({n, 1});
    at::Tensor hidden = key_pos.gt(limit).repeat({group, 1});  // [g*n, L]
    scores.masked_fill_(hidden.unsqueeze(0), -std::numeric_limits<float>::infinity());
  }
  at::Tensor out = at::bmm(at::softmax(scores, -1), v);  // [kvh, g*n, d]
  return out.view({heads, n, d});
}

}  // namespace kvbench
