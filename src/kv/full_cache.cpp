#include "kvbench/kv/full_cache.h"

#include <cmath>
#include <limits>

#include "kvbench/attention/cpu_attention.h"
#include "kvbench/attention/reference_attention.h"
#include "kvbench/core/error.h"
#include "kvbench/core/time.h"
#include "kvbench/kv/identity_codec.h"
#include "kvbench/model/rope.h"

namespace kvbench {

AttentionBackend attention_backend_from_name(const std::string& name) {
  if (name == "reference") return AttentionBackend::kReference;
  if (name == "cpu") return AttentionBackend::kCpu;
  throw Error("unknown attention backend '" + name + "' (known: reference, cpu)");
}

CompressedKVCache::CompressedKVCache(std::shared_ptr<const Codec> codec, AttentionBackend backend,
                                     int64_t num_layers, int64_t num_kv_heads, int64_t head_dim,
                                     std::shared_ptr<const RetentionPolicy> policy,
                                     at::Tensor rope_inv_freq)
    : codec_(std::move(codec)),
      policy_(policy ? std::move(policy) : std::make_shared<FullRetention>()),
      evicts_(dynamic_cast<const FullRetention*>(policy_.get()) == nullptr),
      quest_(dynamic_cast<const QuestPolicy*>(policy_.get())),
      backend_(backend),
      num_layers_(num_layers),
      num_kv_heads_(num_kv_heads),
      head_dim_(head_dim),
      rope_inv_freq_(std::move(rope_inv_freq)) {
  KVB_CHECK(!codec_->needs_preparation(), "codec '", codec_->name(),
            "' needs preparation (fitted to the model) before a cache can use it; run the "
            "prepare step (prepare_codec, suites/preparation.h) first");
  KVB_CHECK(!quest_ || codec_->can_drop_tokens(),
            "quest bounds pages by their keys as stored, but ", "codec '", codec_->name(),
            "' re-encodes stored tokens later; use a per-token codec");
  KVB_CHECK(!policy_->cache_positions() ||
                (rope_inv_freq_.defined() && rope_inv_freq_.numel() == head_dim_ / 2),
            "retention policy '", policy_->name(),
            "' gives kept tokens cache positions, which needs the model's RoPE frequencies ([",
            head_dim_ / 2, "]); none were given to the KV cache");
  KVB_CHECK(policy_->timing() != EvictionTiming::kDecode || codec_->can_drop_tokens(),
            "retention policy '", policy_->name(), "' evicts during decode, but codec '",
            codec_->name(), "' cannot drop tokens in place; evict after_prefill instead");
}

int64_t CompressedKVCache::add_sequence() {
  const SequenceTokens tokens = reserved_.empty() ? SequenceTokens{} : reserved_.front();
  if (!reserved_.empty()) reserved_.pop_front();
  Sequence s;  // built whole before it joins the cache
  for (int64_t l = 0; l < num_layers_; ++l) {
    Layer layer;
    layer.keys = codec_->make_layer_key_store(l, num_kv_heads_, head_dim_);
    layer.values = codec_->make_layer_value_store(l, num_kv_heads_, head_dim_);
    const int64_t rows = first_rows(l, tokens);
    if (rows > 0) {
      layer.keys->reserve(tokens.prompt, rows);
      layer.values->reserve(tokens.prompt, rows);
    }
    s.layers.push_back(std::move(layer));
  }
  s.total = tokens.total;
  const int64_t id = next_id_++;
  sequences_.emplace(id, std::move(s));
  return id;
}

void CompressedKVCache::reserve(const std::vector<SequenceTokens>& seqs) {
  reserved_.clear();
  for (const SequenceTokens& s : seqs) {
    KVB_CHECK(s.prompt >= 0 && s.total >= s.prompt, "KV cache: cannot reserve room for a ",
              s.prompt, "-token prompt of a ", s.total, "-token sequence");
    reserved_.push_back(s);
  }
}

void CompressedKVCache::remove_sequence(int64_t seq) {
  KVB_CHECK(sequences_.erase(seq) == 1, "KV cache: unknown sequence ", seq);
}

CompressedKVCache::Sequence& CompressedKVCache::sequence(int64_t seq) {
  auto it = sequences_.find(seq);
  KVB_CHECK(it != sequences_.end(), "KV cache: unknown sequence ", seq);
  return it->second;
}

const CompressedKVCache::Sequence& CompressedKVCache::sequence(int64_t seq) const {
  auto it = sequences_.find(seq);
  KVB_CHECK(it != sequences_.end(), "KV cache: unknown sequence ", seq);
  return it->second;
}

int64_t CompressedKVCache::length(int64_t seq) const { return sequence(seq).length; }

std::vector<int64_t> CompressedKVCache::kept_tokens(int64_t seq) const {
  std::vector<int64_t> kept;
  for (const Layer& l : sequence(seq).layers) kept.push_back(l.keys->size());
  return kept;
}

at::Tensor CompressedKVCache::kept_positions(int64_t seq, int64_t layer) const {
  KVB_CHECK(layer >= 0 && layer < num_layers_, "KV cache: layer ", layer, " out of range");
  const at::Tensor& pos = sequence(seq).layers[static_cast<size_t>(layer)].positions;
  return pos.defined() ? std::get<0>(pos.sort(1)) : pos;
}

at::Tensor CompressedKVCache::attend(const Layer& layer, const at::Tensor& q) const {
  if (policy_->cache_positions() && layer.positions.defined()) {
    at::Tensor out = attend_cache_positions(layer, q);
    if (out.defined()) return out;  // undefined: every held token is at its logical position
  }
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim_));
  // Attention reads what the cache stores, so a lossy codec shows its effect on every token
  // it reads (a prefill's own block excepted: append_and_attend).
  if (backend_ == AttentionBackend::kCpu && q.size(1) == 1) {
    return cpu_decode_attention(q, *layer.keys, *layer.values, num_kv_heads_, scale);
  }
  return block_attention_reference(q, layer.keys->dequantize(), layer.values->dequantize(), scale);
}

