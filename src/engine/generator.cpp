#include "kvbench/engine/generator.h"

#include <algorithm>
#include <limits>

#include "kvbench/core/cuda_stream.h"
#include "kvbench/core/error.h"
#include "kvbench/core/phase_clock.h"
#include "kvbench/core/time.h"

namespace kvbench {
namespace {

// The sequences generate() added: release() removes them when it returns (an error there is
// the caller's to see), the destructor when it throws, so that a caller going on after a failed
// generation (a failed sample, a capacity batch that does not fit) gets the cache back with
// none of that generation's tokens held.
class SequenceLease {
 public:
  SequenceLease(KVCache& cache, size_t n) : cache_(cache) { seqs_.reserve(n); }
  SequenceLease(const SequenceLease&) = delete;
  SequenceLease& operator=(const SequenceLease&) = delete;
  ~SequenceLease() {
    for (; released_ < seqs_.size(); ++released_) {
      try {
        cache_.remove_sequence(seqs_[released_]);
      } catch (...) {  // a destructor must not throw; the error that unwinds is the one to tell
      }
    }
  }
  int64_t add() {  // (reserved: the push cannot throw once the cache has added it)
    seqs_.push_back(cache_.add_sequence());
    return seqs_.back();
  }
  void release() {  // in the order they were added, as before the lease
    while (released_ < seqs_.size()) cache_.remove_sequence(seqs_[released_++]);
  }

