// The KV cache of the GPU path, runnable on the CPU: every layer's keys and values in pools of
// pages in a kernels/kv_format.h format, one block table per sequence shared by all layers
// (vLLM's layout), new tokens written by the quantize-on-append units (kernels/kv_append.h)
// that the GPU appender runs too. On the CPU, attention runs over what the pages decode to
// (kernels/kv_paged_decode.h) with the reference attention: the same numbers the GPU decode
// kernel must produce, so this cache is the GPU path's oracle on any machine.
//
// Pools start at `PagedCapacity::pages` and grow by a quarter (at least what a step needs)
// when full, up to `max_pages` when one is
// set (a serving engine sizes its pool once from free memory: max_pages = pages); running out
// is then an error that says how many pages were needed. reserve() and reserve_pool() size
// them beforehand (generate() and the fidelity suite call the first, the serving suite the
// second), so a run's pools hold what it can need; steps grow them only past that (a
// retention policy's pages past its prompt, or past the serving scheduler's blocks).
//
// With a retention policy (StreamingLLM with original positions, SnapKV, PyramidKV, H2O, TOVA,
// ScissorHands; Quest reads chosen pages and evicts none) each (sequence, layer) keeps its
// retained slots as a list per KV head and a tail of newest tokens every head keeps (Retained),
// and attention reads the retained tokens by index (kernels/retained_decode.h on the GPU). A
// prefill's selection over a per-token format is compacted (compacts()): each head's kept
// tokens fill its first slots, the pages past them go back, and decode reads every slot with
// the dense kernel (a layer keeping fewer than the longest: its slots by index) until a
// policy evicting during decode (H2O, TOVA, ScissorHands) selects again: its choices then list
// slots, which its policy sees as logical positions, and once the slots no head keeps fill a
// page (or an eighth of the kept ones, when more) the kept slots are compacted again at a step's
// end (recompact()). A selection over KIVI moves no token: a page is freed once no layer and no
// head of its sequence retains a token in it and no later append writes it, so memory falls
// at page granularity (a per-head selection frees only pages every head left). StreamingLLM
// evicting during decode over a per-token format keeps its tokens in a ring of sinks + window slots
// instead (rings()): each decode token is written over the one leaving, and every slot is read with
// the dense kernel. Tokens are selected as the reference cache selects them (same policy
// inputs), but KIVI groups keep the tokens they were quantized with (the reference cache
// re-quantizes the kept ones).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kv_append.h"
#include "kv_format.h"
#include "kvbench/kv/attention_record.h"
#include "kvbench/kv/kv_cache.h"
#include "kvbench/kv/retention_policy.h"
#include "kvbench/kv/steady_buffers.h"
#include "steady_evict.h"

namespace kvbench {

namespace paged_cuda {
struct DecodeBatch;  // src/kv/paged_cache_cuda.h
}

// Whether t is on `device`, where a device without an index (the config's "cuda") means the
// current one: at::Device("cuda") == cuda:0 is false, so comparing devices would take every
// tensor there as elsewhere.
inline bool on_device(const at::Tensor& t, const at::Device& device) {
  return t.device().type() == device.type() &&
         (!device.has_index() || t.device().index() == device.index());
}
class QuestPolicy;

// A method's paged storage: format, page size (KIVI: its group), KIVI's window, and the fp8
// scale rule (calibrated per sequence from its first tokens as the fp8 codec does, or fixed).
struct PagedFormat {
  kernels::KvFormat format = kernels::KvFormat::kFp16;
  int page_size = 16;
  int residual = 0;
  bool fp8_amax = true;
  double fp8_scale_value = 1.0, fp8_key_amax_divisor = 200.0, fp8_value_amax_divisor = 100.0;
  bool fp8_per_head = true;
  // Pages another cache attends with its own kernel (PaluPagedCache's latents): the paged
  // decode kernels' head_dim limits do not apply (the appender takes multiples of 32).
  bool own_attention = false;
  // A prompt's prefill attends the pages as stored (PagedKVCache::attends_computed): latent
  // pages, whose method's keys are the reconstruction itself.
  bool prefill_reads_stored = false;
  // Otherwise it attends its keys and values rounded to this dtype (model.dtype, which
  // paged_format_for sets), as the full cache of that dtype stores them; Undefined: the
  // kernels' 16-bit input dtype (PagedKVCache::computed_dtype()).
  at::ScalarType computed_dtype = at::ScalarType::Undefined;
};

// The ring a paged cache of `format` keeps `policy`'s tokens in (PagedKVCache::rings): the
// policy's sinks and window (RetentionPolicy::sinks_and_window) over a format whose tokens may
// sit in any slot. Not KIVI's (its key groups span tokens) nor pages attended by their own
// kernel (format.own_attention: it reads them as it lays them out). A ring lists no kept
// positions: it keeps no retention bookkeeping.
std::optional<SinksAndWindow> paged_ring(const PagedFormat& format, const RetentionPolicy* policy);
// Whether a paged cache of `format` compacts what `policy` keeps (PagedKVCache::compacts): an
// evicting policy but Quest's and a ring's, over a per-token format whose pages the paged
// kernels attend.
bool paged_compacts(const PagedFormat& format, const RetentionPolicy* policy);
// The slots a sequence of a compacting paged cache (pages of `page_size` tokens, `num_layers`
// layers) holds once `total` tokens have entered, `prompt` of them its prompt: its compacted
// prompt (the longest layer's prefill budget) and the tokens after it; under a policy evicting
// during decode (one token a step after the prompt) at most the longest layer's budget plus
// the free slots recompaction lets grow past it, a page or an eighth of the budget, whichever
// is more (a step's token included: the step reaching the bound compacts at its end). Every
// layer holds this many slots: they are the sequence's K/V bytes. The policies evicting during
// decode have budgets that do not vary with the length; one that did would need the most over
// lengths prompt..total. `bounded`: the bound decided, so the slots held depend on when the
// cache last compacted (else they are exactly `slots`).
struct CompactedSlots {
  int64_t slots = 0;
  bool bounded = false;
};
CompactedSlots compacted_slots(int64_t page_size, const RetentionPolicy& policy, int64_t num_layers,
                               int64_t prompt, int64_t total);
// The slots past the longest layer's `kept` tokens a compacting paged cache lets grow before it
// compacts again (compacted_slots).
inline int64_t recompaction_slack(int64_t page_size, int64_t kept) {
  return std::max<int64_t>(page_size, kept / 8);
}

// What a paged cache of `format` stores per KV head and layer: one page of keys and values
// (codes and metadata; its empty slots too), and what each sequence holds beside its pages
// from its first token (KIVI's two full-precision rings of `residual` rows, filled or not;
// fp8's two scales). PagedKVCache::storage() counts these; capacity and serving plan by them.
StorageBytes paged_page_bytes(const PagedFormat& format, int64_t head_dim);
StorageBytes paged_sequence_reserve(const PagedFormat& format, int64_t head_dim);

// The paged format of a resolved method entry with uncompressed storage `model_dtype`.
// Throws Error naming the method and what the paged formats offer when there is none.
// A retention method's format is its codec's.
PagedFormat paged_format_for(const nlohmann::json& method, at::ScalarType model_dtype);
// The 16-bit paged format of values stored as `dtype` (fp16; bf16 otherwise): latent pages'.
inline PagedFormat paged_format_16bit(at::ScalarType dtype) {
  return paged_format_for({{"name", dtype == at::kHalf ? "fp16" : "bf16"}}, dtype);
}
// Attention of a block's queries q [heads, n, head_dim] fp32 over keys and values [kv_heads,
// L, head_dim] fp32 whose last n are the block's own (causal within the block), in chunks of
// queries; a fresh prefill on a GPU goes through PyTorch's fused SDPA in fp16. The paged
// caches' prefill attention.
at::Tensor paged_block_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 double scale);
// append_and_attend of the paged caches: one sequence's block (q [heads, n, head_dim], k and v
// [kv_heads, n, head_dim]) as a batch of one.
at::Tensor attend_as_batch_of_one(KVCache& cache, int64_t seq, int64_t layer, const at::Tensor& q,
                                  const at::Tensor& k, const at::Tensor& v);
