#include "kvbench/kv/paged_cache.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <tuple>

#include "kv_append.h"
#include "kv_paged_decode.h"
#include "kvbench/attention/reference_attention.h"
#include "kvbench/core/error.h"
#include "paged_cache_cuda.h"

namespace kvbench {

using kernels::KvFormat;

namespace {

constexpr int kPageSize = 32;  // tokens per page of the per-token formats

const char* kPagedMethods =
    "full/fp16/bf16 (model dtype fp16 or bf16), int8 (group 32), int4 (symmetric: true, "
    "group 32), fp8, kivi-2 and kivi-4 (group 16, 32 or 64)";

}  // namespace

PagedFormat paged_format_for(const nlohmann::json& method, at::ScalarType model_dtype) {
  const std::string name = method.at("name");
  auto fail = [&](const std::string& why) {
    return Error("paged cache: method '" + name + "' " + why + "; paged formats: " + kPagedMethods);
  };
  if (method.contains("codec"))
    throw fail(
        "evicts tokens, and the paged cache keeps every token (retained-index attention "
        "over evicted pages is not built yet)");
  PagedFormat f;
  f.page_size = kPageSize;
  if (name == "full" || name == "fp16" || name == "bf16") {
    const at::ScalarType dtype =
        name == "fp16" ? at::kHalf : (name == "bf16" ? at::kBFloat16 : model_dtype);
    if (dtype != at::kHalf && dtype != at::kBFloat16)
      throw fail("stores " + std::string(c10::toString(dtype)) + ", which has no paged format");
    f.format = dtype == at::kHalf ? KvFormat::kFp16 : KvFormat::kBf16;
    return f;
  }
  if (name == "int8" || name == "int4") {
    if (method.at("group").get<int>() != 32) throw fail("has group != 32 (q4_0/q8_0 use 32)");
    if (name == "int4" && !method.at("symmetric").get<bool>())
      throw fail("is q4_1 (asymmetric); the paged int4 format is q4_0 (symmetric: true)");
    f.format = name == "int8" ? KvFormat::kInt8 : KvFormat::kInt4;
    return f;
  }
  if (name == "fp8") {
    f.format = KvFormat::kFp8;
    f.fp8_amax = method.at("scale") == "amax";
    f.fp8_scale_value = method.at("scale_value");
    f.fp8_amax_divisor = method.at("amax_divisor");
    f.fp8_per_head = method.at("granularity") == "head";
    return f;
  }
  if (name == "kivi-2" || name == "kivi-4") {
    const int group = method.at("group"), residual = method.at("residual");
    if (group != 16 && group != 32 && group != 64) throw fail("has a group the kernels lack");
    if (residual % group != 0) throw fail("has a residual that is not a multiple of its group");
    f.format = name == "kivi-2" ? KvFormat::kKivi2 : KvFormat::kKivi4;
    f.page_size = group;
    f.residual = residual;
    return f;
  }
  throw fail("has no paged format");
}

PagedKVCache::PagedKVCache(PagedFormat format, int64_t num_layers, int64_t num_kv_heads,
                           int64_t head_dim, PagedCapacity capacity, at::Device device)
    : format_(format),
      device_(device),
      num_layers_(num_layers),
      num_kv_heads_(num_kv_heads),
      head_dim_(head_dim),
      max_pages_(capacity.max_pages > 0 ? capacity.max_pages : int64_t{1} << 30),
      layers_(size_t(num_layers)) {
  KVB_CHECK(head_dim % 32 == 0, "paged cache: head_dim ", head_dim, " is not a multiple of 32");
  KVB_CHECK(device.is_cpu() || device.is_cuda(), "paged cache: device ", device.str(),
            " (expected cpu or cuda)");
  if (device.is_cuda()) {
    const std::string why = paged_cuda::unavailable_reason();
    KVB_CHECK(why.empty(), "paged cache: device ", device.str(), ": ", why);
    KVB_CHECK(head_dim == 64 || head_dim == 128, "paged cache: device ", device.str(),
              ": unsupported head_dim: ", head_dim, " (the GPU decode kernels take 64 and 128)");
  }
  KVB_CHECK(!kernels::is_kivi(format_.format) || head_dim % format_.page_size == 0,
            "paged cache: KIVI group ", format_.page_size, " does not divide head_dim ", head_dim);
  KVB_CHECK(capacity.pages >= 1 && capacity.pages <= max_pages_ && capacity.sequences >= 1,
            "paged cache: expected 1 <= pages <= max_pages and sequences >= 1");
  grow_pages(capacity.pages);
  grow_slots(capacity.sequences);
}

void PagedKVCache::grow_pages(int64_t pages) {
  const int P = format_.page_size, D = int(head_dim_);
  const auto k = kernels::page_bytes(format_.format, true, P, D),
             v = kernels::page_bytes(format_.format, false, P, D);
  auto extend = [&](at::Tensor& pool, size_t per_head) {
    if (per_head == 0) return;
    at::Tensor more = at::full({pages - pages_, num_kv_heads_, int64_t(per_head)}, 0xff,
                               at::TensorOptions().dtype(at::kByte).device(device_));
    pool = pool.defined() ? at::cat({pool, more}, 0) : more;
  };
  for (Layer& layer : layers_) {
    extend(layer.k_data, k.data), extend(layer.v_data, v.data);
    extend(layer.k_meta, k.meta), extend(layer.v_meta, v.meta);
  }
  std::vector<int> fresh;  // popped from the back: old free pages first, then ascending
  for (int64_t p = pages - 1; p >= pages_; --p) fresh.push_back(int(p));
  free_.insert(free_.begin(), fresh.begin(), fresh.end());
  pages_ = pages;
}

void PagedKVCache::grow_slots(int64_t slots) {
  auto extend = [&](at::Tensor& t, at::IntArrayRef row, at::ScalarType dtype) {
    std::vector<int64_t> shape = {slots - slots_};
    shape.insert(shape.end(), row.begin(), row.end());
    at::Tensor more =
        at::full(shape, std::nan(""), at::TensorOptions().dtype(dtype).device(device_));
    t = t.defined() ? at::cat({t, more}, 0) : more;
  };
  for (Layer& layer : layers_) {
    if (kernels::is_kivi(format_.format))
      for (at::Tensor* ring : {&layer.k_ring, &layer.v_ring})
        extend(*ring, {num_kv_heads_, format_.residual, head_dim_}, at::kHalf);
    if (format_.format == KvFormat::kFp8) {
      extend(layer.k_scale, {num_kv_heads_}, at::kFloat);
      extend(layer.v_scale, {num_kv_heads_}, at::kFloat);
      layer.calibrated.resize(size_t(slots), false);
    }
  }
  std::vector<int> fresh;
  for (int64_t r = slots - 1; r >= slots_; --r) fresh.push_back(int(r));
  free_slots_.insert(free_slots_.begin(), fresh.begin(), fresh.end());
  slots_ = slots;
}

int64_t PagedKVCache::add_sequence() {
  if (free_slots_.empty()) grow_slots(2 * slots_);
  Sequence s;
  s.slot = free_slots_.back();
  free_slots_.pop_back();
  for (Layer& layer : layers_)
    if (!layer.calibrated.empty()) layer.calibrated[size_t(s.slot)] = false;
  const int64_t id = next_id_++;
  sequences_[id] = std::move(s);
  return id;
}

void PagedKVCache::remove_sequence(int64_t seq) {
  Sequence& s = sequence(seq);
  free_.insert(free_.end(), s.pages.rbegin(), s.pages.rend());
  free_slots_.push_back(s.slot);
  sequences_.erase(seq);
}

PagedKVCache::Sequence& PagedKVCache::sequence(int64_t seq) {
  auto it = sequences_.find(seq);
  KVB_CHECK(it != sequences_.end(), "paged cache: unknown sequence ", seq);
  return it->second;
}

const PagedKVCache::Sequence& PagedKVCache::sequence(int64_t seq) const {
  auto it = sequences_.find(seq);
  KVB_CHECK(it != sequences_.end(), "paged cache: unknown sequence ", seq);
  return it->second;
}

int64_t PagedKVCache::length(int64_t seq) const { return sequence(seq).length; }

std::vector<int64_t> PagedKVCache::kept_tokens(int64_t seq) const {
  return std::vector<int64_t>(size_t(num_layers_), sequence(seq).length);
}

void PagedKVCache::reserve(Sequence& s, int64_t tokens) {
  const size_t need = size_t((tokens + format_.page_size - 1) / format_.page_size);
  if (s.pages.size() >= need) return;
  const int64_t missing = int64_t(need - s.pages.size());
  if (missing > int64_t(free_.size())) {
    const int64_t want = pages_ + missing - int64_t(free_.size());
    KVB_CHECK(want <= max_pages_, "paged cache: out of pages: a sequence of ", tokens,
              " tokens needs ", need, " pages of ", format_.page_size, " tokens, ", free_.size(),
              " of the pool's ", pages_, " are free and the pool may not grow past ", max_pages_,
              "; size the pool for the batch's longest contexts");
    grow_pages(std::min(max_pages_, std::max(want, 2 * pages_)));
  }
  for (int64_t i = 0; i < missing; ++i) {
    s.pages.push_back(free_.back());
    free_.pop_back();
  }
}

// The fp8 codec's rule: per head (or layer) amax of the sequence's first tokens / divisor; a
// head of zeros keeps scale 1.
void PagedKVCache::calibrate(Layer& layer, int slot, const at::Tensor& k,
                             const at::Tensor& v) const {
  auto scale = [&](const at::Tensor& x) {
    if (!format_.fp8_amax) return at::full({num_kv_heads_}, format_.fp8_scale_value, at::kFloat);
    at::Tensor amax =
        x.abs().amax(format_.fp8_per_head ? at::IntArrayRef{1, 2} : at::IntArrayRef{0, 1, 2});
    at::Tensor s = at::where(amax > 0, amax / format_.fp8_amax_divisor, at::ones_like(amax));
    return s.reshape({-1}).expand({num_kv_heads_}).contiguous();
  };
  layer.k_scale[slot].copy_(scale(k.to(at::kFloat)));
  layer.v_scale[slot].copy_(scale(v.to(at::kFloat)));
  layer.calibrated[size_t(slot)] = true;
}

at::Tensor PagedKVCache::append_and_attend(int64_t seq, int64_t layer_index, const at::Tensor& q,
                                           const at::Tensor& k, const at::Tensor& v) {
  KVB_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3,
            "paged cache: expected q [heads, n, head_dim], k and v [kv_heads, n, head_dim]");
  return append_and_attend_batch(layer_index, {seq}, {k.size(1)}, q.transpose(0, 1),
                                 k.transpose(0, 1), v.transpose(0, 1))
      .transpose(0, 1);
}