TokenRuns CompressedKVCache::quest_runs(const Layer& layer, const at::Tensor& q) const {
  const int64_t heads = q.size(0), held = layer.keys->size(), page = quest_->page_size();
  const at::Tensor qf = q.to(at::kFloat).reshape({heads, head_dim_}).contiguous();
  const at::Tensor pages = quest_->select_pages(layer.pages->bounds(qf));  // ascending per head
  // Adjacent pages merge into one run, so the kernel reads each stretch of rows in one pass.
  TokenRuns runs(static_cast<size_t>(num_kv_heads_));
  for (int64_t h = 0; h < num_kv_heads_; ++h) {
    const int64_t* p = pages[h].data_ptr<int64_t>();
    for (int64_t i = 0; i < pages.size(1); ++i) {
      const int64_t t0 = p[i] * page, t1 = std::min(held, t0 + page);
      if (!runs[h].empty() && runs[h].back()[1] == t0) {
        runs[h].back()[1] = t1;
      } else {
        runs[h].push_back({t0, t1});
      }
    }
  }
  return runs;
}

at::Tensor CompressedKVCache::attend_runs(const Layer& layer, const at::Tensor& q,
                                          const TokenRuns& runs) const {
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim_));
  if (backend_ == AttentionBackend::kCpu) {
    return cpu_decode_attention(q, *layer.keys, *layer.values, num_kv_heads_, scale, &runs);
  }
  // The oracle: the selected rows gathered and attended plainly. Every head reads as many
  // tokens: full pages plus the newest (always selected) page.
  std::vector<int64_t> idx;
  for (const auto& head : runs) {
    for (const auto& run : head) {
      for (int64_t t = run[0]; t < run[1]; ++t) idx.push_back(t);
    }
  }
  at::Tensor rows = at::tensor(idx, at::kLong)
                        .view({num_kv_heads_, -1, 1})
                        .expand({num_kv_heads_, -1, head_dim_});
  return block_attention_reference(q, layer.keys->dequantize().gather(1, rows),
                                   layer.values->dequantize().gather(1, rows), scale);
}

at::Tensor CompressedKVCache::window_attention(const at::Tensor& q, const at::Tensor& k,
                                               int64_t w) const {
  return prefill_window_attention(q, k, w);
}