// Throws Error unless `layer` is in [0, num_layers) and q [n, heads, head_dim], k and v
// [n, kv_heads, head_dim] are a packed batch's block.
void check_batch_block(int64_t layer, int64_t num_layers, const at::Tensor& q, const at::Tensor& k,
                       const at::Tensor& v, int64_t kv_heads, int64_t head_dim);
// Throws Error when the paged cache cannot run `policy` (it needs per-step scores or cache
// positions); null and FullRetention are fine.
void check_paged_policy(const RetentionPolicy* policy);
// The steady-state kernel's rule (kernels/steady_evict.h) for a policy that drops its lowest
// score (RetentionPolicy::drops_lowest).
kernels::SteadyRule steady_rule(const RetentionPolicy& policy);

struct PagedCapacity {
  int64_t pages = 64;     // pages per layer pool at first (a page: page_size tokens, every KV head)
  int64_t max_pages = 0;  // the pools grow up to this many pages; 0: no limit
  int64_t sequences = 4;  // sequence slots (KIVI rings, fp8 scales) at first; they double
};

// Host lists of positions (int32 or int64) as int32 on `device`, in one copy from pinned
// memory on a GPU (not one per list): the buffer holding them and each list's first element in
// it (elsewhere: each list itself as int32, offset 0). The buffer lives while any list in it is
// in use: upload together lists that are replaced together (a step's selections), or one
// long-lived list keeps its step's whole buffer (at most the step's lists of that layer).
struct UploadedList {
  at::Tensor buffer;
  int64_t offset = 0;
};
std::vector<UploadedList> upload_lists(const std::vector<at::Tensor>& hosts,
                                       const at::Device& device);
// upload_lists' packing: the host lists (int32 or int64, any strides) as int32, one after
// another from `to` (room for all their elements); each list's first element's offset.
std::vector<int64_t> pack_lists(const std::vector<at::Tensor>& hosts, int* to);
// A retained-index step's per-sequence table (kernels/retained_decode.h's kept_lists,
// kept_counts and tail_start), written on the host into one buffer (B int64 list addresses,
// then B counts and B tails as int32 in the next B int64 words, zero until set), so that one
// copy takes it up to `device` (pinned host memory when that is a GPU). `layers` tables one
// after another: a step's layers, taken up in that one copy.
class ListTable {
 public:
  ListTable(int64_t batch, const at::Device& device, int64_t layers = 1);
  void set(int64_t b, const UploadedList& list, int64_t count, int64_t tail, int64_t layer = 0);
  // Every table on `device` (from pinned memory on a GPU, queued without waiting; elsewhere
  // the host buffer itself): [layers * 2B] int64.
  at::Tensor upload(const at::Device& device) const;
  // Table `layer` of upload()'s: the [B] int64 addresses and the [2B] int32 counts then tails.
  static std::pair<at::Tensor, at::Tensor> of_layer(const at::Tensor& uploaded, int64_t batch,
                                                    int64_t layer);
  // Whether table `layer` holds for sequence b what set() would write for these.
  bool holds(int64_t b, const UploadedList& list, int64_t count, int64_t tail, int64_t layer) const;
  // upload() of a single table, as of_layer() gives it.
  std::pair<at::Tensor, at::Tensor> on(const at::Device& device) const {
    return of_layer(upload(device), batch_, 0);
  }

 private:
  int64_t batch_, layers_;
  at::Tensor packed_;
  // The word set() writes for `list`: its first element's address, 0 for none.
  static int64_t address_of(const UploadedList& list);

  // packed_'s words: per layer B addresses, then B words holding 2B int32 (no operator per
  // set()).
  int64_t* words_;
};

class PagedKVCache final : public KVCache {
 public:
  // `device`: where the pools live. cuda: appends, decode steps and prefill attention run the
  // kernels of kernels/ (needs a build with them and a libtorch with CUDA; Error otherwise).
  // Inputs may be on either device; outputs come back on the queries' device.
  // `policy`: which tokens stay (check_paged_policy); null: every token.
  // `kernel_path_on_cpu` (tests): pools on the CPU, but steps take the GPU path (block tables,
  // retained lists and tails, kernel scores) with the kernels' host references in place of
  // the kernels, so that path is checked on machines without a GPU.
  PagedKVCache(PagedFormat format, int64_t num_layers, int64_t num_kv_heads, int64_t head_dim,
               PagedCapacity capacity = {}, at::Device device = at::kCPU,
               std::shared_ptr<const RetentionPolicy> policy = nullptr,
               bool kernel_path_on_cpu = false);

