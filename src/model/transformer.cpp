#include "kvbench/model/transformer.h"

#include <ATen/CPUGeneratorImpl.h>

#include <mutex>
#include <set>

#include "kvbench/core/error.h"
#include "kvbench/core/phase_clock.h"
#include "kvbench/model/safetensors.h"

namespace kvbench {
namespace {

at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  return linear_rows(x, w, b);
}

// Whether this libtorch multiplies fp16 matrices on the CPU (1.13 does not; 2.x does).
bool cpu_fp16_matmul() {
  static const bool works = [] {
    try {
      const at::Tensor h = at::ones({2, 2}, at::kHalf);
      at::mm(h, h);
      return true;
    } catch (const c10::Error&) {
      return false;
    }
  }();
  return works;
}

std::string layer_prefix(int64_t i) { return "model.layers." + std::to_string(i) + "."; }

// A generator seeded with `seed` on `device`: a private one on the CPU; on a GPU the device's
// default generator, reseeded (libtorch offers no other without CUDA headers).
at::Generator seeded_generator(const at::Device& device, uint64_t seed) {
  if (device.is_cpu()) return at::detail::createCPUGenerator(seed);
  at::Generator gen = at::globalContext().defaultGenerator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_current_seed(seed);
  return gen;
}

}  // namespace

std::string ModelPlacement::describe() const {
  return std::string(dtype_name(dtype)) + " on " + device.str();
}

void check_placement(const ModelPlacement& p) {
  KVB_CHECK(p.dtype == at::kFloat || p.dtype == at::kBFloat16 || p.dtype == at::kHalf,
            "model: compute dtype ", c10::toString(p.dtype),
            " is not one of float32, bfloat16, float16");
  if (p.device.is_cpu()) {
    // The CPU paths (fused decode kernels, codecs) are built and tested for bf16 and fp32,
    // so fp16 stays refused there even where libtorch's CPU matmul takes it.
    KVB_CHECK(p.dtype != at::kHalf,
              "model: float16 compute is not supported on the CPU (kvbench's CPU paths compute "
              "in bfloat16 or float32",
              cpu_fp16_matmul() ? "" : "; this libtorch's CPU matrix multiply has no fp16 kernels",
              "); use bfloat16 or float32 on the CPU");
    return;
  }
  KVB_CHECK(p.device.is_cuda(), "model: device ", p.device.str(), " is not cpu or cuda");
  KVB_CHECK(at::hasCUDA(), "model: device ", p.device.str(),
            " requested but this libtorch has no CUDA (a CPU-only build)");
}

std::vector<std::pair<std::string, at::Tensor*>> bind_weights(const ModelConfig& c,
                                                              ModelWeights& w) {
  std::vector<std::pair<std::string, at::Tensor*>> slots;
  slots.push_back({"model.embed_tokens.weight", &w.embed});
  w.layers.resize(static_cast<size_t>(c.num_layers));
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = layer_prefix(i);
    LayerWeights& l = w.layers[static_cast<size_t>(i)];
    slots.push_back({p + "input_layernorm.weight", &l.input_norm});
    slots.push_back({p + "self_attn.q_proj.weight", &l.q_proj});
    if (c.attention_bias) slots.push_back({p + "self_attn.q_proj.bias", &l.q_bias});
    slots.push_back({p + "self_attn.k_proj.weight", &l.k_proj});
    if (c.attention_bias) slots.push_back({p + "self_attn.k_proj.bias", &l.k_bias});
    slots.push_back({p + "self_attn.v_proj.weight", &l.v_proj});
    if (c.attention_bias) slots.push_back({p + "self_attn.v_proj.bias", &l.v_bias});
    slots.push_back({p + "self_attn.o_proj.weight", &l.o_proj});
    if (c.o_proj_bias) slots.push_back({p + "self_attn.o_proj.bias", &l.o_bias});
    if (c.qk_norm) {
      slots.push_back({p + "self_attn.q_norm.weight", &l.q_norm});
      slots.push_back({p + "self_attn.k_norm.weight", &l.k_norm});
    }
    slots.push_back({p + "post_attention_layernorm.weight", &l.post_norm});
    slots.push_back({p + "mlp.gate_proj.weight", &l.gate_proj});
    if (c.mlp_bias) slots.push_back({p + "mlp.gate_proj.bias", &l.gate_bias});
    slots.push_back({p + "mlp.up_proj.weight", &l.up_proj});
    if (c.mlp_bias) slots.push_back({p + "mlp.up_proj.bias", &l.up_bias});
    slots.push_back({p + "mlp.down_proj.weight", &l.down_proj});
    if (c.mlp_bias) slots.push_back({p + "mlp.down_proj.bias", &l.down_bias});
  }
  slots.push_back({"model.norm.weight", &w.norm});
  if (!c.tie_word_embeddings) slots.push_back({"lm_head.weight", &w.lm_head});
  return slots;
}