at::Tensor CompressedKVCache::select(const Layer& layer, RetentionInput in) const {
  // Eviction moves rows (RowMoves), so slots stop being in position order; policies see the
  // held tokens sorted by position and their choice is mapped back to slots.
  const at::Tensor& pos = layer.positions;
  const int64_t held = pos.size(1);
  const bool in_order =
      held < 2 || pos.narrow(1, 1, held - 1).gt(pos.narrow(1, 0, held - 1)).all().item<bool>();
  at::Tensor order;
  in.positions = pos;
  if (!in_order) {
    KVB_CHECK(!in.window_attention.defined(), "window scores need the prefill in order");
    order = std::get<1>(pos.sort(1));
    in.positions = pos.gather(1, order);
    if (in.accumulated.defined()) in.accumulated = in.accumulated.gather(1, order);
    if (in.current.defined()) in.current = in.current.gather(1, order);
    if (in.low_counts.defined()) in.low_counts = in.low_counts.gather(1, order);
  }
  at::Tensor kept = policy_->select(in);
  KVB_CHECK(kept.dim() == 2 && kept.size(0) == num_kv_heads_, "retention policy '", policy_->name(),
            "' selected ", kept.sizes(), " for ", num_kv_heads_, " KV heads");
  return order.defined() ? order.gather(1, kept) : kept;
}

int64_t CompressedKVCache::first_rows(int64_t layer, const SequenceTokens& t) const {
  if (!evicts_ || quest_ || t.total <= 0) return t.total;
  const bool decode = policy_->timing() == EvictionTiming::kDecode;
  RetentionInput in;
  in.layer = layer;
  in.num_layers = num_layers_;
  in.length = decode ? t.total : t.prompt;
  in.prompt = t.prompt;
  const int64_t budget = policy_->budget(in);
  if (t.prompt > budget) return t.prompt;  // the model attends over all of it first
  if (!decode || budget >= t.total) return t.total;
  return budget + 1;  // a decode token enters before the oldest leaves
}

int64_t CompressedKVCache::room_after_eviction(bool prefill, int64_t n, int64_t length,
                                               int64_t total) const {
  if (policy_->timing() == EvictionTiming::kDecode) {
    if (prefill) return 1;
    return n > 1 ? n : -1;
  }
  return total > 0 ? std::max<int64_t>(total - length, 0) : -1;
}

void CompressedKVCache::evict(Layer& layer, const at::Tensor& kept, const at::Tensor& k,
                              const at::Tensor& v, bool prefill, int64_t more) const {
  if (codec_->can_drop_tokens()) {
    // Moves at most as many rows as are dropped: one per head per decode step.
    const RowMoves moves = row_moves(kept, layer.keys->size());
    layer.keys->retain(moves);
    layer.values->retain(moves);
    if (more >= 0) {  // a no-op once the stores are that size
      layer.keys->fit(moves.size + more);
      layer.values->fit(moves.size + more);
    }
    layer.positions = apply_row_moves(layer.positions, moves);
    if (layer.scores.defined()) layer.scores = apply_row_moves(layer.scores, moves);
    if (layer.low.defined()) layer.low = apply_row_moves(layer.low.contiguous(), moves);
    return;
  }
  // Codes that span tokens cannot lose one: store the kept tokens afresh from the prefill's
  // full-precision values (the store holds nothing else yet, in position order).
  KVB_CHECK(prefill && layer.keys->size() == k.size(1), "codec '", codec_->name(),
            "' can only evict at the prefill");
  at::Tensor rows = kept.unsqueeze(-1).expand({kept.size(0), kept.size(1), head_dim_});
  layer.keys = codec_->make_key_store(num_kv_heads_, head_dim_);
  layer.values = codec_->make_value_store(num_kv_heads_, head_dim_);
  if (more >= 0) {
    layer.keys->reserve(kept.size(1), kept.size(1) + more);
    layer.values->reserve(kept.size(1), kept.size(1) + more);
  }
  layer.keys->append(k.gather(1, rows));
  layer.values->append(v.gather(1, rows));
  layer.positions = layer.positions.gather(1, kept);
  if (layer.scores.defined()) layer.scores = layer.scores.gather(1, kept);
  if (layer.low.defined()) {
    const int64_t group = layer.low.size(2), history = layer.low.size(3);
    layer.low = layer.low.gather(
        1, kept.view({num_kv_heads_, -1, 1, 1}).expand({num_kv_heads_, -1, group, history}));
  }
}