  int64_t add_sequence() override;
  void remove_sequence(int64_t seq) override;
  int64_t length(int64_t seq) const override;
  // The tokens of its first block (RetentionInput::prompt): set as that block's step begins;
  // 0 before.
  int64_t prompt(int64_t seq) const;
  at::Tensor append_and_attend(int64_t seq, int64_t layer, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v) override;
  // One appender call for the batch; on cuda, a batch of single tokens is one decode-kernel
  // launch; prefills attend per sequence over their dequantized pages.
  at::Tensor append_and_attend_batch(int64_t layer, const std::vector<int64_t>& seqs,
                                     const std::vector<int64_t>& counts, const at::Tensor& q,
                                     const at::Tensor& k, const at::Tensor& v) override;
  // Stores new tokens without attending (benchmarks fill caches this way); k, v packed as in
  // append_and_attend_batch. Not with a retention policy.
  void append_batch(int64_t layer, const std::vector<int64_t>& seqs,
                    const std::vector<int64_t>& counts, const at::Tensor& k, const at::Tensor& v);
  // What a cache built on these pages reads to attend with its own kernel (PaluPagedCache):
  // the layer's pools and the step's tables after the new rows were stored.
  struct StepPages {
    kernels::PagedKvStore store;
    at::Tensor table;    // [batch, max_pages] int32 block tables, where the pools are
    at::Tensor lengths;  // [batch] int32 lengths with the new rows, where the pools are
    std::vector<int64_t> old_lengths;  // [batch] before the new rows
    int64_t max_len = 0;               // the longest new length
  };
  // Stores the batch's new rows as append_batch does (the step's tables built at layer 0 and
  // shared by its later layers) and returns what was written where. Not with a retention
  // policy (the outer cache selects and calls retain()); the new rows join what a layer keeps.
  StepPages append_pages(int64_t layer, const std::vector<int64_t>& seqs,
                         const std::vector<int64_t>& counts, const at::Tensor& k,
                         const at::Tensor& v);
  // Another cache's selection (PaluPagedCache, which attends with its own kernel): `layer` of
  // `seq` keeps `kept` ([kv_heads, held] int64 positions on the host, ascending per head, each
  // < `length`, the sequence's length with the step's rows) from now on, as a policy's choice
  // would: kept_tokens, listed_positions and the bytes follow it, and a page goes back to the
  // pool once no layer and no head keeps a token in it (every layer must have selected).
  // `max_tail`: at most that many newest tokens in the tail every head keeps (-1: the longest
  // run every head keeps), as a policy dropping its lowest score asks (its window) so that its
  // steady state can drop from the list.
  void retain(int64_t seq, int64_t layer, const at::Tensor& kept, int64_t length,
              int64_t max_tail = -1);
  // What another cache's steady-state eviction reads of `layer` of `seq` (PaluPagedCache runs
  // kernels/steady_evict.h over these lists): whether it lists positions, how many per head,
  // the tail's start, and the list's copy where the pools are (undefined buffer: none yet).
  struct ListState {
    bool selected = false;
    int64_t count = 0, tail = 0;
    UploadedList device;
  };
  ListState list_state(int64_t seq, int64_t layer) const;
  // Tokens per head `layer` of `seq` holds once it is `length` tokens long.
  int64_t held(int64_t seq, int64_t layer, int64_t length) const;
  // The list's copy where the pools are, uploaded by the caller.
  void set_device_list(int64_t seq, int64_t layer, const UploadedList& list);
  // The caller's kernel dropped one listed token per head where the pools are and wrote the
  // list without it, the tail's first token appended, as `list`: the tail starts one later,
  // and the host copy is stale until settle() brings it back.
  void evicted_on_device(int64_t seq, int64_t layer, const UploadedList& list);
  // From now on the caller settles every step (settle() after its last layer): a step's end
  // neither copies lists back nor frees pages, and retain() frees none.
  void defer_settling() { defer_settling_ = true; }
  // After a step's last layer: the host copies of the lists evicted on the device, in one
  // copy back (one wait for the device), then the pages no layer retains go back to the pool.
  void settle(const std::vector<int64_t>& seqs);
  // The host copies of `layer`'s lists of `seqs` evicted on the device and not yet back (none
  // once a step has settled: a step that stopped before its last layer left them), in one
  // copy; nothing to do, and no wait, when there are none.
  void refresh(const std::vector<int64_t>& seqs, int64_t layer);
  // One query per sequence over its stored tokens, nothing appended: q [batch, heads, head_dim]
  // -> [batch, heads, head_dim] fp32 on q's device; on the kernel path, a q already on the
  // cache's device in the kernel's dtype (fp16; bf16 for kBf16) gets the kernel's output in
  // that dtype. The tables of an unchanged batch are kept on the device, so a repeated call is
  // one decode-kernel launch (what the kernels suite times). Not with a retention policy.
  at::Tensor attend_batch(int64_t layer, const std::vector<int64_t>& seqs, const at::Tensor& q);
  // Tokens each layer retains (per KV head).
  std::vector<int64_t> kept_tokens(int64_t seq) const override;
  // Pages held (partly filled last pages included), rings and scales.
  StorageBytes storage() const override;
  // The format's bytes per token times the tokens retained, plus rings and scales (KIVI: the
  // tokens entered, as its pages keep them).
  StorageBytes nominal() const override;
  // Every layer's pools (free pages included), rings and scales, and Quest's page bounds.
  uint64_t allocated_bytes() const override;
  // Pools of exactly the pages the live sequences hold plus those the new ones can need, at
  // most max_pages: whole pages per sequence for its total tokens; under an evicting policy
  // for its prompt or, when more, what stays after it (a ring's slots, or slots_needed), and
  // slots for them all. With no sequence live the pools are made again at that size
  // (shrinking too), else they only grow. After reserve_pool: nothing (the pool is the
  // engine's budget, which its scheduler keeps to).
  void reserve(const std::vector<SequenceTokens>& seqs) override;
  // Pages for `tokens` more tokens in blocks of `block` held by at most `sequences` sequences
  // (ceil(tokens / page_size) where page_size divides `block`; else floor(tokens / page_size)
  // and one per sequence, whose last page may reach past its blocks: a sequence's pages are at
  // most its blocks' tokens / page_size + 1, so the total fits) and `sequences` more slots,
  // sized as reserve() sizes them.
  void reserve_pool(int64_t sequences, int64_t tokens, int64_t block, int64_t longest) override;
  // A sequence's ring and scales (paged_sequence_reserve) and, where pages do not tile blocks
  // of `block` tokens, the page reserve_pool adds for it, in every layer.
  uint64_t slot_bytes(int64_t block) const override;
  double retention_seconds() const override { return retention_s_; }
  // Every layer's kept lists (int32: the host copy, and the kernels' copy once uploaded), the
  // positions a compaction moved (int64), H2O's sums (fp32) and ScissorHands' history (bool).
  uint64_t retention_bytes() const override;
  double device_wait_seconds() const override { return waited_s_; }
  // Retained-index list tables built so far (tests: at most one per decode step).
  int64_t list_tables() const { return list_tables_; }
  at::Device device() const override { return device_; }
  // On a GPU, the kernels' fp16/bf16, with a policy too: every policy path converts what it
  // reads (the gathered rows' attention and the window scores take fp32 of the same values;
  // the retained-index kernel reads and writes the 16-bit dtype itself), H2O's prefill sums run on
  // the tensor cores only for 16-bit q, and the engine hands 16-bit q/k/v only when they are the
  // model's own (no rounding). Under a policy this was fp32 until 2026-12-04, which cost six casts
  // per layer of every decode step and kept H2O's prefill on the fp32 formula (docs/perf-notes.md,
  // first H200 run).
  at::ScalarType attend_dtype() const override {
    return device_.is_cuda() ? input_dtype() : at::kFloat;
  }