namespace {

std::vector<int64_t> shape_of(const ModelConfig& c, const std::string& name) {
  const int64_t h = c.hidden_size, q = c.num_heads * c.head_dim, kv = c.num_kv_heads * c.head_dim;
  auto ends = [&](const char* suffix) {
    const std::string s = suffix;
    return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
  };
  if (name == "model.embed_tokens.weight" || name == "lm_head.weight") return {c.vocab_size, h};
  if (ends("layernorm.weight") || name == "model.norm.weight") return {h};
  if (ends("q_norm.weight") || ends("k_norm.weight")) return {c.head_dim};
  if (ends("q_proj.weight")) return {q, h};
  if (ends("q_proj.bias")) return {q};
  if (ends("k_proj.weight") || ends("v_proj.weight")) return {kv, h};
  if (ends("k_proj.bias") || ends("v_proj.bias")) return {kv};
  if (ends("o_proj.weight")) return {h, q};
  if (ends("o_proj.bias") || ends("down_proj.bias")) return {h};
  if (ends("gate_proj.weight") || ends("up_proj.weight")) return {c.intermediate_size, h};
  if (ends("gate_proj.bias") || ends("up_proj.bias")) return {c.intermediate_size};
  if (ends("down_proj.weight")) return {h, c.intermediate_size};
  throw Error("internal: no shape rule for tensor " + name);
}

void finish_weights(const ModelConfig& c, ModelWeights& w) {
  if (c.tie_word_embeddings) w.lm_head = w.embed;
}

// Stacks `parts` (along dim 0) into one tensor and makes each part a view into it, so the
// stacked copy is the only one held.
at::Tensor stack_rows(const std::vector<at::Tensor*>& parts) {
  std::vector<at::Tensor> rows;
  for (at::Tensor* p : parts) rows.push_back(*p);
  at::Tensor all = at::cat(rows, 0);
  int64_t at_row = 0;
  for (at::Tensor* p : parts) {
    const int64_t n = p->size(0);
    *p = all.narrow(0, at_row, n);
    at_row += n;
  }
  return all;
}

// The fused projections of every layer (LayerWeights::qkv_proj, gate_up_proj).
void fuse_projections(ModelWeights& w) {
  for (LayerWeights& l : w.layers) {
    l.qkv_proj = stack_rows({&l.q_proj, &l.k_proj, &l.v_proj});
    if (l.q_bias.defined()) l.qkv_bias = stack_rows({&l.q_bias, &l.k_bias, &l.v_bias});
    l.gate_up_proj = stack_rows({&l.gate_proj, &l.up_proj});
    if (l.gate_bias.defined()) l.gate_up_bias = stack_rows({&l.gate_bias, &l.up_bias});
  }
}

}  // namespace

std::vector<std::pair<std::string, std::vector<int64_t>>> Transformer::expected_tensors(
    const ModelConfig& config) {
  ModelWeights scratch;
  std::vector<std::pair<std::string, std::vector<int64_t>>> out;
  for (const auto& [name, slot] : bind_weights(config, scratch)) {
    out.push_back({name, shape_of(config, name)});
  }
  return out;
}

Transformer::Transformer(ModelConfig config, ModelWeights weights)
    : config_(std::move(config)),
      weights_(std::move(weights)),
      inv_freq_(rope_inverse_frequencies(config_)) {
  KVB_CHECK(weights_.layers.size() == static_cast<size_t>(config_.num_layers),
            "model: ", weights_.layers.size(), " layers of weights for ", config_.num_layers,
            " layers in the config");
  KVB_CHECK(weights_.embed.defined(), "model: no embedding weights");
  placement_ = {weights_.embed.device(), weights_.embed.scalar_type()};
  check_placement(placement_);
  ModelWeights& w = weights_;
  for (auto& [name, slot] : bind_weights(config_, w)) {
    KVB_CHECK(slot->defined(), "model: weight ", name, " is missing");
    KVB_CHECK(slot->device() == placement_.device && slot->scalar_type() == placement_.dtype,
              "model: ", name, " is ", dtype_name(slot->scalar_type()), " on ",
              slot->device().str(), ", the embedding ", placement_.describe());
  }
  fuse_projections(weights_);
}