void CompressedKVCache::record_low_attention(Layer& layer, const at::Tensor& q,
                                             int64_t start) const {
  const int64_t n = q.size(1), group = q.size(0) / num_kv_heads_;
  const int64_t held = layer.keys->size(), history = policy_->observation_window();
  const int64_t before = layer.low.defined() ? layer.low.size(1) : 0;
  const at::Tensor fresh = at::zeros({num_kv_heads_, held - before, group, history}, at::kBool);
  layer.low = layer.low.defined() ? at::cat({layer.low, fresh}, 1) : fresh;
  const at::Tensor low =
      low_attention(q, layer.keys->dequantize(), layer.positions, start, history);
  const int64_t m = low.size(3), first = start + n - m;
  at::Tensor columns = at::arange(first, first + m, at::kLong).remainder_(history);
  layer.low.index_copy_(3, columns, low);
}

at::Tensor CompressedKVCache::low_attention_counts(const Layer& layer) const {
  return layer.low.sum(3).to(at::kFloat).mean(2);  // [kv_heads, held]
}

at::Tensor CompressedKVCache::cache_offsets(const Layer& layer) const {
  const at::Tensor rank =
      at::argsort(at::argsort(layer.positions, int64_t{1}), int64_t{1});  // [kv_heads, held]
  return rank - layer.positions;
}

at::Tensor CompressedKVCache::attend_cache_positions(const Layer& layer,
                                                     const at::Tensor& q) const {
  const at::Tensor offsets = cache_offsets(layer);
  const int64_t held = offsets.size(1), n = q.size(1);
  // The block's tokens are the n newest held ones (in any slot once eviction has moved rows)
  // and share one offset, the queries'.
  const at::Tensor newest = layer.positions.argmax(1, /*keepdim=*/true);  // [kv_heads, 1]
  const at::Tensor query_offset = offsets.gather(1, newest);              // [kv_heads, 1]
  const at::Tensor in_block = layer.positions.gt(layer.positions.gather(1, newest) - n);
  KVB_CHECK(offsets.eq(query_offset).logical_or_(in_block.logical_not()).all().item<bool>(),
            "KV cache: the new tokens do not share one cache offset");
  // (R(a) q) . (R(b) k) depends on b - a only: a key whose offset equals the query's is
  // attended as stored; another one as if rotated by (its offset - the query's).
  const at::Tensor shift = offsets - query_offset;  // [kv_heads, held]
  const at::Tensor differs = shift.ne(0);
  if (!differs.any().item<bool>()) return at::Tensor();
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim_));
  if (backend_ == AttentionBackend::kCpu && n == 1) {
    // The fused kernel takes one rotated query for a leading run of slots: StreamingLLM's
    // sinks, whose offset is 0 while the window shares the query's.
    const int64_t run = differs[0].sum().item<int64_t>();
    const int64_t delta = shift[0][0].item<int64_t>();
    KVB_CHECK(shift.narrow(1, 0, run).eq(delta).all().item<bool>() &&
                  !differs.narrow(1, run, held - run).any().item<bool>(),
              "KV cache: cache positions need the re-positioned tokens in one leading run");
    // (R(-delta) q) . k == q . (R(delta) k): rotate the query instead of the run's keys.
    const auto [cos, sin] = rope_cos_sin(at::full({1}, -delta, at::kLong), rope_inv_freq_);
    const at::Tensor rotated = apply_rope(q.to(at::kFloat).transpose(0, 1), cos, sin);
    return cpu_decode_attention(q, *layer.keys, *layer.values, num_kv_heads_, scale,
                                /*runs=*/nullptr, rotated.transpose(0, 1).contiguous(), run);
  }
  // Reference: every stored key rotated by its shift, then plain block attention (a block of
  // several queries is the last n slots: nothing is evicted between its append and attend).
  const at::Tensor keys = layer.keys->dequantize();  // [kv_heads, held, d]
  const auto [cos, sin] = rope_cos_sin(shift.reshape({-1}), rope_inv_freq_);
  const at::Tensor rotated =
      apply_rope(keys.reshape({num_kv_heads_ * held, 1, head_dim_}), cos, sin)
          .reshape({num_kv_heads_, held, head_dim_});
  return block_attention_reference(q, rotated, layer.values->dequantize(), scale);
}