at::Tensor PagedKVCache::append_and_attend_batch(int64_t layer_index,
                                                 const std::vector<int64_t>& seqs,
                                                 const std::vector<int64_t>& counts,
                                                 const at::Tensor& q, const at::Tensor& k,
                                                 const at::Tensor& v) {
  KVB_CHECK(layer_index >= 0 && layer_index < num_layers_, "paged cache: layer ", layer_index,
            " outside [0, ", num_layers_, ")");
  const int64_t rows = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  KVB_CHECK(!seqs.empty() && seqs.size() == counts.size() && k.dim() == 3 && k.size(0) == rows &&
                k.size(1) == num_kv_heads_ && k.size(2) == head_dim_ && v.sizes() == k.sizes() &&
                q.dim() == 3 && q.size(0) == rows && q.size(2) == head_dim_ &&
                q.size(1) % num_kv_heads_ == 0,
            "paged cache: expected q [n, heads, ", head_dim_, "], k and v [n, ", num_kv_heads_,
            ", ", head_dim_, "] with n the sum of the sequences' new tokens");
  Layer& layer = layers_[size_t(layer_index)];
  const int B = int(seqs.size());
  std::vector<Sequence*> batch;
  int max_pages = 1, max_new = 0;
  int64_t max_len = 1;
  for (int b = 0; b < B; ++b) {
    Sequence& s = sequence(seqs[size_t(b)]);
    KVB_CHECK(counts[size_t(b)] >= 1, "paged cache: sequence ", seqs[size_t(b)],
              " has no new tokens");
    const int64_t t1 = s.length + counts[size_t(b)];
    KVB_CHECK(t1 < (int64_t{1} << 31), "paged cache: more than 2^31 tokens in a sequence");
    if (layer_index == 0) reserve(s, t1);
    batch.push_back(&s);
    max_pages = std::max(max_pages, int(s.pages.size()));
    max_new = std::max(max_new, int(counts[size_t(b)]));
    max_len = std::max(max_len, t1);
  }
  // fp8: sequences seen for the first time calibrate on their new tokens.
  for (int b = 0, row = 0; b < B; row += int(counts[size_t(b)]), ++b)
    if (format_.format == KvFormat::kFp8 && !layer.calibrated[size_t(batch[size_t(b)]->slot)])
      calibrate(layer, batch[size_t(b)]->slot, k.narrow(0, row, counts[size_t(b)]).transpose(0, 1),
                v.narrow(0, row, counts[size_t(b)]).transpose(0, 1));

  // Block tables (rows padded with page 0, never read), then per sequence its old length, the
  // offsets of its new rows and its ring/scale row: host arrays, or their device copies.
  std::vector<int> table(size_t(B) * max_pages, 0), ints;
  for (int b = 0; b < B; ++b)
    std::copy(batch[size_t(b)]->pages.begin(), batch[size_t(b)]->pages.end(),
              table.begin() + size_t(b) * max_pages);
  for (Sequence* s : batch) ints.push_back(int(s->length));  // [0, B): old lengths
  ints.push_back(0);                                         // [B, 2B]: offsets of new rows
  for (int64_t n : counts) ints.push_back(ints.back() + int(n));
  for (Sequence* s : batch) ints.push_back(s->slot);  // [2B + 1, 3B + 1): ring/scale rows
  for (int b = 0; b < B; ++b) ints.push_back(int(batch[size_t(b)]->length + counts[size_t(b)]));
  const at::Tensor table_t = at::tensor(table, at::kInt).view({B, max_pages}).to(device_);
  const at::Tensor ints_t = at::tensor(ints, at::kInt).to(device_);
  const int* old_lens = ints_t.data_ptr<int>();

  // New rows as the transformer packs them ([n, kv_heads, head_dim]) in the kernels' input
  // dtype, where the pools are.
  const at::ScalarType in_dtype = format_.format == KvFormat::kBf16 ? at::kBFloat16 : at::kHalf;
  const at::Tensor k_rows = k.to(device_, in_dtype).contiguous();
  const at::Tensor v_rows = v.to(device_, in_dtype).contiguous();
  kernels::AppendProblem p;
  p.batch = B, p.kv_heads = int(num_kv_heads_), p.head_dim = int(head_dim_);
  p.max_pages_per_seq = max_pages, p.block_table = table_t.data_ptr<int>();
  p.old_lens = old_lens, p.cu_new = old_lens + B, p.seq_rows = old_lens + 2 * B + 1;
  p.max_new = max_new, p.k = k_rows.data_ptr(), p.v = v_rows.data_ptr();
  const kernels::PagedKvStore store = store_of(layer);
  const std::string why = kernels::append_check(p, store);
  KVB_CHECK(why.empty(), "paged cache: ", why);
  const bool gpu = device_.is_cuda();
  if (gpu)
    paged_cuda::append(p, store);
  else
    kernels::append_kv_host(p, store);

  at::Tensor out;
  if (gpu && max_new == 1) {  // one decode step for the whole batch, reading the formats in place
    paged_cuda::DecodeBatch d{table_t, ints_t.narrow(0, 3 * B + 1, B),
                              ints_t.narrow(0, 2 * B + 1, B), max_len};
    out = paged_cuda::decode(store, d, num_kv_heads_, q.to(device_, in_dtype).contiguous());
  } else {  // prefill (or a mixed batch): per sequence, reference attention over its tokens
    const double scale = 1.0 / std::sqrt(double(head_dim_));
    std::vector<at::Tensor> parts;
    for (int b = 0, row = 0; b < B; row += int(counts[size_t(b)]), ++b) {
      const Sequence& s = *batch[size_t(b)];
      const int64_t t1 = s.length + counts[size_t(b)];
      at::Tensor keys, values;
      if (gpu) {
        std::tie(keys, values) =
            paged_cuda::dequantize(store, table_t[b], num_kv_heads_, head_dim_, s.slot, t1);
      } else {
        keys = decode(store, s, true, t1), values = decode(store, s, false, t1);
      }
      const at::Tensor qb = q.narrow(0, row, counts[size_t(b)]).transpose(0, 1);
      parts.push_back(block_attention_reference(qb.to(device_, at::kFloat), keys, values, scale)
                          .transpose(0, 1));
    }
    out = at::cat(parts, 0);
  }
  if (layer_index == num_layers_ - 1)
    for (int b = 0; b < B; ++b) batch[size_t(b)]->length += counts[size_t(b)];
  return out.to(q.device(), at::kFloat);
}