Transformer Transformer::load(const std::string& dir, const ModelPlacement& placement) {
  check_placement(placement);
  ModelConfig config = load_model_config(dir);
  check_model_ops_head_dim(config.head_dim, placement.device);
  SafetensorsCheckpoint checkpoint(dir);
  ModelWeights w;
  std::set<std::string> read;
  for (auto& [name, slot] : bind_weights(config, w)) {
    // The checkpoint's own dtype stays recorded in the config.
    const at::Tensor stored = checkpoint.load(name, shape_of(config, name));
    *slot = stored.to(placement.options()).contiguous();
    // bf16 and fp32 reach past fp16's range (65504): narrowed, such a weight becomes inf, and
    // every output NaN, with no word of why.
    if (placement.dtype == at::kHalf && stored.scalar_type() != at::kHalf &&
        !at::isfinite(*slot).all().item<bool>() && at::isfinite(stored).all().item<bool>())
      KVB_CHECK(false, "model: ", dir, ": tensor ", name, " (", dtype_name(stored.scalar_type()),
                ") holds values past float16's range (65504), which become inf in float16; "
                "set model.compute_dtype to bfloat16 or float32");
    read.insert(name);
  }
  std::vector<std::string> unused;
  for (const std::string& name : checkpoint.names()) {
    const bool rope_cache =
        name.size() >= 19 && name.compare(name.size() - 19, 19, "rotary_emb.inv_freq") == 0;
    const bool tied_head = config.tie_word_embeddings && name == "lm_head.weight";
    if (!read.count(name) && !rope_cache && !tied_head) unused.push_back(name);
  }
  finish_weights(config, w);
  Transformer model(std::move(config), std::move(w));
  model.unused_tensors_ = std::move(unused);
  return model;
}

Transformer Transformer::random(const ModelConfig& config, uint64_t seed,
                                const ModelPlacement& placement) {
  check_placement(placement);
  check_model_ops_head_dim(config.head_dim, placement.device);
  at::Generator gen = seeded_generator(placement.device, seed);
  const auto fp32 = at::TensorOptions().device(placement.device).dtype(at::kFloat);
  ModelWeights w;
  for (auto& [name, slot] : bind_weights(config, w)) {
    const auto shape = shape_of(config, name);
    const bool norm = name.find("norm.weight") != std::string::npos;
    at::Tensor t = at::randn(shape, gen, fp32);
    t = norm ? t.mul_(0.1).add_(1.0) : t.mul_(0.02);
    *slot = t.to(placement.dtype);
  }
  finish_weights(config, w);
  return Transformer(config, std::move(w));
}

Transformer Transformer::to(const ModelPlacement& placement) const {
  check_placement(placement);
  check_model_ops_head_dim(config_.head_dim, placement.device);
  ModelWeights source = weights_, w;
  auto from = bind_weights(config_, source);
  auto into = bind_weights(config_, w);
  for (size_t i = 0; i < from.size(); ++i) {
    *into[i].second = from[i].second->to(placement.options()).contiguous();
  }
  finish_weights(config_, w);
  return Transformer(config_, std::move(w));
}

uint64_t Transformer::weight_bytes() const {
  uint64_t elements = 0;  // a tied lm_head is not listed, so it is not counted twice
  for (const auto& [name, shape] : expected_tensors(config_)) {
    uint64_t n = 1;
    for (int64_t d : shape) n *= static_cast<uint64_t>(d);
    elements += n;
  }
  return elements * at::elementSize(placement_.dtype);
}

uint64_t Transformer::decode_step_weight_bytes(int64_t batch) const {
  if (config_.tie_word_embeddings) return weight_bytes();  // the lm_head reads it all
  const uint64_t row = uint64_t(config_.hidden_size) * at::elementSize(placement_.dtype);
  const uint64_t rows =
      uint64_t(std::min<int64_t>(std::max<int64_t>(batch, 0), config_.vocab_size));
  return weight_bytes() - uint64_t(config_.vocab_size) * row + rows * row;
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const at::Tensor xf = x.to(at::kFloat);  // the same tensor when x is fp32
  const at::Tensor normed = xf * at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true).add_(eps));
  return normed.to(x.scalar_type()) * weight;
}

const std::vector<std::string>& forward_phase_names() {
  static const std::vector<std::string> names = {"embed",  "norm", "qkv_rope", "attend",
                                                 "o_proj", "mlp",  "lm_head",  "sample"};
  return names;
}

namespace {
void mark(PhaseClock* phases, ForwardPhase p) {
  if (phases) phases->mark(static_cast<int>(p));
}
}  // namespace