void CompressedKVCache::maybe_evict(Layer& layer, RetentionInput& in, const at::Tensor& q,
                                    const at::Tensor& k, const at::Tensor& v, int64_t total) {
  Stopwatch watch;
  in.positions = layer.positions;
  if (policy_->over_budget(in)) {
    switch (policy_->needs()) {
      case RetentionNeeds::kPositions:
        break;
      case RetentionNeeds::kWindowScores:
        KVB_CHECK(in.prefill, "retention policy '", policy_->name(),
                  "' selects at the prefill only");
        in.window_attention = window_attention(q, k, policy_->observation_window());
        break;
      case RetentionNeeds::kScoresEveryStep:
        in.accumulated = layer.scores;
        break;
      case RetentionNeeds::kLastQueryScores:
        in.current = last_query_scores(layer, q);
        break;
      case RetentionNeeds::kLowAttentionCounts:
        in.low_counts = low_attention_counts(layer);
        break;
      case RetentionNeeds::kQueryPages:  // Quest never evicts: it chooses pages per step
        break;
    }
    evict(layer, select(layer, in), k, v, in.prefill,
          room_after_eviction(in.prefill, k.size(1), in.length, total));
  }
  retention_s_ += watch.seconds();
}

at::Tensor CompressedKVCache::last_query_scores(const Layer& layer, const at::Tensor& q) const {
  return newest_query_attention(q, layer.keys->dequantize());
}

void CompressedKVCache::accumulate_scores(Layer& layer, const at::Tensor& q, int64_t start) const {
  const int64_t held = layer.keys->size();
  const at::Tensor fresh =
      at::zeros({num_kv_heads_, held - (layer.scores.defined() ? layer.scores.size(1) : 0)});
  layer.scores = layer.scores.defined() ? at::cat({layer.scores, fresh}, 1) : fresh;
  layer.scores.add_(summed_attention(q, layer.keys->dequantize(), layer.positions, start));
}

at::Tensor CompressedKVCache::append_and_attend(int64_t seq, int64_t layer_index,
                                                const at::Tensor& q, const at::Tensor& k,
                                                const at::Tensor& v) {
  Sequence& s = sequence(seq);
  KVB_CHECK(layer_index >= 0 && layer_index < num_layers_, "KV cache: layer ", layer_index,
            " out of range");
  Layer& layer = s.layers[static_cast<size_t>(layer_index)];
  const int64_t start = s.length, n = k.size(1);  // start: the first new token's position
  const bool prefill = start == 0;
  if (prefill) s.prompt = n;
  layer.keys->append(k);
  layer.values->append(v);
  if (layer_index == num_layers_ - 1) s.length += n;
  // The prompt's prefill (a first block of more than one token) attends its keys and values as
  // computed, unless the codec's are the stored ones (Codec::prefill_reads_stored); later
  // blocks and decode steps read the cache. The policies' scores come from what is stored.
  auto attend_block = [&] {
    if (!prefill || n == 1 || codec_->prefill_reads_stored()) return attend(layer, q);
    const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim_));
    auto computed = [&](const at::Tensor& x) { return x.to(computed_dtype_).to(at::kFloat); };
    return block_attention_reference(q.to(at::kFloat), computed(k), computed(v), scale);
  };
  if (!evicts_) return attend_block();
  if (quest_) {
    if (layer_index >= quest_->dense_layers()) {
      if (!layer.pages) {
        layer.pages = std::make_unique<QuestPages>(num_kv_heads_, head_dim_, quest_->page_size());
      }
      // Page bounds and the page choice are Quest's retention work.
      Stopwatch watch;
      layer.pages->append(*layer.keys, n);
      if (n == 1 && !prefill && quest_->sparse(layer_index, layer.keys->size())) {
        const TokenRuns runs = quest_runs(layer, q);
        retention_s_ += watch.seconds();
        return attend_runs(layer, q, runs);
      }
      retention_s_ += watch.seconds();
    }
    return attend_block();
  }

  at::Tensor fresh = at::arange(start, start + n, at::kLong).expand({num_kv_heads_, n});
  layer.positions =
      layer.positions.defined() ? at::cat({layer.positions, fresh}, 1) : fresh.contiguous();
  const bool may_evict = prefill || policy_->timing() == EvictionTiming::kDecode;
  RetentionInput in;
  in.layer = layer_index;
  in.num_layers = num_layers_;
  in.length = start + n;
  in.prefill = prefill;
  in.prompt = s.prompt;
  in.positions = layer.positions;
  const RetentionNeeds needs = policy_->needs();
  if (needs == RetentionNeeds::kScoresEveryStep || needs == RetentionNeeds::kLastQueryScores ||
      needs == RetentionNeeds::kLowAttentionCounts) {
    // Every query attends everything held (itself included) and its per-step state is
    // recorded; the layer shrinks afterwards, as the H2O reference does it.
    at::Tensor out = attend_block();
    // A policy selecting once after the prefill reads nothing it records later: its records
    // end with that selection (as the paged caches drop theirs).
    if (!may_evict) return out;
    Stopwatch watch;
    if (needs == RetentionNeeds::kScoresEveryStep) accumulate_scores(layer, q, start);
    if (needs == RetentionNeeds::kLowAttentionCounts) record_low_attention(layer, q, start);
    retention_s_ += watch.seconds();
    maybe_evict(layer, in, q, k, v, s.total);
    if (policy_->timing() != EvictionTiming::kDecode) layer.scores = layer.low = at::Tensor();
    return out;
  }
  if (!may_evict || !policy_->over_budget(in)) return attend_block();
  if (n == 1 && !prefill) {  // a decode token: evict first, then it attends what stays
    maybe_evict(layer, in, q, k, v, s.total);
    return attend_block();
  }
  // A block: every query sees everything held plus the block; the layer shrinks afterwards.
  at::Tensor out = attend_block();
  maybe_evict(layer, in, q, k, v, s.total);
  return out;
}