  // Positions `layer` retains of `seq`: [kv_heads, held] int64, ascending per head (every
  // token when nothing was evicted there). `length`: the sequence's length with a step's new
  // rows (append_pages), before the step's end makes it the sequence's; -1: its length.
  at::Tensor kept_positions(int64_t seq, int64_t layer, int64_t length = -1) const;
  // The same as the GPU kernel reads it: positions listed per head (int32 [kv_heads, count];
  // undefined when every slot is read: nothing evicted there, or a ring) and the start of the
  // tail every head keeps. These are the pages' slots: after a compaction (compacts()) or in a
  // ring (rings()) not the tokens' logical positions. kept_positions maps them back.
  std::pair<at::Tensor, int64_t> listed_positions(int64_t seq, int64_t layer) const;
  const PagedFormat& format() const { return format_; }
  // Tokens of `seq` in the pages' slots: its length less what a compaction took out, or in a
  // ring at most sinks + window.
  int64_t stored_length(int64_t seq) const;
  // Whether a prefill's selection is compacted: any retention policy but Quest's and a ring's
  // (SnapKV, PyramidKV, H2O, TOVA, ScissorHands, StreamingLLM after the prefill), over a
  // per-token format (not KIVI, whose key groups span tokens). Each head's kept tokens then
  // move, in order, into the slots [0, kept) of its own rows (a page holds each head's rows
  // apart, so heads keeping different tokens share pages densely), the pages past the longest
  // layer's kept tokens go back to the pool, and decode steps read every stored token with
  // the dense kernel (layers keeping fewer than the longest: the retained-index kernel over
  // their slots). One gather and one scatter per pool per layer of a prefill; without it a
  // per-head selection keeps some token in nearly every page and frees almost nothing (the
  // first H200 run: SnapKV-2048 held the full cache). A policy evicting during decode goes on
  // choosing among the slots (its lists and tails are slots; its positions are logical ones,
  // policy_positions), from the steady state when it drops its lowest score (the compacted
  // layer lists all but its newest `recent` slots), and its slots are compacted again as they
  // grow (recompact()).
  bool compacts() const;
  // Whether steps run the GPU path's code (on a GPU, or emulated on the CPU).
  bool kernel_path() const { return kernel_path_; }
  // Whether a retention policy (Quest included) chooses what stays.
  bool retains() const { return policy_ != nullptr; }
  // Whether the kept tokens are a ring of slots: a policy keeping its sinks and newest window
  // (RetentionPolicy::sinks_and_window, StreamingLLM evicting during decode) over a per-token
  // format. Sink p sits at slot p, window token p at slot sinks + (p - sinks) mod window, so
  // the token entering at position L is written over the one leaving (L - window), between
  // steps the sequence holds min(length, sinks + window) slots in the pages they need, and
  // every step reads every slot with the dense kernel: no lists, no tails, and once the ring
  // is full no page taken or freed by a decode step. A block of several tokens is written
  // after the ring (its step holding their pages too) and, once attended, its kept tokens
  // move into their slots (one gather and one scatter per pool and layer) and the pages past
  // the ring go back at the step's end. Decode attention is a sum over the kept tokens, so
  // their order in the slots does not matter; RoPE was applied before they were stored.
  bool rings() const { return ring_.has_value(); }
  int64_t free_pages() const { return static_cast<int64_t>(free_.size()); }

 private:
  // Quest's per-page key bounds of one (sequence, layer): [room, kv_heads, head_dim] fp16
  // minima and maxima of the stored keys, rounded outwards, where the pools are (a page's
  // bounds one contiguous row: a step's new keys fold in with one foreach operator). The
  // first `pages` rows are the held pages' bounds; the others (+inf / -inf) wait for pages to
  // come, so that a decode step crossing into a new page copies nothing.
  struct QuestBounds {
    at::Tensor mins, maxs;
    int64_t pages = 0;
  };
  // What the retained-index kernel reads of one sequence: `count` listed positions per head
  // (int32 [kv_heads, count] where the pools are; undefined when none) and the tail from `tail`.
  struct ListedRows {
    UploadedList list;  // undefined buffer: no list (lists uploaded together share one buffer)
    int64_t count = 0, tail = 0;
  };
  // One (sequence, layer)'s retained positions once the policy has evicted there: each head's
  // listed positions (`host`: int32 [kv_heads, count], on the host and, once uploaded,
  // `device`), then the tail [tail, length) every head keeps. New tokens only lengthen the
  // tail, so a step that selects nothing changes nothing here (no positions tensor is made),
  // and the lists travel only when a selection changes them. Listed positions are below
  // `tail`; a selection's tail starts the longest run of newest tokens every head keeps (so an
  // unchanged selection compares equal), at most the window of a policy dropping its lowest
  // score, which evict_steady then moves on by one per step. Undefined `host`: every token
  // (nothing evicted; tail 0).
  //
  // After a compaction (compacts()) the positions are the pages' slots, not the tokens'
  // logical positions: `origin` [kv_heads, kept] int64 (where the policy chose until the
  // prefill's end, then on the host) holds the logical positions of
  // each head's slots [0, kept), and a slot past the sequence's compacted prompt holds the
  // token `Sequence::dropped` positions later.
  struct Retained {
    at::Tensor host;
    UploadedList device;  // undefined buffer until uploaded (possibly beside other lists)
    int64_t tail = 0;
    at::Tensor origin;  // undefined: slot = logical position
    // A steady-state eviction (evict_steady) changed `device` where it lives: `host` has its
    // shape but not its values until refresh_lists.
    bool host_stale = false;
    bool selected() const { return host.defined(); }
    int64_t count() const { return host.defined() ? host.size(1) : 0; }
    // Tokens per head of a sequence of `length` tokens (its new ones included).
    int64_t held(int64_t length) const { return count() + length - tail; }
  };
  struct Sequence {
    std::vector<int> pages;  // block-table row: physical page of each logical page; -1: freed
    int slot = 0;            // row in the KIVI rings and fp8 scales
    int64_t length = 0;      // tokens entered (the logical length: new tokens' positions)
    int64_t prompt = 0;      // tokens of its first block (RetentionInput::prompt)
    // Tokens out of the pages' slots as of the last compaction: slot = position - dropped for
    // every token after it, and the kernels see `length - dropped` tokens.
    int64_t dropped = 0;
    // The prefill being attended compacted some layer; its step's end settles the lengths.
    bool compacting = false;
    // Per layer: the retained positions as the GPU kernel reads them (Retained).
    std::vector<Retained> kept;
    // Per layer, for the policies that select by attention, aligned with the held tokens
    // (kept positions, then the newer ones): H2O's summed probabilities [kv_heads, held] fp32,
    // ScissorHands' low-attention history [kv_heads, held, group, window] bool; where the
    // pools are.
    std::vector<AttentionRecord> scores;  // per layer (policies that select by attention)
    std::vector<QuestBounds> quest;       // per layer (Quest's layers past its dense ones)
    int64_t quest_room = 0;               // pages the bounds are first made for (reserve())
    bool evicted = false;                 // this step evicted somewhere: look for pages to free
    // Since free_evicted_pages last looked: whether a list changed, and the page bound below
    // which it looked (pages from there on were held then).
    bool lists_changed = true;
    int64_t looked_below = 0;
  };
  struct Layer {
    at::Tensor k_data, v_data, k_meta, v_meta;  // [pages, kv_heads, page bytes] uint8
    at::Tensor k_ring, v_ring;                  // KIVI: [slots, kv_heads, residual, head_dim] fp16
    at::Tensor k_scale, v_scale;                // fp8: [slots, kv_heads] fp32
    std::vector<bool> calibrated;  // fp8: [slots] scales set by the slot's first append
  };
  // StorageBytes::padding of storage(): every sequence's page slots past its written tokens
  // (per side, KIVI's quantized ends) and its rings' empty rows, in every layer.
  uint64_t padding_bytes() const;
  // A step's batch and its tables (PagedKVCache::begin_step).
  struct Step {
    std::vector<Sequence*> batch;
    at::Tensor table;  // [batch, max_pages] int32 block tables, where the pools are
    // int32, where the pools are: [0, B) old lengths, [B, 2B] new-row offsets, [2B + 1, 3B + 1)
    // ring/scale rows, [3B + 1, 4B + 1) new lengths
    at::Tensor ints;
    int max_new = 0;
    int64_t max_len = 1;
    // rings(): pool rows (of page_size-token rows, as compact() views them) whose tokens move
    // into their ring slots once a layer has attended its blocks (int64 where the pools are;
    // undefined when nothing moves).
    at::Tensor ring_from, ring_to;
  };
  // The kernels' input dtype: bf16 for the bf16 format, fp16 otherwise.
  at::ScalarType input_dtype() const {
    return format_.format == kernels::KvFormat::kBf16 ? at::kBFloat16 : at::kHalf;
  }
  // What a prompt's prefill rounds its keys and values to (PagedFormat::computed_dtype).
  at::ScalarType computed_dtype() const {
    return format_.computed_dtype == at::ScalarType::Undefined ? input_dtype()
                                                               : format_.computed_dtype;
  }
  void check_batch(int64_t layer, const std::vector<int64_t>& seqs,
                   const std::vector<int64_t>& counts, const at::Tensor& k,
                   const at::Tensor& v) const;
  // Reserves pages for the new tokens (at layer 0) and builds the step's tables.
  Step begin_step(int64_t layer, const std::vector<int64_t>& seqs,
                  const std::vector<int64_t>& counts);
  // The step's tables for `layer`: layer 0's, reused by the later layers of the same step.
  const Step& step_for(int64_t layer, const std::vector<int64_t>& seqs,
                       const std::vector<int64_t>& counts);
  // A host tensor where the pools are (on a GPU: through pinned memory, asynchronously).
  at::Tensor upload(const at::Tensor& host) const;
  // What computes a prefill block's H2O sums for queries like q: on the kernel path with
  // 16-bit q, kernels/summed_attention (paged_cuda::summed_attention or its split-key form),
  // else null (the fp32 formula).
  AttentionRecord::SummedFn summed_kernels(const at::Tensor& q) const;

