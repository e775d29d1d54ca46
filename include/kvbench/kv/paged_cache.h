// The KV cache of the GPU path, runnable on the CPU: every layer's keys and values in pools of
// pages in a kernels/kv_format.h format, one block table per sequence shared by all layers
// (vLLM's layout), new tokens written by the quantize-on-append units (kernels/kv_append.h)
// that the GPU appender runs too. On the CPU, attention runs over what the pages decode to
// (kernels/kv_paged_decode.h) with the reference attention: the same numbers the GPU decode
// kernel must produce, so this cache is the GPU path's oracle on any machine.
//
// Pools start at `PagedCapacity::pages` and double when full, up to `max_pages` when one is
// set (a serving engine sizes its pool once from free memory: max_pages = pages); running out
// is then an error that says how many pages were needed.
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kv_append.h"
#include "kv_format.h"
#include "kvbench/kv/kv_cache.h"

namespace kvbench {

// A method's paged storage: format, page size (KIVI: its group), KIVI's window, and the fp8
// scale rule (calibrated per sequence from its first tokens as the fp8 codec does, or fixed).
struct PagedFormat {
  kernels::KvFormat format = kernels::KvFormat::kFp16;
  int page_size = 16;
  int residual = 0;
  bool fp8_amax = true;
  double fp8_scale_value = 1.0, fp8_amax_divisor = 448.0;
  bool fp8_per_head = true;
};

// The paged format of a resolved method entry with uncompressed storage `model_dtype`.
// Throws Error naming the method and what the paged formats offer when there is none.
PagedFormat paged_format_for(const nlohmann::json& method, at::ScalarType model_dtype);

struct PagedCapacity {
  int64_t pages = 64;     // pages per layer pool at first (a page: page_size tokens, every KV head)
  int64_t max_pages = 0;  // the pools double up to this many pages; 0: no limit
  int64_t sequences = 4;  // sequence slots (KIVI rings, fp8 scales) at first; they double
};

class PagedKVCache final : public KVCache {
 public:
  // `device`: where the pools live. cuda: appends, decode steps and prefill attention run the
  // kernels of kernels/ (needs a build with them and a libtorch with CUDA; Error otherwise).
  // Inputs may be on either device; outputs come back on the queries' device.
  PagedKVCache(PagedFormat format, int64_t num_layers, int64_t num_kv_heads, int64_t head_dim,
               PagedCapacity capacity = {}, at::Device device = at::kCPU);

  int64_t add_sequence() override;
  void remove_sequence(int64_t seq) override;
  int64_t length(int64_t seq) const override;
  at::Tensor append_and_attend(int64_t seq, int64_t layer, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v) override;
  // One appender call for the batch; on cuda, a batch of single tokens is one decode-kernel
  // launch; prefills attend per sequence over their dequantized pages.
  at::Tensor append_and_attend_batch(int64_t layer, const std::vector<int64_t>& seqs,
                                     const std::vector<int64_t>& counts, const at::Tensor& q,
                                     const at::Tensor& k, const at::Tensor& v) override;
  std::vector<int64_t> kept_tokens(int64_t seq) const override;
  // Pages held (partly filled last pages included), rings and scales.
  StorageBytes storage() const override;
  // The format's bytes per token times the tokens held, plus rings and scales.
  StorageBytes nominal() const override;

  const PagedFormat& format() const { return format_; }
  int64_t free_pages() const { return static_cast<int64_t>(free_.size()); }

 private:
  struct Sequence {
    std::vector<int> pages;  // block-table row: physical page of each logical page
    int slot = 0;            // row in the KIVI rings and fp8 scales
    int64_t length = 0;
  };
  struct Layer {
    at::Tensor k_data, v_data, k_meta, v_meta;  // [pages, kv_heads, page bytes] uint8
    at::Tensor k_ring, v_ring;                  // KIVI: [slots, kv_heads, residual, head_dim] fp16
    at::Tensor k_scale, v_scale;                // fp8: [slots, kv_heads] fp32
    std::vector<bool> calibrated;  // fp8: [slots] scales set by the slot's first append
  };
  Sequence& sequence(int64_t seq);
  const Sequence& sequence(int64_t seq) const;
  // Assigns pages to `s` until they cover `tokens` tokens, growing the pools if allowed.
  void reserve(Sequence& s, int64_t tokens);
  // Extends every layer's pools to `pages` pages / `slots` sequence slots (0xff / NaN filled:
  // a byte nothing wrote reads as NaN).
  void grow_pages(int64_t pages);
  void grow_slots(int64_t slots);
  // fp8: the scales of `slot` from its first tokens k, v ([kv_heads, n, head_dim]).
  void calibrate(Layer& layer, int slot, const at::Tensor& k, const at::Tensor& v) const;
  // The layer's pools as the appender and the decoders see them (rings and scales whole).
  kernels::PagedKvStore store_of(const Layer& layer) const;
  at::Tensor decode(const kernels::PagedKvStore& store, const Sequence& s, bool key,
                    int64_t tokens) const;

  PagedFormat format_;
  at::Device device_;
  int64_t num_layers_, num_kv_heads_, head_dim_;
  int64_t pages_ = 0, slots_ = 0, max_pages_;
  std::vector<Layer> layers_;
  std::vector<int> free_;        // free physical pages (shared by all layers' pools)
  std::vector<int> free_slots_;  // free sequence slots
  int64_t next_id_ = 0;
  std::map<int64_t, Sequence> sequences_;
};

}  // namespace kvbench