void CompressedKVCache::append_unattended(int64_t seq, int64_t layer_index, const at::Tensor& k,
                                          const at::Tensor& v) {
  KVB_CHECK(!evicts_ || quest_, "append_unattended: retention policy '", policy_->name(),
            "' selects from what attention sees; feed it through append_and_attend");
  Sequence& s = sequence(seq);
  KVB_CHECK(layer_index >= 0 && layer_index < num_layers_, "KV cache: layer ", layer_index,
            " out of range");
  Layer& layer = s.layers[static_cast<size_t>(layer_index)];
  layer.keys->append(k);
  layer.values->append(v);
  if (layer_index == num_layers_ - 1) s.length += k.size(1);
  if (quest_ && layer_index >= quest_->dense_layers()) {
    if (!layer.pages) {
      layer.pages = std::make_unique<QuestPages>(num_kv_heads_, head_dim_, quest_->page_size());
    }
    layer.pages->append(*layer.keys, k.size(1));
  }
}

uint64_t CompressedKVCache::retention_bytes() const {
  uint64_t bytes = 0;
  for (const auto& [id, s] : sequences_)
    for (const Layer& l : s.layers)
      for (const at::Tensor* t : {&l.positions, &l.scores, &l.low})
        if (t->defined()) bytes += uint64_t(t->nbytes());
  return bytes;
}

uint64_t CompressedKVCache::allocated_bytes() const {
  uint64_t total = codec_->shared_bytes().total();
  for (const auto& [id, s] : sequences_) {
    for (const auto& l : s.layers) {
      total += l.keys->allocated_bytes() + l.values->allocated_bytes();
      if (l.pages) total += l.pages->bytes();
    }
  }
  return total;
}

StorageBytes CompressedKVCache::storage() const {
  StorageBytes total = codec_->shared_bytes();  // bases and factors, once for every sequence
  for (const auto& [id, s] : sequences_) {
    for (const auto& l : s.layers) {
      total += l.keys->bytes();
      total += l.values->bytes();
      if (l.pages) total.metadata += l.pages->bytes();
    }
  }
  return total;
}

StorageBytes CompressedKVCache::nominal() const {
  StorageBytes total = codec_->shared_nominal();
  for (const auto& [id, s] : sequences_) {
    for (size_t i = 0; i < s.layers.size(); ++i) {
      const Layer& l = s.layers[i];
      if (quest_ && static_cast<int64_t>(i) >= quest_->dense_layers()) {
        total.metadata += QuestPages::nominal_bytes(l.keys->size(), num_kv_heads_, head_dim_,
                                                    quest_->page_size());
      }
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
                        num_layers, num_kv_heads, head_dim) {
  set_computed_dtype(dtype);  // its prefill reads what it stores, chunked or not
}

}  // namespace kvbench
