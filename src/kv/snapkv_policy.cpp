#include "kvbench/kv/snapkv_policy.h"

#include "kvbench/core/error.h"

namespace kvbench {

at::Tensor snapkv_scores(const at::Tensor& attention, int64_t kv_heads, int64_t kernel,
                         const std::string& pooling) {
  KVB_CHECK(attention.dim() == 3 && attention.size(0) % kv_heads == 0 &&
                attention.size(2) > attention.size(1),
            "snapkv: window attention ", attention.sizes(), " over ", kv_heads, " KV heads");
  const int64_t heads = attention.size(0), w = attention.size(1), prefix = attention.size(2) - w;
  at::Tensor votes = attention.narrow(2, 0, prefix).sum(1).unsqueeze(1);  // [heads, 1, prefix]
  at::Tensor pooled = pooling == "max" ? at::max_pool1d(votes, {kernel}, {1}, {kernel / 2})
                                       : at::avg_pool1d(votes, {kernel}, {1}, {kernel / 2}, false,
                                                        /*count_include_pad=*/true);
  return pooled.reshape({kv_heads, heads / kv_heads, prefix}).mean(1);
}

SnapKvPolicy::SnapKvPolicy(int64_t budget, int64_t window, int64_t kernel, std::string pooling)
    : budget_(budget), window_(window), kernel_(kernel), pooling_(std::move(pooling)) {
  KVB_CHECK(window >= 1 && budget > window, "snapkv: budget (", budget,
            ") must exceed the observation window (", window, ")");
  KVB_CHECK(kernel >= 1 && kernel % 2 == 1, "snapkv: kernel must be odd, got ", kernel);
  KVB_CHECK(pooling_ == "max" || pooling_ == "avg", "snapkv: pooling must be max or avg");
}

nlohmann::json SnapKvPolicy::params() const {
  return {{"budget", budget_}, {"window", window_}, {"kernel", kernel_}, {"pooling", pooling_}};
}

at::Tensor snapkv_select(const RetentionInput& in, int64_t keep, int64_t window, int64_t kernel,
                         const std::string& pooling, const char* policy) {
  KVB_CHECK(in.window_attention.defined(), policy, ": the cache gave no window attention");
  const int64_t kv_heads = in.positions.size(0), held = in.positions.size(1);
  KVB_CHECK(keep >= window && keep <= held, policy, ": cannot keep ", keep, " of ", held,
            " tokens with a window of ", window);
  at::Tensor scores = snapkv_scores(in.window_attention, kv_heads, kernel, pooling);
  at::Tensor prefix = top_tokens(scores, keep - window);
  // On the scores' device (a GPU when the cache computed them there).
  at::Tensor recent = at::arange(held - window, held, prefix.options()).expand({kv_heads, window});
  return at::cat({prefix, recent}, 1).contiguous();
}

at::Tensor SnapKvPolicy::select(const RetentionInput& in) const {
  return snapkv_select(in, budget_, window_, kernel_, pooling_, "snapkv");
}

}  // namespace kvbench