// The layer's pools as the appender and the decoders see them: rings and fp8 scales whole,
// each sequence's at the row of its slot.
kernels::PagedKvStore PagedKVCache::store_of(const Layer& layer) const {
  auto ptr = [](const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; };
  kernels::PagedKvStore s;
  s.format = format_.format, s.page_size = format_.page_size, s.residual = format_.residual;
  s.k_data = ptr(layer.k_data), s.v_data = ptr(layer.v_data);
  s.k_meta = ptr(layer.k_meta), s.v_meta = ptr(layer.v_meta);
  s.k_residual = ptr(layer.k_ring), s.v_residual = ptr(layer.v_ring);
  if (layer.k_scale.defined()) {
    s.k_head_scale = layer.k_scale.data_ptr<float>();
    s.v_head_scale = layer.v_scale.data_ptr<float>();
  }
  return s;
}

// [kv_heads, tokens, head_dim] fp32: what the sequence's first `tokens` tokens decode to
// (host pools).
at::Tensor PagedKVCache::decode(const kernels::PagedKvStore& store, const Sequence& s, bool key,
                                int64_t tokens) const {
  at::Tensor out = at::empty({num_kv_heads_, tokens, head_dim_}, at::kFloat);
  float* o = out.data_ptr<float>();
  for (int64_t h = 0; h < num_kv_heads_; ++h)
    for (int64_t t = 0; t < tokens; ++t)
      kernels::decode_paged_token(store, s.pages.data(), int(num_kv_heads_), int(head_dim_), s.slot,
                                  key, int(h), int(t), int(tokens),
                                  o + (h * tokens + t) * head_dim_);
  return out;
}