at::Tensor Transformer::attention(const LayerWeights& w, int64_t layer, const at::Tensor& h,
                                  const RopeTables& rope, const std::vector<SequenceStep>& batch,
                                  KVCache& cache, PhaseClock* phases) const {
  const ModelConfig& c = config_;
  mark(phases, ForwardPhase::kQkvRope);
  const int64_t n = h.size(0);
  const QkvRows rows = split_qkv_rope(
      linear(h, w.qkv_proj, w.qkv_bias), c.num_heads, c.num_kv_heads, c.head_dim, rope,
      c.qk_norm ? w.q_norm : at::Tensor(), c.qk_norm ? w.k_norm : at::Tensor(), c.rms_norm_eps);
  std::vector<int64_t> seqs, counts;
  for (const auto& s : batch) {
    seqs.push_back(s.seq);
    counts.push_back(static_cast<int64_t>(s.tokens.size()));
  }
  const at::Device where = cache.device();
  // The cache's own dtype only when it is the model's: never a rounding of the model's values.
  const at::ScalarType dtype =
      cache.attend_dtype() == h.scalar_type() ? cache.attend_dtype() : at::kFloat;
  mark(phases, ForwardPhase::kAttend);
  const at::Tensor o =
      cache.append_and_attend_batch(layer, seqs, counts, rows.q.to(where, dtype),
                                    rows.k.to(where, dtype), rows.v.to(where, dtype));
  mark(phases, ForwardPhase::kOutProj);
  return linear(o.to(h.options()).reshape({n, c.num_heads * c.head_dim}), w.o_proj, w.o_bias);
}

at::Tensor Transformer::forward(const std::vector<SequenceStep>& batch, KVCache& cache,
                                bool all_logits, PhaseClock* phases) const {
  KVB_CHECK(!batch.empty(), "forward: empty batch");
  mark(phases, ForwardPhase::kEmbed);
  std::vector<int64_t> ids, positions, last_rows;
  for (const auto& s : batch) {
    KVB_CHECK(!s.tokens.empty(), "forward: sequence ", s.seq, " has no new tokens");
    const int64_t start = cache.length(s.seq);
    for (size_t i = 0; i < s.tokens.size(); ++i) {
      KVB_CHECK(s.tokens[i] >= 0 && s.tokens[i] < config_.vocab_size, "forward: token id ",
                s.tokens[i], " outside the vocabulary [0, ", config_.vocab_size, ")");
      ids.push_back(s.tokens[i]);
      positions.push_back(start + static_cast<int64_t>(i));
    }
    last_rows.push_back(static_cast<int64_t>(ids.size()) - 1);
  }
  const at::TensorOptions opts = placement_.options();
  RopeTables rope;
  {
    auto [cos, sin] = rope_cos_sin(at::tensor(positions, at::kLong), inv_freq_);
    // The eager formulas take them in the activation dtype, the kernels in fp32.
    if (model_ops_path(placement_.device) == ModelOpsPath::kEager) {
      rope.cos_act = cos.to(opts), rope.sin_act = sin.to(opts);
    } else {
      rope.cos = cos.to(placement_.device), rope.sin = sin.to(placement_.device);
    }
  }

  // Every host-to-device copy of the step happens here, before its first launch: a copy from
  // pageable memory waits for the stream, which is idle now but would not be later (the
  // step's host time, decode_host_s, would then include the device's).
  const at::Tensor id_t = at::tensor(ids, at::kLong).to(placement_.device);
  const at::Tensor last =
      all_logits ? at::Tensor() : at::tensor(last_rows, at::kLong).to(placement_.device);
  at::Tensor x = at::embedding(weights_.embed, id_t);  // [N, hidden]
  // Each sublayer's output waits in `pending` until the next norm adds it to x (one kernel).
  at::Tensor pending;
  const double eps = config_.rms_norm_eps;
  for (int64_t i = 0; i < config_.num_layers; ++i) {
    const LayerWeights& w = weights_.layers[static_cast<size_t>(i)];
    mark(phases, ForwardPhase::kNorm);
    const at::Tensor normed = add_rms_norm(x, pending, w.input_norm, eps);
    pending = attention(w, i, normed, rope, batch, cache, phases);
    mark(phases, ForwardPhase::kNorm);
    const at::Tensor h = add_rms_norm(x, pending, w.post_norm, eps);
    mark(phases, ForwardPhase::kMlp);
    pending = linear(silu_mul(linear(h, w.gate_up_proj, w.gate_up_bias)), w.down_proj, w.down_bias);
  }
  mark(phases, ForwardPhase::kHead);
  if (!all_logits) {
    x = x.index_select(0, last);
    pending = pending.index_select(0, last);
  }
  return linear(add_rms_norm(x, pending, weights_.norm, eps), weights_.lm_head, at::Tensor())
      .to(at::kFloat);
}

}  // namespace kvbench
