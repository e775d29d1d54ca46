#include "kvbench/attention/torch_sdpa.h"

#include "kvbench/core/error.h"

// The public operator and its per-operator header arrive together in libtorch 2.0.
#if __has_include(<ATen/ops/scaled_dot_product_attention.h>)
#include <ATen/ops/scaled_dot_product_attention.h>
#define KVBENCH_HAVE_SDPA 1
#endif

namespace kvbench {

#ifdef KVBENCH_HAVE_SDPA

bool torch_sdpa_available() { return true; }

at::Tensor torch_sdpa(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal) {
  KVB_CHECK(q.dim() == 4 && k.dim() == 4 && v.sizes() == k.sizes() && q.size(1) % k.size(1) == 0,
            "torch_sdpa: expected q [b, heads, n, d], k and v [b, kv_heads, L, d]");
  KVB_CHECK(!causal || q.size(2) == k.size(2), "torch_sdpa: causal needs n == L");
  return at::scaled_dot_product_attention(q, k, v, {}, 0.0, causal, {}, /*enable_gqa=*/true);
}

#else

bool torch_sdpa_available() { return false; }

at::Tensor torch_sdpa(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool) {
  return at::Tensor();
}

#endif

}  // namespace kvbench
