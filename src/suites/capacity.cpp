#include "kvbench/suites/capacity.h"

#include <algorithm>
#include <cmath>

#include "kvbench/core/error.h"
#include "kvbench/kv/attention_record.h"
#include "kvbench/kv/gear_codec.h"
#include "kvbench/kv/latent_pages_cache.h"
#include "kvbench/kv/method_registry.h"
#include "kvbench/kv/paged_cache.h"
#include "kvbench/kv/quest_policy.h"

namespace kvbench {

CacheLayout CacheLayout::of(bool paged, bool kernel_path, bool ring) {
  CacheLayout out;
  out.paged = paged;
  if (!paged) {
    out.before_selection = out.after_selection = sizeof(int64_t);
  } else if (!ring) {
    out.before_selection = out.after_selection =
        sizeof(int32_t) * (kernel_path ? 2 : 1) + sizeof(int64_t);
    out.exact = false;
  }
  return out;
}

CacheLayout CacheLayout::for_method(const nlohmann::json& method, at::ScalarType dtype,
                                    int64_t head_dim, bool paged, bool kernel_path) {
  if (!paged) return of(false, kernel_path);
  const PagedRetention held = paged_retention_of(method, dtype);
  CacheLayout out = of(true, kernel_path, held.ring);
  out.compacting_page = held.compacting_page;
  out.listing_page = held.listing_page;
  const std::shared_ptr<const Codec> codec = make_codec(method, dtype);
  out.storage_factor = paged_storage_factor(*codec, head_dim, kernel_path);
  out.pages = paged_sequence_bytes_of(method, dtype, head_dim);
  if (const auto* gear = dynamic_cast<const GearCodec*>(codec.get())) {
    out.exact_buffer = gear->gear_params().buffer;
    out.exact_row_bytes = 2 * uint64_t(head_dim) * at::elementSize(gear->model_dtype());
  }
  if (dynamic_cast<const LowRankCodec*>(codec.get()) != nullptr) {
    out.latent_page = paged_format_16bit(dtype).page_size;
    out.latent_bases = latent_bases_bytes(*codec, head_dim, dtype, kernel_path);
  }
  return out;
}

bool CacheLayout::kernel_path(bool gpu) { return gpu || paged_kernel_path_on_cpu(); }

uint64_t retention_bytes_per_token(const RetentionPolicy& policy, const ModelConfig& c,
                                   const CacheLayout& index, bool entering) {
  if (dynamic_cast<const FullRetention*>(&policy) != nullptr ||
      dynamic_cast<const QuestPolicy*>(&policy) != nullptr)
    return 0;
  const uint64_t record = record_bytes_per_token(policy, c.group_size());
  const bool recording = entering || policy.timing() == EvictionTiming::kDecode;
  return uint64_t(c.num_kv_heads) *
         ((entering ? index.before_selection : index.after_selection) + (recording ? record : 0));
}

namespace {

// The slots a sequence of a paged cache listing in place (CacheLayout::listing_page, pages of
// `page` tokens) may hold at every layer once `t` tokens have entered: the pages of a span
// policy's prefix and of its newest tokens from the page where they start (a policy evicting
// once after the prefill: as the prefill left them, then every decoded token), the longest
// layer's; every token under any other policy.
int64_t listed_slots(int64_t page, const RetentionPolicy& policy, int64_t num_layers,
                     int64_t prompt, int64_t t) {
  RetentionInput in;
  in.num_layers = num_layers, in.prompt = prompt;
  in.length = policy.timing() == EvictionTiming::kDecode ? t : prompt;
  int64_t most = 0;
  for (in.layer = 0; in.layer < num_layers; ++in.layer) {
    const std::optional<RetentionSpan> span = policy.span(in);
    if (!span) return t;
    const int64_t prefix_pages = (span->prefix + page - 1) / page * page,
                  newest_from = span->newest / page * page;
    most = std::max(most, prefix_pages >= newest_from ? t : prefix_pages + (t - newest_from));
  }
  return std::min(t, most);
}

}  // namespace

SequenceKvBytes sequence_kv_bytes(const Codec& codec, const RetentionPolicy& policy,
                                  const ModelConfig& c, int64_t prompt, int64_t context,
                                  const CacheLayout& index) {
  KVB_CHECK(prompt >= 1 && context >= prompt, "capacity: context (", context,
            ") must be >= the prompt (", prompt, ") >= 1");
  const auto* quest = dynamic_cast<const QuestPolicy*>(&policy);
  SequenceKvBytes out;
  out.shared =
      codec.shared_nominal().total() + uint64_t(c.num_layers * c.num_kv_heads) * index.latent_bases;
  out.whole_pages = index.pages.page > 0 || index.latent_page > 0 || index.exact_buffer > 0;
  const uint64_t held_bookkeeping = retention_bytes_per_token(policy, c, index, false);
  const uint64_t prefill_bookkeeping = retention_bytes_per_token(policy, c, index, true);
  out.retention_exact = held_bookkeeping == 0 || index.exact;
  out.retention_per_held_token = held_bookkeeping;
  RetentionInput in;
  in.num_layers = c.num_layers;
  in.prompt = prompt;
  auto held_at = [&](int64_t layer, int64_t t) {
    in.layer = layer;
    if (policy.timing() == EvictionTiming::kDecode) {
      in.length = t;
      return std::min(t, policy.budget(in));
    }
    in.length = prompt;
    const int64_t budget = policy.budget(in);
    return budget >= prompt ? t : budget + (t - prompt);
  };
  // The bytes of `tokens` at one layer as the cache stores them, `first` of them from the
  // prefill (or what a policy kept of it) and the rest one per decode step: whole pages and
  // what comes beside them, or the codec's formula (latent rows at their stored width; GEAR's
  // blocks as they formed, and its buffers whole on the paged path).
  auto codec_bytes = [&](int64_t first, int64_t tokens) {
    if (index.pages.page > 0) return uint64_t(c.num_kv_heads) * index.pages.of(tokens);
    const int64_t page = std::max<int64_t>(index.latent_page, 1),
                  rounded = (tokens + page - 1) / page * page;
    const uint64_t nominal =
        codec.sequence_nominal_bytes(std::min(first, rounded), rounded, c.num_kv_heads, c.head_dim)
            .total() +
        index.idle_buffer_bytes(tokens, c.num_kv_heads);
    if (index.storage_factor == 1.0) return nominal;
    return static_cast<uint64_t>(std::llround(static_cast<double>(nominal) * index.storage_factor));
  };
  // Bytes are not monotone in the tokens (KIVI's window folds into quantized groups), so the
  // sequence's size is the largest over its states, from the prefill to `context` tokens.
  for (int64_t t = prompt; t <= context; ++t) {
    uint64_t bytes = 0, bookkeeping = 0;
    std::vector<int64_t> held;
    // A compacting paged cache holds one count of slots at every layer (its pages' table is the
    // sequence's): the longest layer's kept tokens, and free slots until it compacts again.
    int64_t slots = -1;
    if (index.compacting_page > 0) {
      const CompactedSlots held_slots =
          compacted_slots(index.compacting_page, policy, c.num_layers, prompt, t);
      slots = held_slots.slots;
      out.kv_exact = out.kv_exact && !held_slots.bounded;
    } else if (index.listing_page > 0) {
      slots = listed_slots(index.listing_page, policy, c.num_layers, prompt, t);
      int64_t longest = 0;
      for (int64_t l = 0; l < c.num_layers; ++l) longest = std::max(longest, held_at(l, t));
      out.kv_exact = out.kv_exact && slots <= longest;  // nothing evicted: the tokens themselves
      slots = std::max(slots, longest);
    }
    for (int64_t l = 0; l < c.num_layers; ++l) {
      held.push_back(held_at(l, t));
      bookkeeping += uint64_t(held.back()) * held_bookkeeping;
      bytes +=
          slots >= 0 ? codec_bytes(slots, slots) : codec_bytes(held_at(l, prompt), held.back());
      if (quest && l >= quest->dense_layers()) {
        bytes +=
            QuestPages::nominal_bytes(held.back(), c.num_kv_heads, c.head_dim, quest->page_size());
      }
    }
    out.per_sequence = std::max(out.per_sequence, bytes);
    out.retention = std::max(out.retention, bookkeeping);
    if (t == context) out.held_per_layer = held;
  }
  // A layer's bookkeeping forms as it attends the prompt and goes to its held state with that
  // layer's selection, before the next layer's forms: at most the layers before the last held,
  // the last one entering.
  for (int64_t l = 0; l + 1 < c.num_layers; ++l)
    out.prefill_retention += uint64_t(held_at(l, prompt)) * held_bookkeeping;
  out.prefill_retention += uint64_t(prompt) * prefill_bookkeeping;
  // The keys and values likewise on the CPU cache (a layer holds more entering than held, and
  // the layers' whole prompts are alike, so the last layer's moment is the most); on the paged
  // cache every layer's pages whole for the prompt.
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const int64_t tokens = index.paged || l + 1 == c.num_layers ? prompt : held_at(l, prompt);
    out.prefill += codec_bytes(tokens, tokens);
    if (quest && l >= quest->dense_layers())
      out.prefill +=
          QuestPages::nominal_bytes(tokens, c.num_kv_heads, c.head_dim, quest->page_size());
  }
  return out;
}

uint64_t SequenceKvBytes::batch_bytes(int64_t batch) const {
  if (batch <= 0) return shared;
  const uint64_t held = per_sequence + retention;
  return shared + static_cast<uint64_t>(batch - 1) * held +
         std::max(held, prefill + prefill_retention);
}

int64_t largest_batch(double budget_bytes, const SequenceKvBytes& bytes) {
  KVB_CHECK(bytes.per_sequence > 0, "capacity: a sequence takes 0 KV bytes");
  const double left = budget_bytes - static_cast<double>(bytes.batch_bytes(1));
  if (left < 0) return 0;
  const double each = static_cast<double>(bytes.per_sequence + bytes.retention);
  return 1 + static_cast<int64_t>(std::floor(left / each));
}

}  // namespace kvbench