  // fp8 calibration of new sequences, then the appender.
  void append_rows(Layer& layer, const Step& step, const std::vector<int64_t>& counts,
                   const at::Tensor& k, const at::Tensor& v, const kernels::PagedKvStore& store);
  // After the last layer: lengths grow, evicted pages are freed.
  void end_step(int64_t layer, const Step& step, const std::vector<int64_t>& counts);
  Sequence& sequence(int64_t seq);
  const Sequence& sequence(int64_t seq) const;
  // Assigns pages to `s` until they cover `tokens` tokens, growing the pools if allowed.
  void assign_pages(Sequence& s, int64_t tokens);
  // Extends every layer's pools to `pages` pages / `slots` sequence slots (0xff / NaN filled:
  // a byte nothing wrote reads as NaN).
  void grow_pages(int64_t pages);
  void grow_slots(int64_t slots);
  // reserve()'s sizing: `pages` more pages than those in use and `slots` more than the live
  // sequences', made again at exactly that when no sequence is live, else only grown.
  void size_pools(int64_t pages, int64_t slots);
  // Pages a sequence may hold past its blocks of `block` tokens: 1 where pages do not tile
  // them (its last page reaches past its last block), else 0.
  int64_t spill_pages(int64_t block) const;
  // fp8: the scales of `slot` from its first tokens k, v ([kv_heads, n, head_dim]).
  void calibrate(Layer& layer, int slot, const at::Tensor& k, const at::Tensor& v) const;
  // The layer's pools as the appender and the decoders see them (rings and scales whole).
  kernels::PagedKvStore store_of(const Layer& layer) const;
  at::Tensor decode(const kernels::PagedKvStore& store, const Sequence& s, bool key,
                    int64_t tokens) const;
  // [kv_heads, held, head_dim] fp32: the tokens at `positions` ([kv_heads, held]) of each head.
  at::Tensor decode_at(const kernels::PagedKvStore& store, const Sequence& s, bool key,
                       const at::Tensor& positions, int64_t tokens) const;
  // [kv_heads, held] int64 on the host: what `r` retains of a sequence of `length` tokens
  // (the step's new ones included), in one allocation.
  at::Tensor positions_of(const Retained& r, int64_t length) const;
  // Attention of a batch's new tokens under the policy, and its evictions (see the header).
  at::Tensor attend_retaining(int64_t layer, const std::vector<Sequence*>& batch,
                              const std::vector<int64_t>& counts, const at::Tensor& q,
                              const at::Tensor& k, const at::Tensor& v,
                              const kernels::PagedKvStore& store, const at::Tensor& table,
                              const at::Tensor& ints, int64_t max_len);
  // Attention over every held token: one decode-kernel launch for a batch of single tokens on
  // the GPU path, else reference attention per sequence over its decoded pages (a prompt's
  // prefill: over its keys and values as computed, attends_computed).
  at::Tensor attend_dense(const Step& step, const std::vector<int64_t>& counts, const at::Tensor& q,
                          const at::Tensor& k, const at::Tensor& v,
                          const kernels::PagedKvStore& store);
  // Whether s's block of n tokens is a prompt's prefill (its first block, of more than one
  // token), attended over its keys and values as computed, not as the pages store them: only
  // the cache is compressed (KIVI's and GEAR's reference code, Hugging Face's quantized
  // caches, vLLM's prefill kernels reading the fresh K/V). Not for 16-bit pages of the model's
  // dtype (they hold the tokens as computed: the same numbers) or PagedFormat's
  // prefill_reads_stored (latent pages: the method's keys are the reconstruction). Decode
  // steps and later blocks read the pages; the policies score what is stored.
  bool attends_computed(const Sequence& s, int64_t n) const;
  // That attention for rows [row, row + n) of the packed q [rows, heads, d], k and v [rows,
  // kv_heads, d]: [n, heads, d] fp32 where the pools are.
  at::Tensor attend_computed(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             int64_t row, int64_t n) const;
  // Quest: past its dense layers, the new keys fold into the page bounds, and a decode token of
  // a layer over the budget reads the top pages only (chosen by quest_pages, or by the kernels
  // on the kernel path, then quest_lists or quest_tokens); otherwise dense. On the kernel path
  // the chosen pages stay on the device (quest_lists); the reference rows take their tokens
  // back to the host in one copy per layer.
  at::Tensor attend_quest(int64_t layer, const Step& step, const std::vector<int64_t>& counts,
                          const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const kernels::PagedKvStore& store);
  // Folds s's `n` new keys (a block) into its page bounds at `layer`.
  void fold_quest_bounds(Sequence& s, int64_t layer, const kernels::PagedKvStore& store,
                         const at::Tensor& table_row, int64_t n);
  // The page each sequence's new key falls in, its bounds at `layer` grown to hold it.
  std::vector<int64_t> quest_key_pages(const std::vector<Sequence*>& seqs, int64_t layer);
  // Folds one new key per sequence (keys [seqs, kv_heads, d] where the bounds are, in the
  // order of `seqs`; pages from quest_key_pages) into their page bounds: their rounding and
  // updates in one set of operators (the reference path).
  void fold_quest_keys(const std::vector<Sequence*>& seqs, int64_t layer, const at::Tensor& keys,
                       const std::vector<int64_t>& pages);
  // A decode step's Quest work at one layer on the kernel path: the single keys to fold
  // (`folded`, their key pages and keys as fold_quest_keys takes them) and the sequences to
  // score (`scored`, sequence i's query at q's row rows[i]).
  struct QuestKernelStep {
    std::vector<Sequence*> folded;
    std::vector<int64_t> key_pages;
    at::Tensor keys;
    std::vector<Sequence*> scored;
    std::vector<int64_t> rows;
  };
  // Runs it: kernels/quest_score.h's fold, then its scores and choice, their tables in one
  // upload. Returns quest_choice_kernels' tokens for `scored` (undefined when none).
  at::Tensor quest_kernels(const QuestKernelStep& step, int64_t layer, const at::Tensor& q) const;
  // Appends the addresses of the sequences' mins, then of their maxs, at `layer`.
  void pack_quest_bounds(std::vector<int64_t>& packed, const std::vector<Sequence*>& seqs,
                         int64_t layer) const;
  // The fold kernel over table [mins S][maxs S][page S] (uploaded) and keys [S, kv_heads, d].
  void launch_quest_fold(const at::Tensor& table, const at::Tensor& keys) const;
  // The fp16 data of s's mins or maxs at `layer` (checked contiguous fp16), for the kernels'
  // address arrays.
  uint16_t* quest_bound_data(const Sequence& s, int64_t layer,
                             at::Tensor QuestBounds::*bound) const;
  // s's bounds at `layer` grown to cover `pages` pages (empty pages: +inf mins, -inf maxs).
  // Room is made for the reserved total at first, then by a quarter more at a time.
  void grow_quest_bounds(Sequence& s, int64_t layer, int64_t pages) const;
  // Each sequence's page count at `layer`, checked to reach the pages Quest reads.
  std::vector<int64_t> quest_page_counts(const std::vector<Sequence*>& seqs, int64_t layer) const;
  // The group's mean positive and negative query parts, [rows, kv_heads, d] fp32 where the
  // bounds are, from q [rows, heads, d].
  std::pair<at::Tensor, at::Tensor> quest_query_parts(const at::Tensor& q) const;
  // [seqs, kv_heads, pages_to_read] int64 where the bounds are: the pages Quest chooses for
  // each sequence's query (q [rows, heads, d], sequence i's at rows[i]), ascending per head:
  // each sequence's bounds scored (two products), then one choice for the batch (the
  // reference path).
  at::Tensor quest_pages(const std::vector<Sequence*>& seqs, int64_t layer, const at::Tensor& q,
                         const std::vector<int64_t>& rows) const;
  // The tokens of chosen pages as lists: [seqs, kv_heads, (pages_to_read - 1) * page_size]
  // int32, each head's chosen pages but the newest (the last of them), ascending, a page's
  // tokens in order. From quest_pages' result (the reference path's torch expansion).
  at::Tensor quest_page_tokens(const at::Tensor& chosen) const;
  // The same on the kernel path, where the pages are scored and chosen: kernels/quest_score's
  // scores (each sequence's bounds read once where they are, the query group's parts taken
  // from q [rows, heads, d] as it came) over table [mins S][maxs S][pages S][rows S]
  // (uploaded), then its choice writing the tokens (no sort, nothing read back); most: the
  // largest page count.
  at::Tensor quest_choice_kernels(const at::Tensor& table, const at::Tensor& q, int64_t most) const;
  // [kv_heads, count] int64 positions on the host of the tokens sequence j reads (tokens: the
  // host copy of quest_page_tokens' or quest_choice_kernels' result), then its newest page's
  // up to `held`.
  at::Tensor quest_tokens(const at::Tensor& tokens, int64_t j, int64_t held) const;
  // The same tokens as retained-index lists, without leaving the device: per sequence its
  // chosen pages' tokens as an int32 list (views of `tokens`), the newest page as the tail.
  // tokens: quest_choice_kernels' result for `seqs`, each about to hold one more token.
  std::vector<ListedRows> quest_lists(const at::Tensor& tokens,
                                      const std::vector<Sequence*>& seqs) const;
  // [kv_heads, t1 - t0, head_dim] fp32 stored keys of tokens [t0, t1), decoding their pages
  // only (per-token formats).
  at::Tensor new_keys(const kernels::PagedKvStore& store, const Sequence& s,
                      const at::Tensor& table_row, int64_t t0, int64_t t1) const;
  // One retained-index kernel step over explicit lists per sequence. `tails` (when not null):
  // the [B] tail starts the kernel read, where it read them (evict_steady reads them there).
  at::Tensor decode_lists(const std::vector<ListedRows>& rows, const paged_cuda::DecodeBatch& d,
                          const kernels::PagedKvStore& store, const at::Tensor& q,
                          const at::Tensor& logits, at::Tensor* tails = nullptr);
  // A GPU decode step of single tokens over each sequence's retained positions (the retained-
  // index kernel; `logits` defined: each held token's scaled score is written there). The
  // list tables go up for this layer and every later one at once (step_lists_), when this
  // layer's lists differ from its table (checked on the host, entry by entry: addresses,
  // counts, tails). The registered policies select and evict after their layer attends,
  // changing lists for later steps only, so a step builds them once, at its first layer whose
  // lists changed, or not at all; a policy selecting by positions before its layer attends
  // (a span without a ring, as in tests) builds at each such layer, one copy each as before.
  at::Tensor decode_retained(int64_t layer, const std::vector<Sequence*>& batch,
                             const paged_cuda::DecodeBatch& d, const kernels::PagedKvStore& store,
                             const at::Tensor& q, const at::Tensor& logits,
                             at::Tensor* tails = nullptr);
  // What sequence b reads at `layer` in decode_retained's table: its list (none if it has no
  // selection or an empty one), count and tail.
  static ListedRows listed_rows(const Retained& r);
  // step_lists_ built for the layers of `batch` from `layer` on, and uploaded (lists a
  // selection changed since they last travelled go up first, a layer's together).
  void build_step_lists(int64_t layer, const std::vector<Sequence*>& batch);
  // Whether step_lists_ holds `layer`'s lists of `batch` as they are now, queued on the
  // current stream.
  bool step_lists_hold(int64_t layer, const std::vector<Sequence*>& batch) const;
  // torch's current stream where the pools are (core/cuda_stream.h); nullptr off the GPU.
  void* current_stream() const;
  // The retained-index kernel over `lists` and `counts_tails` (ListTable::of_layer's).
  at::Tensor launch_retained(const at::Tensor& lists, const at::Tensor& counts_tails,
                             const paged_cuda::DecodeBatch& d, const kernels::PagedKvStore& store,
                             const at::Tensor& q, const at::Tensor& logits, at::Tensor* tails);
  // A policy that needs window scores (SnapKV): those of a sequence's prefill (rows [row, row
  // + n) of the step's q [rows, heads, d] and k [rows, kv_heads, d]), into `in`; nothing for
  // the others (the attention records fill theirs: AttentionRecord::fill_batch).
  void fill_window_scores(const at::Tensor& q, const at::Tensor& k, int64_t row, int64_t n,
                          RetentionInput& in);
  // A decode-timing selection before the step attends (policies that need positions only):
  // the policy's span when it has one (no tensor made), else its choice over in.positions.
  void select(Sequence& s, int64_t layer, RetentionInput& in);
  // What a policy reads as the held tokens' positions: their logical positions, from the
  // slots `slots` ([kv_heads, held] int64, host, positions_of) that s's `layer` reads.
  at::Tensor policy_positions(const Sequence& s, int64_t layer, const at::Tensor& slots) const;
  // s.kept[layer] becomes the chosen subset of what it held for `in` (indices from the host
  // copy, read off the retained list and tail); the caller keeps the attention record's rows
  // (AttentionRecord::keep_batch, from the other copy: no copy back).
  // Refuses a policy's choice [kv_heads, kept] (host int64) that is not, per head, ascending
  // indices below `held`, naming the policy.
  void check_choice(const int64_t* chosen, int64_t kept, int64_t held) const;
  void apply_choice(Sequence& s, int64_t layer, const RetentionInput& in,
                    const RetentionChoice& chosen);
  // Records what a step's queries gave the `held` tokens s.kept[layer] holds for the policy,
  // into s.scores[layer] (and `newest`: TOVA's newest-query attention), computed from `keys`
  // (the held keys, rows_at; gathered here if undefined). The step's queries are rows [row,
  // row + n) of q [rows, heads, d]; `positions`: the held positions (positions_of), made here
  // when they are read and undefined. (A kernel decode step's scores go to
  // AttentionRecord::add_scores_batch instead.)
  void record_scores(Sequence& s, int64_t layer, const at::Tensor& q, int64_t row, int64_t n,
                     int64_t held, const kernels::PagedKvStore& store, const at::Tensor& table_row,
                     at::Tensor positions, at::Tensor keys, at::Tensor& newest);
  // [kv_heads, held, head_dim] fp32 keys (and values when `values`) at `positions` of `s`'s
  // first `tokens` tokens, where the pools are.
  struct Rows {
    at::Tensor keys, values;
  };
  Rows rows_at(const kernels::PagedKvStore& store, const Sequence& s, const at::Tensor& table_row,
               const at::Tensor& positions, int64_t tokens, bool values) const;
  // `r` becomes `kept` (kv_heads rows of `held` positions, ascending, of a sequence of
  // `length` tokens) as listed positions and a tail; a new list (and upload) only when the
  // list changed. True when the list changed.
  // `max_tail`: at most that many tokens in the tail (-1: the policy's window, if any, for a
  // sequence of this `prompt`).
  bool keep_positions(Retained& r, const int64_t* kept, int64_t held, int64_t length,
                      int64_t prompt, int64_t max_tail = -1);
  // `r` keeps, of what it holds, positions [0, span.prefix) and [span.newest, length): a
  // positions-only policy's choice applied to the list and tail, without a positions tensor.
  // True when the list changed (else only the tail moved, or nothing).
  bool keep_span(Retained& r, const RetentionSpan& span, int64_t length, int64_t prompt);
  // Frees the pages of `s` no layer retains a token in and no later append writes.
  void free_evicted_pages(Sequence& s);
  // A decode step's evictions at `layer` on the kernel path, where the policy drops one token
  // per head by its scores (RetentionPolicy::drops_lowest: the steady state of H2O, TOVA and
  // ScissorHands). steady_served: the over-budget sequences of `batch` (indices) holding
  // budget + 1 tokens, `recent` + 1 of them in the tail, lists on the device and records
  // covering the rest (AttentionRecord::steady_ready), before the step's scores are recorded,
  // grouped by list length and held count; none when the kernel's blocks cannot take
  // `query_heads` (steady_evict_fits).
  // evict_steady: for one group (launch `group` of the layer), one kernel
  // (kernels/steady_evict.h) adds the step's scores (`logits`, as the retained-index kernel
  // wrote them) to their records, drops each head's lowest and writes the records' states and
  // lists without it (each list loses the dropped token and takes the tail's first, which
  // leaves the tail); nothing is read back. Clears evict_after for them; the others select.
  SteadyGroups steady_served(int64_t layer, const std::vector<Sequence*>& batch,
                             const std::vector<RetentionInput>& inputs,
                             const std::vector<int64_t>& slots,
                             const std::vector<bool>& evict_after, int64_t query_heads) const;
  // `tails`: the step's tail starts on the device, by row (decode_retained's).
  void evict_steady(int64_t layer, const std::vector<Sequence*>& batch,
                    const std::vector<size_t>& served, size_t group,
                    const std::vector<int64_t>& slots, const at::Tensor& logits,
                    const at::Tensor& tails, std::vector<bool>& evict_after);
  // evict_steady's inputs: the served sequences' lists at `layer` as one [served * kv_heads *
  // count] int32 tensor (a view when they lie so in one buffer, as evict_steady leaves them);
  // each one's logits row and ring column's offset from its tail ((position - tail) mod
  // window), kept by steady_ (SteadyBuffers).
  at::Tensor joined_lists(int64_t layer, const std::vector<Sequence*>& batch,
                          const std::vector<size_t>& served, int64_t count) const;
  std::vector<int> steady_steps(int64_t layer, const std::vector<Sequence*>& batch,
                                const std::vector<size_t>& served, int window) const;
  // The host copies of the lists evict_steady changed, of `seqs` at `layer` (-1: every layer),
  // in one copy back.
  void refresh_lists(const std::vector<Sequence*>& seqs, int64_t layer);
  // Tokens in `s`'s slots (its length less what a compaction took out; a ring's, at most sinks
  // + window).
  int64_t stored(const Sequence& s) const {
    return ring_ ? std::min(s.length, ring_->sinks + ring_->window) : s.length - s.dropped;
  }
  // rings(): the slot of the token at position p.
  int64_t ring_slot(int64_t p) const {
    return p < ring_->sinks ? p : ring_->sinks + (p - ring_->sinks) % ring_->window;
  }
  // The slot where `n` new tokens of `s` start (one token of a ring: its ring slot; else after
  // the stored ones), and the slots the kernels read once they are written.
  int64_t write_slot(const Sequence& s, int64_t n) const {
    return ring_ && n == 1 ? ring_slot(s.length) : stored(s);
  }
  int64_t slots_after(const Sequence& s, int64_t n) const {
    return ring_ && n == 1 ? std::min(s.length + 1, ring_->sinks + ring_->window) : stored(s) + n;
  }
  // rings(): the rows begin_step's blocks move (Step::ring_from, ring_to), or nothing.
  void plan_ring_moves(Step& step, const std::vector<int64_t>& counts) const;
  // Copies pool rows `from` to rows `to` in every pool of `layer` (all read before any is
  // written, so a row read and a row written may coincide).
  void move_rows(int64_t layer, const at::Tensor& from, const at::Tensor& to);
  // rings(): after a step, the pages past s's ring slots go back to the pool.
  void free_ring_pages(Sequence& s);
  // compacts(): the prefills `seqs` (each with its prompt's length `lengths`, nothing selected
  // before at `layer`) whose policy chose `kept` ([kv_heads, kept] ascending positions, where
  // the policy computed them, not read back); each head's kept tokens move into its slots
  // [0, kept), in one gather and one scatter per pool for all of them, with the slots'
  // pool rows computed where the pools are. Each layer's list becomes those slots and its
  // `origin` the device's choice, brought back once at the step's end (settle_compactions),
  // so a compacting prefill never waits for the device between layers.
  void compact(int64_t layer, const std::vector<Sequence*>& seqs,
               const std::vector<int64_t>& lengths, const std::vector<at::Tensor>& kept);
  // After a compacting prefill's last layer: every layer's chosen positions (`origin`) come to
  // the host in one copy and are checked (ascending, within the prompt), each sequence's slots
  // end at the longest layer's kept tokens (`dropped` takes the rest), a layer keeping that
  // many reads every slot, one keeping fewer lists its slots; the pages past them go back to
  // the pool.
  void settle_compactions(const std::vector<Sequence*>& batch);
  void settle_compaction(Sequence& s);
  // A compacted layer `r` keeping slots [0, held) of a sequence whose longest layer keeps
  // `slots`: what it lists (a layer keeping fewer: its slots, the tail from `slots`; else the
  // steady state of a policy dropping its lowest score, or nothing: every slot). `prompt`: the
  // sequence's.
  void list_compacted(Retained& r, int64_t held, int64_t slots, int64_t prompt);
  // A policy evicting during decode leaves a slot behind per head at every step (a decode
  // token takes a new one). At a step's end, the sequences of `batch` whose slots no head
  // keeps have grown past recompaction_due's bound are compacted again: each layer's kept
  // slots move, in order, into its first ones (their order, so the policy's records and
  // lists, unchanged), one gather and one scatter per pool and layer for all of them, and
  // the pages past them go back to the pool.
  void recompact(const std::vector<Sequence*>& batch);
  // Whether s is due (every layer has selected, and its stored slots exceed the longest
  // layer's kept tokens, `slots`, by a page or an eighth of them, whichever is more).
  bool recompaction_due(const Sequence& s, int64_t* slots) const;
  // compacts(): the most slots a sequence of `prompt` tokens, then `total` in all, holds after
  // its prefill (compacted_slots; recompact() keeps to it).
  int64_t slots_needed(int64_t prompt, int64_t total) const;
  // The logical positions of slots `slots` ([kv_heads, n] int64, host) of `r` in `s`.
  at::Tensor logical_positions(const Sequence& s, const Retained& r, at::Tensor slots) const;
  // Reference attention of a block's queries qb [heads, n, head_dim] over `rows` (rows_at).
  at::Tensor attend_rows(const Rows& rows, const at::Tensor& qb) const;
  PagedFormat format_;
  at::Device device_;
  bool kernel_path_;  // steps run the GPU path's code (on cuda, or emulated on the CPU)
  int64_t num_layers_, num_kv_heads_, head_dim_;
  int64_t pages_ = 0, slots_ = 0, max_pages_;
  std::vector<Layer> layers_;
  std::vector<int> free_;        // free physical pages (shared by all layers' pools)
  std::vector<int> free_slots_;  // free sequence slots
  int64_t next_id_ = 0;
  std::map<int64_t, Sequence> sequences_;
  std::shared_ptr<const RetentionPolicy> policy_;  // null: every token stays
  std::optional<SinksAndWindow> ring_;             // rings()
  const QuestPolicy* quest_ = nullptr;             // policy_ when it is Quest
  bool pooled_ = false;                            // reserve_pool sized the pools
  bool defer_settling_ = false;                    // defer_settling()
  std::deque<int64_t> quest_rooms_;  // Quest: pages of the sequences reserve() announced
  double retention_s_ = 0;
  double waited_s_ = 0;           // device_wait_seconds()
  std::vector<int64_t> scratch_;  // apply_choice's and keep_span's positions
  SteadyBuffers steady_;          // evict_steady's rows, ring offsets and workspace
  // decode_retained's tables of `layers` layers from `first` on, for a batch of B.
  struct StepLists {
    int64_t first = 0, layers = 0, batch = 0;
    std::optional<ListTable> host;  // as written (step_lists_hold reads it back)
    at::Tensor tables;              // its upload()
    // current_stream() at the upload: another stream builds them again (a copy queued on
    // this one is not ordered before the other's kernels), as SteadyBuffers does.
    void* stream = nullptr;
  };
  StepLists step_lists_;
  int64_t list_tables_ = 0;  // list_tables()
  // attend_batch's last batch, its lengths and tables (reused while they match).
  std::vector<int64_t> attend_seqs_, attend_lengths_;
  Step attend_step_;
  // The current step's batch and tables (step_for).
  std::vector<int64_t> step_seqs_, step_counts_, step_lengths_;
  Step step_;
};

}  // namespace kvbench