StorageBytes PagedKVCache::storage() const {
  const int P = format_.page_size, D = int(head_dim_);
  const auto k = kernels::page_bytes(format_.format, true, P, D),
             v = kernels::page_bytes(format_.format, false, P, D);
  const uint64_t pages = uint64_t(pages_) - free_.size(), heads = uint64_t(num_kv_heads_);
  StorageBytes b;
  b.payload = pages * heads * (k.data + v.data);
  b.metadata = pages * heads * (k.meta + v.meta);
  if (kernels::is_kivi(format_.format))  // whole rings of the sequences present
    b.payload += sequences_.size() * 2 * heads * uint64_t(format_.residual) * D * 2;
  if (format_.format == KvFormat::kFp8)  // the scales of the sequences present
    b.metadata += sequences_.size() * 2 * heads * sizeof(float);
  b.payload *= uint64_t(num_layers_);
  b.metadata *= uint64_t(num_layers_);
  return b;
}

StorageBytes PagedKVCache::nominal() const {
  const int P = format_.page_size, R = format_.residual, D = int(head_dim_);
  const auto k = kernels::page_bytes(format_.format, true, P, D),
             v = kernels::page_bytes(format_.format, false, P, D);
  const uint64_t heads = uint64_t(num_kv_heads_);
  StorageBytes b;
  for (const auto& [id, s] : sequences_) {
    const int64_t T = s.length;
    if (!kernels::is_kivi(format_.format)) {
      b.payload += uint64_t(T) * heads * (k.data + v.data) / P;
      b.metadata += uint64_t(T) * heads * (k.meta + v.meta) / P;
      continue;
    }
    const int64_t key_pages = kernels::append::key_pages_end(int(T), R) / P;
    const int64_t values = kernels::append::value_pages_end(int(T), R);
    b.payload += heads * (uint64_t(key_pages) * k.data + uint64_t(values) * v.data / P);
    b.metadata += heads * (uint64_t(key_pages) * k.meta + uint64_t(values) * v.meta / P);
    b.payload += heads * uint64_t((T - key_pages * P) + (T - values)) * D * 2;  // the window
  }
  if (format_.format == KvFormat::kFp8)  // the method counts one scale per layer when it has one
    b.metadata += sequences_.size() * 2 * (format_.fp8_per_head ? heads : 1) * sizeof(float);
  b.payload *= uint64_t(num_layers_);
  b.metadata *= uint64_t(num_layers_);
  return b;
}

}  // namespace kvbench
