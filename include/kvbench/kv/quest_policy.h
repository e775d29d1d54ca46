// Quest (Tang et al. 2024, "Query-Aware Sparsity for Efficient Long-Context LLM Inference"):
// every token stays in memory; each decode step reads only the pages most likely to matter to
// the current query. Keys are grouped in pages of P tokens; per page and channel the cache keeps
// the elementwise min and max of the stored keys, and a page's bound
//   U = sum_i max(q_i * min_i, q_i * max_i)  >=  q . k   for every key k of the page
// ranks pages. Each step attends exactly over the top budget / P pages per KV head (bounds
// averaged over the head's query group), always including the newest page. The first
// `dense_layers` layers, the prefill, and layers holding no more than the budget attend densely.
// Saves bandwidth, not memory: the page bounds are extra metadata.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "kvbench/kv/retention_policy.h"
#include "kvbench/kv/row_buffer.h"

namespace kvbench {

class QuestPolicy final : public RetentionPolicy {
 public:
  QuestPolicy(int64_t budget, int64_t page_size, int64_t dense_layers);
  std::string name() const override { return "quest"; }
  nlohmann::json params() const override;
  RetentionNeeds needs() const override { return RetentionNeeds::kQueryPages; }
  EvictionTiming timing() const override { return EvictionTiming::kDecode; }
  // Never evicts: every token stays stored.
  int64_t budget(const RetentionInput&) const override { return INT64_MAX; }
  at::Tensor select(const RetentionInput& in) const override;

  int64_t token_budget() const { return budget_; }
  int64_t page_size() const { return page_; }
  int64_t dense_layers() const { return dense_layers_; }
  // Whether a decode step at `layer` over `held` tokens reads selected pages only.
  bool sparse(int64_t layer, int64_t held) const {
    return layer >= dense_layers_ && held > budget_;
  }
  // Pages read per step: budget / P (the budget is a multiple of P).
  int64_t pages_to_read() const { return std::max<int64_t>(1, budget_ / page_); }
  // Tokens a decode step at a layer past the dense ones reads when it holds `held` tokens (the
  // new one included): all of them up to the budget, else pages_to_read() - 1 whole pages and
  // the newest page's tokens.
  int64_t tokens_read(int64_t held) const {
    if (held <= budget_) return held;
    return (pages_to_read() - 1) * page_ + (held - (held - 1) / page_ * page_);
  }
  // Top pages of each row of `bounds` ([kv_heads, pages]): [kv_heads, n] ascending page
  // indices, the newest page always among them, n = min(pages_to_read(), pages).
  at::Tensor select_pages(const at::Tensor& bounds) const;
  // select_pages for several rows of bounds at once: bounds [rows, kv_heads, most], row r's
  // first pages[r] pages valid (pages: [rows] int64 where the bounds are; every row holds at
  // least pages_to_read() pages: a sparse step's). [rows, kv_heads, pages_to_read()].
  at::Tensor select_pages(const at::Tensor& bounds, const at::Tensor& pages) const;

 private:
  int64_t budget_, page_, dense_layers_;
};

// x rounded to fp16 towards -inf (down) or +inf, so the result bounds x: how QuestPages rounds
// its minima and maxima, on tensors of any device (the paged cache keeps its bounds this way).
at::Tensor half_bounds(const at::Tensor& x, bool down);

// Per-page key bounds of one layer: elementwise min and max per (KV head, page, channel) of
// the stored keys, in fp16 rounded outwards (min down, max up), so the bound stays valid for
// the stored keys themselves.
class QuestPages {
 public:
  QuestPages(int64_t kv_heads, int64_t head_dim, int64_t page_size);
  // Folds in the newest `n` tokens of `keys` (the store's last rows, in position order).
  void append(const TokenStore& keys, int64_t n);
  // [kv_heads, pages] fp32: sum_i max(q_i min_i, q_i max_i) averaged over each KV head's
  // query group.  q: [num_heads, head_dim] fp32 contiguous.
  at::Tensor bounds(const at::Tensor& q) const;
  int64_t pages() const { return mins_.size(); }
  // Bytes of the min and max tensors held.
  uint64_t bytes() const { return mins_.bytes() + maxs_.bytes(); }
  // The formula: two fp16 vectors per (KV head, page).
  static uint64_t nominal_bytes(int64_t tokens, int64_t kv_heads, int64_t head_dim,
                                int64_t page_size);

 private:
  int64_t kv_heads_, head_dim_, page_, tokens_ = 0;
  RowBuffer mins_, maxs_;  // [kv_heads, pages, head_dim] fp16
};

}  // namespace kvbench