 private:
  KVCache& cache_;
  std::vector<int64_t> seqs_;
  size_t released_ = 0;  // seqs_ before this are removed
};

// The prefill's forwards: one packed forward, or one per group of `group` sequences, whose
// logits are the batch's rows in order.
at::Tensor prefill(const Transformer& model, const std::vector<SequenceStep>& batch, KVCache& cache,
                   int64_t group, PhaseClock* phases) {
  if (group <= 0 || static_cast<size_t>(group) >= batch.size())
    return model.forward(batch, cache, /*all_logits=*/false, phases);
  std::vector<at::Tensor> rows;
  for (size_t from = 0; from < batch.size(); from += static_cast<size_t>(group)) {
    const size_t to = std::min(batch.size(), from + static_cast<size_t>(group));
    const std::vector<SequenceStep> part(batch.begin() + static_cast<std::ptrdiff_t>(from),
                                         batch.begin() + static_cast<std::ptrdiff_t>(to));
    rows.push_back(model.forward(part, cache, /*all_logits=*/false, phases));
  }
  return at::cat(rows);
}

}  // namespace

GenerationResult generate(const Transformer& model, KVCache& cache,
                          const std::vector<std::vector<int64_t>>& prompts,
                          const GenerationConfig& config) {
  KVB_CHECK(!prompts.empty(), "generate: no prompts");
  KVB_CHECK(config.max_new_tokens >= 1, "generate: max_new_tokens must be >= 1");
  KVB_CHECK(config.prefill_group >= 0, "generate: prefill_group must be >= 0");
  const size_t n = prompts.size();
  GenerationResult result;
  result.sequences.resize(n);
  std::vector<Sampler> samplers;
  std::vector<SequenceStep> steps;
  std::vector<SequenceTokens> entering;  // at most max_new_tokens - 1 are fed back
  for (size_t i = 0; i < n; ++i) {
    KVB_CHECK(!prompts[i].empty(), "generate: prompt ", i, " is empty");
    const int64_t prompt = static_cast<int64_t>(prompts[i].size());
    entering.push_back({prompt, prompt + config.max_new_tokens - 1});
  }
  // The first token's suppressed ids, checked and on the logits' device before the clock
  // starts (an id past the vocabulary would index out of range on the device).
  at::Tensor suppressed;
  if (!config.first_token_suppressed.empty()) {
    const int64_t vocab = model.config().vocab_size;
    for (int64_t id : config.first_token_suppressed)
      KVB_CHECK(id >= 0 && id < vocab, "generate: first_token_suppressed id ", id,
                " is outside the vocabulary [0, ", vocab, ")");
    suppressed = at::tensor(config.first_token_suppressed, at::kLong).to(model.placement().device);
  }
  // Settings are checked (the samplers' parameters, the phase clock's device) before the cache
  // is touched: a refused call leaves its pools as they were.
  for (size_t i = 0; i < n; ++i) {
    SamplingParams sp = config.sampling;
    sp.seed += i;
    samplers.emplace_back(sp);
  }
  KVB_CHECK(!config.phases || config.phases->device().type() == model.placement().device.type(),
            "generate: a phase clock on ", config.phases ? config.phases->device().str() : "",
            " cannot time a model on ", model.placement().device.str());
  cache.reserve(entering);
  wait_for_device(cache.device());  // a pool made again is filled before the prefill's clock
  SequenceLease lease(cache, n);
  for (size_t i = 0; i < n; ++i) {
    steps.push_back({lease.add(), prompts[i]});
    result.prompt_tokens += static_cast<int64_t>(prompts[i].size());
  }
  auto is_eos = [&](int64_t id) {
    return !config.ignore_eos && std::find(config.eos_token_ids.begin(), config.eos_token_ids.end(),
                                           id) != config.eos_token_ids.end();
  };
  // Token times run on `clock` less the per-step memory bookkeeping below (storage, nominal and
  // kept counts walk every sequence and layer, more for some caches than others): the latency
  // a request sees is the steps', as decode_step_s times them.
  std::vector<size_t> active(n);
  for (size_t i = 0; i < n; ++i) active[i] = i;
  std::vector<SequenceStep> batch = steps;  // (a copy of every prompt: before the clock)
  Stopwatch clock;
  double bookkeeping_s = 0;
  bool first = true;
  while (!active.empty()) {
    Stopwatch step;
    if (config.phases) config.phases->reset();  // a step of an earlier call that threw
    const double retention_before = cache.retention_seconds();
    const double waited_before = cache.device_wait_seconds();
    // [active, vocab]; sampling reads it on the host (on a GPU: the step's one copy back, which
    // also waits for the step's kernels, so the step time includes the device's).
    at::Tensor out = first ? prefill(model, batch, cache, config.prefill_group, config.phases)
                           : model.forward(batch, cache, /*all_logits=*/false, config.phases);
    if (first && suppressed.defined())
      out = out.index_fill(-1, suppressed, -std::numeric_limits<double>::infinity());
    // The host's own time: a read-back inside the cache (a policy's choice, lists evicted on
    // the device) waits for the device, which is the device's time, not the host's.
    const double issued = step.seconds() - (cache.device_wait_seconds() - waited_before);
    if (config.phases) config.phases->mark(static_cast<int>(ForwardPhase::kSample));
    // Greedy decoding reads back only each row's argmax (greedy_ids), not [active, vocab] fp32
    // logits (8 MB per step at batch 16 on Llama-3); -1 for logits that are not finite (NaN
    // weights or an overflow would otherwise pass as generated tokens).
    at::Tensor logits, greedy;
    if (config.sampling.temperature == 0)
      greedy = greedy_ids(out);
    else
      logits = out.to(at::kCPU);
    const double retention = cache.retention_seconds() - retention_before;
    std::vector<int64_t> picked(active.size());
    for (size_t r = 0; r < active.size(); ++r) {
      const size_t i = active[r];
      picked[r] = greedy.defined() ? greedy.data_ptr<int64_t>()[r]
                                   : samplers[i].next(logits[static_cast<int64_t>(r)]);
      KVB_CHECK(picked[r] >= 0, "generate: the logits of sequence ", i,
                " are not finite (NaN or inf) at its new token ", result.sequences[i].tokens.size(),
                ": NaN weights or inputs, or an overflow");
    }
    // Every token of a step leaves with the step, once all rows are sampled: a row's time does
    // not depend on how many rows were sampled before it.
    const double token_time = clock.seconds() - bookkeeping_s;
    std::vector<size_t> still;
    std::vector<SequenceStep> next_batch;
    for (size_t r = 0; r < active.size(); ++r) {
      const size_t i = active[r];
      SequenceResult& s = result.sequences[i];
      const int64_t id = picked[r];
      s.tokens.push_back(id);
      s.token_times_s.push_back(token_time);
      if (is_eos(id)) {
        s.stop_reason = "eos";
      } else if (static_cast<int64_t>(s.tokens.size()) >= config.max_new_tokens) {
        s.stop_reason = "length";
      } else {
        still.push_back(i);
        next_batch.push_back({steps[i].seq, {id}});
      }
    }
    const double elapsed = step.seconds();
    Stopwatch bookkeeping;
    // The sample phase ends here, with the host's sampling; the read-back waited for the rest.
    std::vector<double> phase_s;
    if (config.phases) phase_s = config.phases->finish();
    const StorageBytes held = cache.storage();
    result.peak_allocated_bytes = std::max(result.peak_allocated_bytes, cache.allocated_bytes());
    if (held.total() >= result.peak_kv_bytes) {
      result.peak_kv_bytes = held.total();
      result.peak_storage = held;
      result.peak_nominal = cache.nominal();
      result.peak_retention_bytes = cache.retention_bytes();
      result.peak_tokens = 0;
      result.peak_kept_tokens.clear();
      for (const auto& s : steps) {
        result.peak_tokens += cache.length(s.seq);
        const std::vector<int64_t> kept = cache.kept_tokens(s.seq);
        result.peak_kept_tokens.resize(kept.size(), 0);
        for (size_t l = 0; l < kept.size(); ++l) result.peak_kept_tokens[l] += kept[l];
      }
    }
    if (first) {
      result.prefill_s = elapsed;
      result.prefill_retention_s = retention;
      result.prefill_phase_s = std::move(phase_s);
      first = false;
    } else {
      result.decode_step_s.push_back(elapsed);
      result.decode_step_host_s.push_back(issued);
      result.decode_step_retention_s.push_back(retention);
      if (config.phases) result.decode_phase_s.push_back(std::move(phase_s));
      result.decode_step_batch.push_back(static_cast<int64_t>(active.size()));
      result.decode_step_kv_bytes.push_back(held.held());
    }
    active = std::move(still);
    batch = std::move(next_batch);
    bookkeeping_s += bookkeeping.seconds();
  }
  lease.release();
  return result;
}

}  // namespace kvbench
