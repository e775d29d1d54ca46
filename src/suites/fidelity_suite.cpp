#include "kvbench/suites/fidelity_suite.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <optional>
#include <sstream>

#include "kvbench/core/cuda_stream.h"
#include "kvbench/core/error.h"
#include "kvbench/core/stats.h"
#include "kvbench/core/text.h"
#include "kvbench/core/time.h"
#include "kvbench/kv/method_registry.h"
#include "kvbench/suites/workload.h"

namespace kvbench {

using nlohmann::json;

std::vector<ParamSpec> FidelitySuite::param_specs() {
  return {
      ParamSpec::string("text", "",
                        "corpus text, tokenized with the model's tokenizer; empty (and no "
                        "text_file): seeded random token ids"),
      ParamSpec::path("text_file", "", "a UTF-8 text file used as the corpus"),
      ParamSpec::integer("windows", 4, "corpus windows scored (consecutive, non-overlapping)")
          .range(1, 100000),
      ParamSpec::integer("prefix_tokens", 256, "tokens prefilled before scoring begins")
          .range(1, 1 << 20),
      ParamSpec::integer("eval_tokens", 64, "teacher-forced decode steps scored per window")
          .range(1, 1 << 20),
  };
}

StepFidelity step_fidelity(const at::Tensor& full_logits, const at::Tensor& method_logits,
                           int64_t target) {
  const at::Tensor lf = at::log_softmax(full_logits.to(at::kDouble).flatten(), 0);
  const at::Tensor lm = at::log_softmax(method_logits.to(at::kDouble).flatten(), 0);
  StepFidelity s;
  // KL(P || Q) = sum p (log p - log q); terms with p = 0 contribute 0 (exp(-inf) * inf is NaN).
  const at::Tensor p = lf.exp();
  // Rounding can leave a tiny negative sum; NaN (non-finite logits) must stay NaN.
  const double kl = at::where(p > 0, p * (lf - lm), at::zeros_like(p)).sum().item<double>();
  s.kl = kl < 0 ? 0.0 : kl;
  // The method's top token is one of the full cache's top tokens (exact ties in the full
  // cache's logits, likely in fp16 over a large vocabulary, are not disagreements).
  s.top1_agree = lf[lm.argmax().item<int64_t>()].item<double>() == lf.max().item<double>();
  s.nll_full = -lf[target].item<double>();
  s.nll_method = -lm[target].item<double>();
  return s;
}

namespace {

// The corpus, and the BOS its tokenizer put first (none for random ids): every window starts
// with it, as llama.cpp's perplexity and KL-divergence modes start each chunk, so that no
// window lacks the token a trained model's attention sinks on.
struct Corpus {
  std::vector<int64_t> ids;
  std::optional<int64_t> bos;
};

Corpus corpus_tokens(const CellContext& ctx, int64_t needed) {
  const json& p = ctx.params;
  std::string text = p["text"];
  const std::string file = p["text_file"];
  KVB_CHECK(text.empty() || file.empty(), "fidelity: give text or text_file, not both");
  if (!file.empty()) {
    std::ifstream in(file, std::ios::binary);
    KVB_CHECK(in.good(), "fidelity: cannot read text_file '", file, "'");
    std::ostringstream s;
    s << in.rdbuf();
    text = s.str();
    KVB_CHECK(!text.empty(), "fidelity: text_file '", file,
              "' is empty (for seeded random token ids, give neither text nor text_file)");
    KVB_CHECK(is_valid_utf8(text), "fidelity: text_file '", file,
              "' is not UTF-8 text (a binary file, or another encoding)");
  }
  const int64_t vocab = ctx.model.get().config().vocab_size;
  // Seeded by the run, not the cell: every method of the run scores the same tokens.
  if (text.empty()) return {synthetic_prompts(1, needed, vocab, ctx.spec.seed).front(), {}};
  std::vector<int64_t> ids;
  const Tokenizer& tokenizer = ctx.model.tokenizer();
  // The template's prefix (BOS) opens the corpus, as llama.cpp's perplexity does; its suffix (an
  // add_eos_token tokenizer's EOS) does not end it: the corpus is one running text.
  std::vector<int32_t> corpus = tokenizer.encode(text, true);
  corpus.resize(corpus.size() - tokenizer.special_suffix().size());
  for (int32_t id : corpus) {
    KVB_CHECK(id < vocab, "fidelity: the tokenizer gave id ", id,
              " beyond the model's vocabulary of ", vocab);
    ids.push_back(id);
  }
  KVB_CHECK(static_cast<int64_t>(ids.size()) >= needed, "fidelity: the corpus has ", ids.size(),
            " tokens but windows * (prefix_tokens + eval_tokens + 1) = ", needed,
            " are needed; give a longer text or fewer/shorter windows");
  const std::optional<int32_t> bos = tokenizer.bos_id();
  if (bos && ids.front() == *bos) return {ids, *bos};
  return {ids, {}};
}

// Non-finite logits would read as KL 0 (or NaN) and put a broken method on the Pareto front.
void check_finite_logits(const at::Tensor& full, const at::Tensor& method, int64_t window,
                         int64_t step) {
  const std::string at = " at window " + std::to_string(window) + ", step " + std::to_string(step);
  KVB_CHECK(at::isfinite(full).all().item<bool>(),
            "fidelity: the full cache's logits are not "
            "finite (NaN or inf)",
            at,
            ": the model's weights or dtype overflow, so nothing can be "
            "compared");
  KVB_CHECK(at::isfinite(method).all().item<bool>(),
            "fidelity: the method's logits are not "
            "finite (NaN or inf)",
            at,
            " while the full cache's are: its stored keys or values "
            "overflow or are corrupt");
}

double quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  const double pos = q * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(pos);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
}

}  // namespace

uint64_t FidelitySuite::estimate_bytes(const EstimateContext& ctx) const {
  if (!ctx.model) return 0;
  const ModelConfig& c = *ctx.model;
  const int64_t prompt = ctx.params["prefix_tokens"], steps = ctx.params["eval_tokens"];
  // The baseline cache at fp32 is the largest uncompressed cache the run can have.
  const double full_per_token = full_cache_bytes_per_token(c);
  // The two caches stepped one after the other, as the run's own check charges them.
  return model_weight_bytes(c, ctx.weight_dtype) + ctx.shared_bytes +
         generation_bytes(c, ctx.kv_bytes_per_token_at(prompt + steps) + full_per_token, 1, prompt,
                          steps + 1);
}

CellOutput FidelitySuite::run(const CellContext& ctx) {
  const json& p = ctx.params;
  const int64_t windows = p["windows"], prefix = p["prefix_tokens"], steps = p["eval_tokens"];
  const int64_t span = prefix + steps + 1;
  const Transformer& model = ctx.model.get();
  // Two caches of one sequence, the method's and the full one, stepped one after the other;
  // every eval token is fed (positions up to prefix + steps - 1), where a generation feeds all
  // but its last: steps + 1 in generation's terms.
  check_generation_fits(ctx, 1, prefix, steps + 1, "fidelity", 0, baseline_bytes_per_token(ctx));
  const Corpus text = corpus_tokens(ctx, windows * span);
  const std::vector<int64_t>& corpus = text.ids;
  std::unique_ptr<KVCache> base_cache;
  try {
    base_cache = make_baseline_cache(ctx);
  } catch (const Error& e) {  // else the message names 'full', not the cell's method
    throw Error(std::string("fidelity: the full-cache baseline the KL is measured against "
                            "cannot run with this attention backend and model dtype: ") +
                e.what());
  }
  auto cache = make_cell_cache(ctx);

  CellOutput out;
  std::vector<double> kl_all;
  double nll_full = 0, nll_method = 0;
  int64_t agree = 0;
  GenerationResult held;  // the method's cache at a window's end, for the memory columns
  // One untimed prefill and decode step of the method's cache first: window 0's first timed
  // step would otherwise carry the cache's first-use allocations (on a GPU, its kernels' first
  // launches) that no later step has.
  {
    cache->reserve({{prefix, prefix + steps}});  // the windows' size: their pools are these
    const int64_t sw = cache->add_sequence();
    std::vector<int64_t> prompt(corpus.begin(), corpus.begin() + prefix);
    if (text.bos) prompt.front() = *text.bos;
    model.forward({{sw, prompt}}, *cache);
    wait_for_device(model.forward({{sw, {corpus[static_cast<size_t>(prefix)]}}}, *cache).device());
    cache->remove_sequence(sw);
  }
  ctx.progress.begin(ctx.cell_id, static_cast<size_t>(windows * steps));
  for (int64_t w = 0; w < windows; ++w) {
    const int64_t* tok = corpus.data() + w * span;
    base_cache->reserve({{prefix, prefix + steps}});  // no pool grows inside a timed step
    cache->reserve({{prefix, prefix + steps}});
    const int64_t sb = base_cache->add_sequence(), sm = cache->add_sequence();
    std::vector<int64_t> prompt(tok, tok + prefix);
    if (text.bos) prompt.front() = *text.bos;  // (a window's first token gives way to it)
    model.forward({{sb, prompt}}, *base_cache);
    model.forward({{sm, prompt}}, *cache);
    json kl = json::array(), top1 = json::array(), nf = json::array(), nm = json::array();
    std::vector<double> step_s;  // the method's teacher-forced decode steps
    for (int64_t i = 0; i < steps; ++i) {
      const std::vector<int64_t> input = {tok[prefix + i]};
      const at::Tensor lb = model.forward({{sb, input}}, *base_cache);
      // On a GPU forward() returns before its work ends: the step's time is from an idle
      // device to the end of the method's own work (the baseline's is not in it).
      wait_for_device(lb.device());
      Stopwatch timer;
      const at::Tensor lm = model.forward({{sm, input}}, *cache);
      wait_for_device(lm.device());
      step_s.push_back(timer.seconds());
      check_finite_logits(lb, lm, w, i);
      const StepFidelity s = step_fidelity(lb, lm, tok[prefix + i + 1]);
      kl.push_back(s.kl), top1.push_back(s.top1_agree ? 1 : 0);
      nf.push_back(s.nll_full), nm.push_back(s.nll_method);
      kl_all.push_back(s.kl);
      agree += s.top1_agree;
      nll_full += s.nll_full, nll_method += s.nll_method;
      ctx.progress.advance("window " + std::to_string(w + 1));
    }
    // Every window ends at the same length: its last state is the cell's peak, so KL and
    // bits per value come from the same cache at the same context.
    held.peak_tokens = cache->length(sm);
    held.peak_storage = cache->storage();
    held.peak_allocated_bytes = cache->allocated_bytes();
    held.peak_nominal = cache->nominal();
    held.peak_retention_bytes = cache->retention_bytes();
    held.peak_kept_tokens = cache->kept_tokens(sm);
    base_cache->remove_sequence(sb);
    cache->remove_sequence(sm);
    out.records.push_back({{"kind", "window"},
                           {"window", w},
                           {"first_token", w * span},
                           {"samples_s", step_s},
                           {"time_s", to_json(summarize(step_s, ctx.seed))},
                           {"kl", kl},
                           {"top1_agree", top1},
                           {"nll_full", nf},
                           {"nll_method", nm}});
  }
  ctx.progress.end();

  const double n = static_cast<double>(kl_all.size());
  double kl_sum = 0;
  for (double k : kl_all) kl_sum += k;
  out.summary = {
      {"positions", kl_all.size()},
      {"windows", windows},
      {"prefix_tokens", prefix},
      {"eval_tokens", steps},
      {"corpus", p["text"].get<std::string>().empty() && p["text_file"].get<std::string>().empty()
                     ? "synthetic token ids"
                     : "text"},
      {"baseline", "full cache in the run's KV dtype"},
      {"kl_mean", kl_sum / n},
      {"kl_median", quantile(kl_all, 0.5)},
      {"kl_p99", quantile(kl_all, 0.99)},
      {"kl_max", quantile(kl_all, 1.0)},
      {"top1_agreement", static_cast<double>(agree) / n},
      {"ppl_full", std::exp(nll_full / n)},
      {"ppl_method", std::exp(nll_method / n)},
      {"ppl_ratio", std::exp((nll_method - nll_full) / n)},
      {"kv_memory", kv_memory_json(held, model.config())}};
  if (std::string w = nominal_mismatch_warning(out.summary["kv_memory"]); !w.empty())
    out.warnings.push_back(std::move(w));
  if (std::string w = nothing_evicted_warning(ctx.method, out.summary["kv_memory"]); !w.empty())
    out.warnings.push_back(std::move(w));
  // (Random weights are warned about once per run, by the model's loader.)
  const bool synthetic = out.summary["corpus"] == "synthetic token ids";
  if (synthetic && !ctx.model.identity().value("random_weights", true)) {
    out.warnings.push_back(
        "the corpus is random token ids: a trained model's perplexities on them are those of "
        "noise (ppl_full far above the vocabulary's); give text or text_file");
  }
  // A method that changed nothing reads as lossless; say why it may have changed nothing.
  const bool exact = std::all_of(kl_all.begin(), kl_all.end(), [](double k) { return k == 0; });
  if (exact && ctx.method.value("name", "") != "full") {
    out.warnings.push_back(
        "every step's KL is exactly 0: the method stored what the full cache stores here (a "
        "full-precision window or token budget that covers prefix_tokens + eval_tokens, or the "
        "baseline's own format); raise prefix_tokens to measure its compression");
  }
  return out;
}

namespace {

// Six decimals, or three significant digits below 1e-4 (fp32's KL of 7e-8 is not 0).
std::string format_kl(double kl) {
  if (kl == 0 || std::fabs(kl) >= 1e-4) return format_fixed(kl, 6);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2e", kl);
  return buf;
}

}  // namespace

Table FidelitySuite::summary_table(const CellOutput& output) const {
  const json& s = output.summary;
  Table t;
  t.columns = {"positions", "KL mean", "KL p99", "KL max", "top-1 agree", "PPL full", "PPL method"};
  t.rows.push_back({std::to_string(s["positions"].get<int64_t>()),
                    format_kl(s["kl_mean"].get<double>()), format_kl(s["kl_p99"].get<double>()),
                    format_kl(s["kl_max"].get<double>()),
                    format_fixed(100 * s["top1_agreement"].get<double>(), 2) + "%",
                    format_fixed(s["ppl_full"].get<double>(), 3),
                    format_fixed(s["ppl_method"].get<double>(), 3)});
  const std::string memory = kv_memory_note(s.value("kv_memory", json()));
  if (!memory.empty()) t.notes.push_back(memory);
  return t;
}

}  // namespace kvbench
