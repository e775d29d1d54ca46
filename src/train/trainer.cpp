// The trainer: a batched, padded forward in plain ATen ops on parameter tensors that require
// grad (autograd records through at:: ops), AdamW written out (so its arithmetic is visible and
// its state is plain tensors in a safetensors file), and the project's own task generators as
// the data.
#include "kvbench/train/trainer.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "kvbench/core/error.h"
#include "kvbench/core/json_text.h"
#include "kvbench/core/jsonl.h"
#include "kvbench/core/param_spec.h"
#include "kvbench/core/rng.h"
#include "kvbench/engine/generator.h"
#include "kvbench/kv/method_registry.h"
#include "kvbench/model/presets.h"
#include "kvbench/model/safetensors.h"
#include "kvbench/model/tiny_tokenizer.h"
#include "kvbench/report/atomic_file.h"
#include "kvbench/workloads/task_factory.h"

namespace kvbench {

using nlohmann::json;

namespace {

std::vector<ParamSpec> recipe_specs() {
  return {
      ParamSpec::integer("seed", 0, "weights and training data").at_least(0),
      ParamSpec::integer("threads", 2, "intra-op threads").range(1, 1024),
      ParamSpec::string("init", "torch",
                        "initial weights: torch (PyTorch's defaults: embedding N(0, 1), linear "
                        "U(+-1/sqrt(fan_in))) or normal (N(0, 0.02), Hugging Face's)",
                        {"torch", "normal"}),
      ParamSpec::number("lr", 1e-3, "peak learning rate").range(0, 1),
      ParamSpec::number("min_lr", 1e-4, "learning rate at the end of the cosine").range(0, 1),
      ParamSpec::integer("warmup_steps", 50, "linear warm-up steps").at_least(0),
      ParamSpec::number("weight_decay", 0.1, "AdamW decoupled weight decay (matrices only)")
          .range(0, 10),
      ParamSpec::number("beta1", 0.9, "AdamW beta1").range(0, 0.999999),
      ParamSpec::number("beta2", 0.95, "AdamW beta2").range(0, 0.999999),
      ParamSpec::number("adam_eps", 1e-8, "AdamW epsilon").range(0, 1),
      ParamSpec::number("grad_clip", 1.0, "global gradient-norm clip (0: none)").range(0, 1e9),
      ParamSpec::number("answer_weight", 5.0, "loss weight of answer tokens (prompt tokens: 1)")
          .range(0, 1e6),
      ParamSpec::integer("eval_every", 100, "steps between held-out evaluations (0: end only)")
          .at_least(0),
      ParamSpec::integer("eval_samples", 20, "held-out samples per evaluation").range(1, 100000),
      ParamSpec::integer("checkpoint_every", 100, "steps between checkpoints (0: end only)")
          .at_least(0),
  };
}

std::vector<ParamSpec> task_specs() {
  return {ParamSpec::string("task", "", "a synthetic task (kvbench list tasks)"),
          ParamSpec::number("weight", 1.0, "share of the mixture").range(0, 1e9),
          ParamSpec::integer("min_tokens", 0, "only in steps whose target is at least this")
              .at_least(0),
          ParamSpec::integer("max_tokens", 0,
                             "only in steps whose target is at most this (0: no limit)")
              .at_least(0),
          ParamSpec::number("repeat_keys", 0.0,
                            "share of samples whose digit answers are redrawn with repeated "
                            "digits (runs and cycles), everywhere in the prompt")
              .range(0, 1)};
}

std::vector<ParamSpec> stage_specs() {
  return {ParamSpec::integer("steps", 100, "optimiser steps").range(1, 100000000),
          ParamSpec::integer("batch", 16, "sequences per step").range(1, 100000),
          ParamSpec::integer("min_tokens", 256, "shortest target prompt length").range(16, 1 << 20),
          ParamSpec::integer("max_tokens", 256, "longest target prompt length").range(16, 1 << 20)};
}

std::vector<ParamSpec> eval_specs() {
  return {ParamSpec::string("task", "", "a synthetic task (kvbench list tasks)"),
          ParamSpec::integer("target_tokens", 1024, "prompt length").range(16, 1 << 20),
          ParamSpec::integer("max_new_tokens", 16, "generation cap").range(1, 4096)};
}

// Task parameters given next to the spec keys of a task or eval entry, checked by the factory
// with a probe sample so a typo fails at load time.
json extra_params(const json& entry, const std::vector<ParamSpec>& specs) {
  json extra = json::object();
  for (const auto& [key, value] : entry.items()) {
    bool known = false;
    for (const auto& s : specs) known |= s.name == key;
    if (!known) extra[key] = value;
  }
  return extra;
}

void check_task(const std::string& task, const json& extra, const std::string& path) {
  const auto names = task_names();
  if (std::find(names.begin(), names.end(), task) == names.end()) {
    std::string list;
    for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
    throw ConfigError(join_path(path, "task"), "unknown task '" + task + "'; valid: " + list);
  }
  std::vector<std::string> keys;
  for (const auto& s : task_param_specs(task, path)) keys.push_back(s.name);
  keys.push_back("task");
  check_known_keys(extra, keys, path);
  for (const char* owned : {"target_tokens", "seed", "depth"}) {
    if (extra.contains(owned))
      throw ConfigError(join_path(path, owned), "is set by the trainer per sample");
  }
  resolve_task_params(task, extra, path, {"task"});  // types, ranges, checks across keys
}

std::vector<json> entries(const json& config, const char* key, const std::string& path) {
  const std::string p = join_path(path, key);
  if (!config.contains(key) || !config[key].is_array() || config[key].empty())
    throw ConfigError(p, "must be a non-empty list of objects");
  std::vector<json> out;
  for (size_t i = 0; i < config[key].size(); ++i) {
    if (!config[key][i].is_object())
      throw ConfigError(p + "[" + std::to_string(i) + "]", "must be an object");
    out.push_back(config[key][i]);
  }
  return out;
}

at::Tensor rope_angles(const at::Tensor& inv_freq, int64_t length) {
  at::Tensor pos = at::arange(length, at::kLong).to(at::kDouble);
  at::Tensor angles = at::outer(pos, inv_freq);
  return at::cat({angles, angles}, -1);
}

double sum_squares(const at::Tensor& t) { return t.to(at::kDouble).pow(2).sum().item<double>(); }

}  // namespace

int64_t TrainRecipe::total_steps() const {
  int64_t n = 0;
  for (const auto& s : stages) n += s.steps;
  return n;
}

json TrainRecipe::to_json() const {
  json j = {{"description", description},
            {"model", model},
            {"seed", seed},
            {"threads", threads},
            {"init", init},
            {"lr", lr},
            {"min_lr", min_lr},
            {"warmup_steps", warmup_steps},
            {"weight_decay", weight_decay},
            {"beta1", beta1},
            {"beta2", beta2},
            {"adam_eps", adam_eps},
            {"grad_clip", grad_clip},
            {"answer_weight", answer_weight},
            {"eval_every", eval_every},
            {"eval_samples", eval_samples},
            {"checkpoint_every", checkpoint_every}};
  j["tasks"] = json::array();
  for (const auto& t : tasks) {
    json e = t.params;
    e["task"] = t.task, e["weight"] = t.weight, e["min_tokens"] = t.min_tokens;
    if (t.max_tokens > 0) e["max_tokens"] = t.max_tokens;     // recipes without it read as before
    if (t.repeat_keys > 0) e["repeat_keys"] = t.repeat_keys;  // likewise
    j["tasks"].push_back(e);
  }
  j["stages"] = json::array();
  for (const auto& s : stages) {
    j["stages"].push_back({{"steps", s.steps},
                           {"batch", s.batch},
                           {"min_tokens", s.min_tokens},
                           {"max_tokens", s.max_tokens}});
  }
  j["evals"] = json::array();
  for (const auto& e : evals) {
    json o = e.params;
    o["task"] = e.task, o["target_tokens"] = e.target_tokens,
    o["max_new_tokens"] = e.max_new_tokens;
    j["evals"].push_back(o);
  }
  return j;
}

namespace {

void check_trainable(const ModelConfig& c);

// The recipe's model, parsed and checked as the trainer takes it: a bad value names its key
// (train.model...) as a config error, before anything runs.
void check_samples_fit(const TrainRecipe& r, const ModelConfig& mc, const std::string& path);

ModelConfig trainable_config(const json& model, const std::string& path) {
  ModelConfig mc;
  try {
    mc = parse_model_config(model, path);
    check_trainable(mc);
  } catch (const ConfigError&) {
    throw;
  } catch (const Error& e) {
    std::string what = e.what();
    if (what.rfind("train: ", 0) == 0) what = what.substr(7);  // the path says where
    throw ConfigError(path, what);
  }
  if (mc.vocab_size < 264)
    throw ConfigError(join_path(path, "vocab_size"),
                      "the tiny tokenizer needs at least 264 ids (8 specials + 256 bytes), got " +
                          std::to_string(mc.vocab_size));
  // Its examples end with the tiny tokenizer's EOS (2) after BOS (1): ids that name others
  // would save a checkpoint whose generations never stop where training taught them to.
  auto check_id = [&](const char* key, int64_t want) {
    if (!model.contains(key) || model[key].is_null()) return;
    const json& v = model[key];
    const bool ok =
        (v.is_number_integer() && v.get<int64_t>() == want) ||
        (v.is_array() && v.size() == 1 && v[0].is_number_integer() && v[0].get<int64_t>() == want);
    if (!ok)
      throw ConfigError(
          join_path(path, key),
          "must be " + std::to_string(want) + " (the tiny tokenizer's) or absent, got " + v.dump());
  };
  check_id("bos_token_id", 1);
  check_id("eos_token_id", 2);
  return mc;
}

}  // namespace

TrainRecipe parse_train_recipe(const json& config, const std::string& path) {
  if (!config.is_object()) throw ConfigError(path, "must be a JSON object");
  // A run config given to train: say what it is (run_spec says the converse).
  if (config.contains("suites") && !config.contains("stages"))
    throw ConfigError(path,
                      "this is a run config (it has suites, no stages): run it with kvbench run "
                      "--config FILE");
  json scalars = json::object();
  std::vector<std::string> known = {"description", "model", "tasks", "stages", "evals"};
  for (const auto& s : recipe_specs()) known.push_back(s.name);
  check_known_keys(config, known, path);
  for (const auto& [key, value] : config.items()) {
    if (key != "description" && key != "model" && key != "tasks" && key != "stages" &&
        key != "evals")
      scalars[key] = value;
  }
  const json p = resolve_params(scalars, recipe_specs(), path, {});
  TrainRecipe r;
  r.description = config.value("description", "");
  if (!config.contains("model") || !config["model"].is_object())
    throw ConfigError(join_path(path, "model"), "must be a config.json object");
  r.model = config["model"];
  const ModelConfig mc = trainable_config(r.model, join_path(path, "model"));
  r.init = p["init"];
  r.seed = p["seed"], r.threads = p["threads"], r.lr = p["lr"], r.min_lr = p["min_lr"];
  r.warmup_steps = p["warmup_steps"], r.weight_decay = p["weight_decay"];
  r.beta1 = p["beta1"], r.beta2 = p["beta2"], r.adam_eps = p["adam_eps"];
  r.grad_clip = p["grad_clip"], r.answer_weight = p["answer_weight"];
  r.eval_every = p["eval_every"], r.eval_samples = p["eval_samples"];
  r.checkpoint_every = p["checkpoint_every"];
  if (r.min_lr > r.lr)
    throw ConfigError(join_path(path, "min_lr"), "must be <= lr: the cosine decays from lr to it");

  const auto tasks = entries(config, "tasks", path);
  for (size_t i = 0; i < tasks.size(); ++i) {
    const std::string tp = join_path(path, "tasks") + "[" + std::to_string(i) + "]";
    json extra = extra_params(tasks[i], task_specs());
    json own = tasks[i];
    for (const auto& [k, v] : extra.items()) own.erase(k);
    const json q = resolve_params(own, task_specs(), tp, {});
    check_task(q["task"], extra, tp);
    TrainTask t{q["task"], q["weight"], q["min_tokens"], extra};
    t.max_tokens = q["max_tokens"];
    t.repeat_keys = q["repeat_keys"];
    if (t.max_tokens > 0 && t.max_tokens < t.min_tokens)
      throw ConfigError(join_path(tp, "max_tokens"), "must be 0 or >= min_tokens");
    r.tasks.push_back(std::move(t));
  }
  double total_weight = 0;
  for (const auto& t : r.tasks) total_weight += t.weight;
  if (total_weight <= 0) throw ConfigError(join_path(path, "tasks"), "weights sum to zero");

  const auto stages = entries(config, "stages", path);
  for (size_t i = 0; i < stages.size(); ++i) {
    const std::string sp = join_path(path, "stages") + "[" + std::to_string(i) + "]";
    const json q = resolve_params(stages[i], stage_specs(), sp, {});
    TrainStage s{q["steps"], q["batch"], q["min_tokens"], q["max_tokens"]};
    if (s.max_tokens < s.min_tokens)
      throw ConfigError(join_path(sp, "max_tokens"), "must be >= min_tokens");
    // Every length a step may draw must admit some task of the mixture.
    for (int64_t len = s.min_tokens; len <= s.max_tokens; ++len) {
      bool here = false;
      for (const auto& t : r.tasks) here |= t.allowed_at(len);
      if (!here)
        throw ConfigError(join_path(sp, "min_tokens"),
                          "no task of the mixture is allowed at " + std::to_string(len) +
                              " tokens (tasks[].min_tokens / max_tokens)");
    }
    if (s.max_tokens > mc.max_position_embeddings)
      throw ConfigError(join_path(sp, "max_tokens"),
                        "exceeds model.max_position_embeddings (" +
                            std::to_string(mc.max_position_embeddings) +
                            "): the checkpoint could not be run at the lengths it was trained on");
    r.stages.push_back(s);
  }
  if (config.contains("evals")) {
    const auto evals = entries(config, "evals", path);
    for (size_t i = 0; i < evals.size(); ++i) {
      const std::string ep = join_path(path, "evals") + "[" + std::to_string(i) + "]";
      json extra = extra_params(evals[i], eval_specs());
      json own = evals[i];
      for (const auto& [k, v] : extra.items()) own.erase(k);
      const json q = resolve_params(own, eval_specs(), ep, {});
      check_task(q["task"], extra, ep);
      r.evals.push_back({q["task"], q["target_tokens"], q["max_new_tokens"], extra});
      // As the accuracy suite's workloads check a prompt: the last token is never fed back.
      if (r.evals.back().target_tokens + r.evals.back().max_new_tokens - 1 >
          mc.max_position_embeddings)
        throw ConfigError(join_path(ep, "target_tokens"),
                          "plus max_new_tokens - 1 exceeds model.max_position_embeddings (" +
                              std::to_string(mc.max_position_embeddings) + ")");
    }
  }
  check_samples_fit(r, mc, path);
  return r;
}

TrainRecipe load_train_recipe(const std::string& file) {
  if (std::filesystem::is_directory(file))
    throw ConfigError(file, "is a directory, not a training recipe (a JSON file)");
  std::ifstream in(file, std::ios::binary);
  if (!in) throw ConfigError(file, "cannot read the training recipe");
  std::ostringstream text;
  text << in.rdbuf();
  // As configs are read: line and column of a syntax error, a repeated key refused.
  return parse_train_recipe(parse_json_text(text.str(), file, /*comments=*/true), "train");
}

std::string answer_text(const std::vector<std::string>& answers) {
  std::string s;
  for (const auto& a : answers) s += (s.empty() ? " " : ", ") + a;
  return s;
}

std::string repeat_digit_key(size_t length, bool leading_zero_allowed, Rng& rng) {
  std::string key;
  for (size_t i = 0; i < length; ++i) {
    if (i > 0 && rng.below(2) == 0) {
      const size_t back = 1 + rng.below(std::min<uint64_t>(3, i));
      key += key[i - back];
    } else {
      const uint64_t lo = (i == 0 && !leading_zero_allowed) ? 1 : 0;
      key += static_cast<char>('0' + lo + rng.below(10 - lo));
    }
  }
  return key;
}

namespace {

bool all_digits(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

void replace_all(std::string& text, const std::string& from, const std::string& to) {
  for (size_t at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size()))
    text.replace(at, from.size(), to);
}

// Redraws each digit answer until the new one occurs nowhere in the prompt (a filler needle's
// value must not become a second copy of the answer), then substitutes it everywhere.
void redraw_digit_answers(TaskSample& sample, Rng& rng) {
  for (auto& answer : sample.answers) {
    if (!all_digits(answer)) continue;
    std::string key;
    do {
      key = repeat_digit_key(answer.size(), answer[0] == '0', rng);
    } while (key == answer || sample.prompt.find(key) != std::string::npos);
    replace_all(sample.prompt, answer, key);
    replace_all(sample.answer_prefix, answer, key);  // (it stays the prompt's suffix)
    answer = key;
  }
}

}  // namespace

TrainExample make_train_example(const std::string& task, const Tokenizer& tokenizer,
                                const json& params, Rng* repeat_rng) {
  TaskSample sample = make_task_sample(task, tokenizer, params, "train");
  if (repeat_rng) redraw_digit_answers(sample, *repeat_rng);
  const auto prompt = tokenizer.encode(sample.prompt, true);
  const auto answer = tokenizer.encode(answer_text(sample.answers), false);
  TrainExample ex;
  ex.task = task;
  ex.ids.assign(prompt.begin(), prompt.end());
  ex.answer_start = static_cast<int64_t>(ex.ids.size());
  ex.ids.insert(ex.ids.end(), answer.begin(), answer.end());
  KVB_CHECK(!tokenizer.eos_ids().empty(), "train: the tokenizer has no EOS token");
  ex.ids.push_back(tokenizer.eos_ids().front());
  return ex;
}

std::vector<TrainExample> make_train_batch(const TrainRecipe& recipe, const Tokenizer& tokenizer,
                                           int64_t step) {
  KVB_CHECK(step >= 0 && step < recipe.total_steps(), "train: step ", step, " outside [0, ",
            recipe.total_steps(), ")");
  const TrainStage* stage = nullptr;
  int64_t first = 0;
  for (const auto& s : recipe.stages) {
    if (step < first + s.steps) {
      stage = &s;
      break;
    }
    first += s.steps;
  }
  // A stream per step: (seed, step) -> batch, independent of every other step.
  Rng rng(recipe.seed * 0x9E3779B97F4A7C15ull +
          static_cast<uint64_t>(step) * 0xD1B54A32D192ED03ull + 0x5851F42D4C957F2Dull);
  const int64_t target = stage->min_tokens + static_cast<int64_t>(rng.below(static_cast<uint64_t>(
                                                 stage->max_tokens - stage->min_tokens + 1)));
  std::vector<const TrainTask*> eligible;
  double total = 0;
  for (const auto& t : recipe.tasks) {
    if (t.allowed_at(target)) eligible.push_back(&t), total += t.weight;
  }
  KVB_CHECK(!eligible.empty(), "train: no task allowed at ", target, " tokens");
  std::vector<TrainExample> batch;
  for (int64_t i = 0; i < stage->batch; ++i) {
    double u = rng.uniform() * total;
    const TrainTask* task = eligible.back();
    for (const TrainTask* t : eligible) {
      if (u < t->weight) {
        task = t;
        break;
      }
      u -= t->weight;
    }
    json params = task->params;
    params["target_tokens"] = target;
    params["seed"] = kTrainSeedBase + (rng.next() >> 32);
    bool has_depth = false;
    for (const auto& s : task_param_specs(task->task)) has_depth |= s.name == "depth";
    if (has_depth) params["depth"] = rng.uniform();
    // Only recipes that ask for it draw here, so older recipes keep their exact batches.
    if (task->repeat_keys > 0 && rng.uniform() < task->repeat_keys) {
      Rng key_rng(rng.next());
      batch.push_back(make_train_example(task->task, tokenizer, params, &key_rng));
    } else {
      batch.push_back(make_train_example(task->task, tokenizer, params));
    }
  }
  return batch;
}

double learning_rate(const TrainRecipe& r, int64_t step) {
  const int64_t total = r.total_steps();
  if (step < r.warmup_steps) return r.lr * static_cast<double>(step + 1) / (r.warmup_steps + 1);
  const double span = std::max<int64_t>(1, total - r.warmup_steps);
  const double progress = std::min(1.0, static_cast<double>(step - r.warmup_steps) / span);
  return r.min_lr + 0.5 * (r.lr - r.min_lr) * (1 + std::cos(M_PI * progress));
}

json evaluate_model(const Transformer& model, const Tokenizer& tokenizer,
                    const std::vector<TrainEval>& evals, int64_t samples) {
  c10::NoGradGuard no_grad;
  const ModelConfig& c = model.config();
  json out = json::array();
  for (const auto& e : evals) {
    bool has_depth = false;
    for (const auto& s : task_param_specs(e.task)) has_depth |= s.name == "depth";
    double sum = 0;
    for (int64_t i = 0; i < samples; ++i) {
      // As the accuracy suite: seed = run seed (0) + i, depths spread evenly.
      json params = e.params;
      params["target_tokens"] = e.target_tokens;
      params["seed"] = static_cast<uint64_t>(i);
      if (has_depth)
        params["depth"] = (static_cast<double>(i) + 0.5) / static_cast<double>(samples);
      const TaskSample sample = make_task_sample(e.task, tokenizer, params, "eval");
      const auto ids = tokenizer.encode(sample.prompt, true);
      auto cache = make_kv_cache(resolve_method({{"name", "full"}}, "eval"), c.num_layers,
                                 c.num_kv_heads, c.head_dim, at::kFloat);
      // The tokenizer's EOS, which every training example ends with (the checkpoint's
      // config.json gets it too; a recipe need not name it).
      const std::vector<int64_t> eos(tokenizer.eos_ids().begin(), tokenizer.eos_ids().end());
      GenerationConfig g;
      g.max_new_tokens = e.max_new_tokens;
      g.eos_token_ids = eos;
      const GenerationResult r =
          generate(model, *cache, {std::vector<int64_t>(ids.begin(), ids.end())}, g);
      std::vector<int32_t> gen;
      for (int64_t t : r.sequences.front().tokens) {
        if (std::find(eos.begin(), eos.end(), t) != eos.end()) break;
        gen.push_back(static_cast<int32_t>(t));
      }
      sum += score_task_sample(e.task, tokenizer.decode(gen, true), sample);
    }
    out.push_back({{"task", e.task},
                   {"target_tokens", e.target_tokens},
                   {"samples", samples},
                   {"score", sum / static_cast<double>(samples)}});
  }
  return out;
}

at::Tensor train_forward(const ModelConfig& c, const ModelWeights& w, const at::Tensor& ids) {
  const int64_t B = ids.size(0), T = ids.size(1);
  const at::Tensor angles = rope_angles(rope_inverse_frequencies(c), T);
  const at::Tensor cos = angles.cos().to(at::kFloat).view({1, T, 1, c.head_dim});
  const at::Tensor sin = angles.sin().to(at::kFloat).view({1, T, 1, c.head_dim});
  auto rope = [&](const at::Tensor& x) {  // x: [B, T, heads, hd]
    const int64_t half = c.head_dim / 2;
    at::Tensor rotated = at::cat({x.narrow(-1, half, half).neg(), x.narrow(-1, 0, half)}, -1);
    return x * cos + rotated * sin;
  };
  const at::Tensor mask =
      at::ones({T, T}, at::kBool).triu(1);  // true above the diagonal: future positions
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.head_dim));
  at::Tensor x = at::embedding(w.embed, ids);  // [B, T, D]
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const LayerWeights& L = w.layers[static_cast<size_t>(l)];
    at::Tensor h = rms_norm(x, L.input_norm, c.rms_norm_eps);
    at::Tensor q = at::matmul(h, L.q_proj.t()).view({B, T, c.num_heads, c.head_dim});
    at::Tensor k = at::matmul(h, L.k_proj.t()).view({B, T, c.num_kv_heads, c.head_dim});
    at::Tensor v = at::matmul(h, L.v_proj.t()).view({B, T, c.num_kv_heads, c.head_dim});
    q = rope(q).transpose(1, 2);  // [B, H, T, hd]
    k = rope(k).transpose(1, 2).repeat_interleave(c.group_size(), 1);
    v = v.transpose(1, 2).repeat_interleave(c.group_size(), 1);
    at::Tensor scores = at::matmul(q, k.transpose(-1, -2)).mul(scale).masked_fill(mask, -INFINITY);
    at::Tensor o = at::matmul(at::softmax(scores, -1), v);  // [B, H, T, hd]
    o = o.transpose(1, 2).reshape({B, T, c.num_heads * c.head_dim});
    x = x + at::matmul(o, L.o_proj.t());
    h = rms_norm(x, L.post_norm, c.rms_norm_eps);
    at::Tensor act = at::silu(at::matmul(h, L.gate_proj.t())) * at::matmul(h, L.up_proj.t());
    x = x + at::matmul(act, L.down_proj.t());
  }
  return at::matmul(rms_norm(x, w.norm, c.rms_norm_eps), w.lm_head.t());
}

namespace {

// One sample of each task a stage may draw, at the shortest length it may draw it, and of each
// eval at its length: a generator that cannot fit its prompt there (passkey needs about 245
// tiny-tokenizer tokens) fails the recipe now, naming the key, not a step mid-run that
// --resume would meet again (a step's batch is fixed by the seed and the step).
void check_samples_fit(const TrainRecipe& r, const ModelConfig& mc, const std::string& path) {
  const Tokenizer tok = Tokenizer::from_json(tiny_tokenizer_json(static_cast<int>(mc.vocab_size)),
                                             tiny_tokenizer_config(), nullptr, "tiny tokenizer");
  // One sample (seed and depth fixed; training draws others) at `length`: its example's ids.
  auto probe = [&](const std::string& task, json params, int64_t length, const char* purpose,
                   const std::string& key) {
    params["target_tokens"] = length;
    params["seed"] = kTrainSeedBase;
    for (const auto& s : task_param_specs(task))
      if (s.name == "depth") params["depth"] = 0.5;
    try {
      if (std::string(purpose) == "eval") {
        make_task_sample(task, tok, params, purpose);
        return int64_t{0};
      }
      return static_cast<int64_t>(make_train_example(task, tok, params).ids.size());
    } catch (const Error& e) {
      throw ConfigError(key, task + " cannot make a sample of " + std::to_string(length) +
                                 " tokens: " + e.what());
    }
  };
  for (size_t i = 0; i < r.stages.size(); ++i) {
    const TrainStage& s = r.stages[i];
    const std::string stage = join_path(path, "stages") + "[" + std::to_string(i) + "]";
    for (size_t j = 0; j < r.tasks.size(); ++j) {
      const TrainTask& t = r.tasks[j];
      int64_t shortest = s.min_tokens, longest = s.max_tokens;
      while (shortest <= s.max_tokens && !t.allowed_at(shortest)) ++shortest;
      if (shortest > s.max_tokens) continue;
      while (!t.allowed_at(longest)) --longest;
      // The bound that set the length is the key to change.
      const std::string task_key =
          join_path(path, "tasks") + "[" + std::to_string(j) + "].min_tokens";
      probe(t.task, t.params, shortest, "train",
            shortest > s.min_tokens ? task_key : join_path(stage, "min_tokens"));
      // With its answer and EOS, the longest example must fit the model's positions.
      const int64_t ids = probe(t.task, t.params, longest, "train", join_path(stage, "max_tokens"));
      if (ids > mc.max_position_embeddings)
        throw ConfigError(join_path(stage, "max_tokens"),
                          t.task + " at " + std::to_string(longest) +
                              " tokens makes an example of " + std::to_string(ids) +
                              " with its answer and EOS, past model.max_position_embeddings (" +
                              std::to_string(mc.max_position_embeddings) + ")");
    }
  }
  for (size_t i = 0; i < r.evals.size(); ++i)
    probe(r.evals[i].task, r.evals[i].params, r.evals[i].target_tokens, "eval",
          join_path(path, "evals") + "[" + std::to_string(i) + "].target_tokens");
}

void check_trainable(const ModelConfig& c) {
  KVB_CHECK(c.arch == Architecture::kLlama, "train: only LlamaForCausalLM is trained, got ",
            c.architecture);
  KVB_CHECK(!c.attention_bias && !c.mlp_bias && !c.o_proj_bias && !c.qk_norm,
            "train: biases and q/k-norm are not supported by the trainer");
  KVB_CHECK(!c.tie_word_embeddings, "train: tied embeddings are not supported (untie the head)");
  KVB_CHECK(c.torch_dtype == "float32",
            "train: model.torch_dtype must be float32 (checkpoints keep the exact training "
            "weights, so a resumed run continues bit-identically)");
}

ModelWeights weights_view(const ModelConfig& c,
                          const std::vector<std::pair<std::string, at::Tensor>>& params) {
  ModelWeights w;
  auto slots = bind_weights(c, w);
  KVB_CHECK(slots.size() == params.size(), "train: parameter count mismatch");
  for (size_t i = 0; i < slots.size(); ++i) *slots[i].second = params[i].second;
  return w;
}

}  // namespace

Trainer::Trainer(TrainRecipe recipe, std::string out_dir, bool resume)
    : recipe_(std::move(recipe)),
      out_dir_(std::move(out_dir)),
      config_(parse_model_config(recipe_.model, "train.model")),
      tokenizer_(Tokenizer::from_json(tiny_tokenizer_json(static_cast<int>(config_.vocab_size)),
                                      tiny_tokenizer_config(), nullptr, "tiny tokenizer")),
      inv_freq_(rope_inverse_frequencies(config_)) {
  check_trainable(config_);
  at::set_num_threads(static_cast<int>(recipe_.threads));
  namespace fs = std::filesystem;
  const fs::path state = fs::path(out_dir_) / "train_state.safetensors";
  if (resume) {
    KVB_CHECK(fs::exists(state), "train: --resume: no ", state.string(),
              " (nothing to resume; run without --resume)");
    SafetensorsFile st(state.string());
    const auto& meta = st.metadata();
    KVB_CHECK(meta.count("step") && meta.count("recipe"), "train: ", state.string(),
              " has no step/recipe metadata");
    KVB_CHECK(json::parse(meta.at("recipe")) == recipe_.to_json(),
              "train: --resume: ", state.string(), " was written by a different recipe");
    step_ = std::stoll(meta.at("step"));
    // The weights' step: in model.safetensors' metadata, or for checkpoints written before it
    // was (2026-12-07), in config.json's kvbench block.
    const fs::path weights = fs::path(out_dir_) / "model.safetensors";
    const SafetensorsFile weights_file(weights.string());
    const auto it = weights_file.metadata().find("kvbench_step");
    std::string weights_step = "(unknown)";
    if (it != weights_file.metadata().end()) {
      weights_step = it->second;
    } else {
      std::ifstream in(fs::path(out_dir_) / "config.json");
      const json cfg = json::parse(in, nullptr, /*allow_exceptions=*/false);
      if (cfg.is_object() && cfg.contains("kvbench") && cfg["kvbench"].is_object() &&
          cfg["kvbench"].contains("step") && cfg["kvbench"]["step"].is_number_integer())
        weights_step = std::to_string(cfg["kvbench"]["step"].get<int64_t>());
    }
    KVB_CHECK(weights_step == meta.at("step"), "train: --resume: ", weights.string(),
              " holds the weights of step ", weights_step, " but ", state.string(),
              " the optimiser state of step ", meta.at("step"),
              " (a checkpoint write cut short): they cannot continue one run; train again "
              "without --resume");
    SafetensorsCheckpoint ck(out_dir_);
    ModelWeights w;
    for (auto& [name, slot] : bind_weights(config_, w)) {
      at::Tensor p = ck.load(name, st.tensor("m." + name).sizes()).to(at::kFloat).clone();
      params_.emplace_back(name, p.set_requires_grad(true));
      adam_m_.push_back(st.tensor("m." + name).clone());
      adam_v_.push_back(st.tensor("v." + name).clone());
    }
  } else {
    auto gen = at::detail::createCPUGenerator(recipe_.seed);
    ModelWeights w;
    for (auto& [name, slot] : bind_weights(config_, w)) {
      const auto shape = Transformer::expected_tensors(config_);
      std::vector<int64_t> dims;
      for (const auto& [n, d] : shape)
        if (n == name) dims = d;
      at::Tensor p;
      if (dims.size() == 1) {
        p = at::ones(dims, at::kFloat);  // norm weights
      } else if (recipe_.init == "normal") {
        p = at::randn(dims, gen, at::kFloat).mul_(0.02);
      } else if (name == "model.embed_tokens.weight") {
        p = at::randn(dims, gen, at::kFloat);
      } else {
        const double bound = 1.0 / std::sqrt(static_cast<double>(dims[1]));
        p = at::rand(dims, gen, at::kFloat).mul_(2 * bound).sub_(bound);
      }
      params_.emplace_back(name, p.set_requires_grad(true));
      adam_m_.push_back(at::zeros_like(p));
      adam_v_.push_back(at::zeros_like(p));
    }
  }
}

at::Tensor Trainer::forward(const at::Tensor& ids) const {
  return train_forward(config_, weights_view(config_, params_), ids);
}

TrainProgress Trainer::train_step(int64_t step) {
  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<TrainExample> batch = make_train_batch(recipe_, tokenizer_, step);
  int64_t len = 0;
  for (const auto& ex : batch)
    len = std::max<int64_t>(len, static_cast<int64_t>(ex.ids.size()) - 1);
  const int64_t B = static_cast<int64_t>(batch.size());
  at::Tensor inputs = at::zeros({B, len}, at::kLong);
  at::Tensor targets = at::zeros({B, len}, at::kLong);
  at::Tensor weights = at::zeros({B, len}, at::kFloat);
  at::Tensor answer_mask = at::zeros({B, len}, at::kFloat);
  int64_t tokens = 0;
  for (int64_t b = 0; b < B; ++b) {
    const auto& ex = batch[static_cast<size_t>(b)];
    const int64_t n = static_cast<int64_t>(ex.ids.size()) - 1;
    auto in = inputs.accessor<int64_t, 2>();
    auto tg = targets.accessor<int64_t, 2>();
    auto wt = weights.accessor<float, 2>();
    auto am = answer_mask.accessor<float, 2>();
    for (int64_t t = 0; t < n; ++t) {
      in[b][t] = ex.ids[static_cast<size_t>(t)];
      tg[b][t] = ex.ids[static_cast<size_t>(t + 1)];
      const bool answer = t + 1 >= ex.answer_start;  // predicts an answer token or EOS
      wt[b][t] = answer ? static_cast<float>(recipe_.answer_weight) : 1.0f;
      am[b][t] = answer ? 1.0f : 0.0f;
    }
    tokens += n;
  }
  for (auto& [name, p] : params_) p.mutable_grad() = at::Tensor();
  const at::Tensor logits = forward(inputs);
  const at::Tensor nll =
      -at::log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1);  // [B, T]
  const at::Tensor loss = (nll * weights).sum() / weights.sum();
  loss.backward();

  TrainProgress pr;
  pr.step = step + 1, pr.total = recipe_.total_steps(), pr.tokens = tokens;
  {
    c10::NoGradGuard no_grad;
    pr.loss = loss.item<double>();
    pr.answer_loss = ((nll * answer_mask).sum() / answer_mask.sum()).item<double>();
    const at::Tensor per_example = (nll * answer_mask).sum(1).to(at::kDouble);
    const at::Tensor answer_tokens = answer_mask.sum(1).to(at::kLong);
    for (int64_t b = 0; b < B; ++b) {
      auto& [sum, count] = pr.task_answer[batch[static_cast<size_t>(b)].task];
      sum += per_example[b].item<double>(), count += answer_tokens[b].item<int64_t>();
    }
    double sq = 0;
    for (auto& [name, p] : params_) sq += sum_squares(p.grad());
    pr.grad_norm = std::sqrt(sq);
    // A diverged step stops here, before the update: the weights and moments stay finite (an
    // update would spread the NaN into every weight), and the message says so at this step
    // rather than at the next evaluation's decoding.
    KVB_CHECK(std::isfinite(pr.loss) && std::isfinite(pr.grad_norm), "train: step ", step + 1,
              ": the loss (", pr.loss, ") or the gradient norm (", pr.grad_norm,
              ") is not finite; training stops with the weights of step ", step,
              " not updated (--resume continues from the last checkpoint in ", out_dir_,
              ", if one was written; a lower lr or a grad_clip may keep it finite)");
    const double clip = recipe_.grad_clip > 0 && pr.grad_norm > recipe_.grad_clip
                            ? recipe_.grad_clip / (pr.grad_norm + 1e-6)
                            : 1.0;
    pr.lr = learning_rate(recipe_, step);
    const double t = static_cast<double>(step + 1);
    const double bc1 = 1 - std::pow(recipe_.beta1, t), bc2 = 1 - std::pow(recipe_.beta2, t);
    for (size_t i = 0; i < params_.size(); ++i) {
      at::Tensor& p = params_[i].second;
      at::Tensor g = p.grad() * clip;
      adam_m_[i].mul_(recipe_.beta1).add_(g, 1 - recipe_.beta1);
      adam_v_[i].mul_(recipe_.beta2).addcmul_(g, g, 1 - recipe_.beta2);
      // Decoupled weight decay on matrices (not norms), as torch.optim.AdamW applies it.
      if (p.dim() >= 2 && recipe_.weight_decay > 0) p.mul_(1 - pr.lr * recipe_.weight_decay);
      const at::Tensor denom = (adam_v_[i] / bc2).sqrt_().add_(recipe_.adam_eps);
      p.addcdiv_(adam_m_[i], denom, -pr.lr / bc1);
    }
  }
  step_ = step + 1;
  pr.step_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return pr;
}

Transformer Trainer::snapshot() const {
  ModelWeights w;
  auto slots = bind_weights(config_, w);
  for (size_t i = 0; i < slots.size(); ++i) *slots[i].second = params_[i].second.detach().clone();
  return Transformer(config_, std::move(w));
}

void Trainer::save_checkpoint() const {
  namespace fs = std::filesystem;
  fs::create_directories(out_dir_);
  json config = recipe_.model;
  // The tiny tokenizer written beside the weights has BOS 1 and EOS 2 (its specials 1 and 2):
  // a recipe that names none gets those, as the generation config always gave them.
  if (!config.contains("bos_token_id")) config["bos_token_id"] = 1;
  if (!config.contains("eos_token_id")) config["eos_token_id"] = 2;
  // transformers' AutoConfig needs model_type; the trainer makes Llamas only.
  if (!config.contains("model_type")) config["model_type"] = "llama";
  config["kvbench"] = {{"trained", true},
                       {"step", step_},
                       {"total_steps", recipe_.total_steps()},
                       {"seed", recipe_.seed}};
  // The step in the weights' file too: the files are written one by one, and a resume must not
  // pair one step's weights with another's optimiser state.
  write_checkpoint(snapshot(), config, out_dir_, {{"kvbench_step", std::to_string(step_)}});
  write_tiny_tokenizer(out_dir_, static_cast<int>(config_.vocab_size));
  std::vector<std::pair<std::string, at::Tensor>> state;
  for (size_t i = 0; i < params_.size(); ++i)
    state.emplace_back("m." + params_[i].first, adam_m_[i]);
  for (size_t i = 0; i < params_.size(); ++i)
    state.emplace_back("v." + params_[i].first, adam_v_[i]);
  write_safetensors((fs::path(out_dir_) / "train_state.safetensors").string(), state,
                    {{"step", std::to_string(step_)}, {"recipe", recipe_.to_json().dump()}});
}

void Trainer::run(const std::function<void(const TrainProgress&)>& on_step,
                  const std::function<void(const std::string&)>& on_event, int64_t until) {
  namespace fs = std::filesystem;
  fs::create_directories(out_dir_);
  const fs::path log_path = fs::path(out_dir_) / "train_log.jsonl";
  // Keep the log lines up to the resumed step, so a resumed run's log reads as one run (the
  // lines are json::dump()s, which parse and dump back to the same text).
  std::string kept;
  if (step_ > 0 && fs::exists(log_path)) {
    read_jsonl(
        log_path,
        [&](const json& row, int64_t) {
          if (row.value("step", int64_t{0}) <= step_) kept += row.dump() + "\n";
        },
        "train: --resume");
  }
  write_file_atomically(log_path, kept);
  std::ofstream log(log_path, std::ios::app);
  auto emit = [&](const json& j) {
    log << j.dump() << "\n";
    log.flush();
  };
  if (step_ == 0) emit({{"step", 0}, {"recipe", recipe_.to_json()}});
  const int64_t total = recipe_.total_steps();
  const int64_t stop = until > 0 ? std::min(until, total) : total;
  double loss_sum = 0, answer_sum = 0, time_sum = 0;
  int64_t n = 0;
  std::map<std::string, std::pair<double, int64_t>> task_answer;
  auto evaluate = [&] {
    const json e = evaluate_model(snapshot(), tokenizer_, recipe_.evals, recipe_.eval_samples);
    emit({{"step", step_}, {"eval", e}});
    if (on_event) {
      std::ostringstream s;
      s << "step " << step_ << " eval:";
      for (const auto& r : e)
        s << " " << r["task"].get<std::string>() << "@" << r["target_tokens"] << "="
          << r["score"].get<double>();
      on_event(s.str());
    }
  };
  while (step_ < stop) {
    const TrainProgress pr = train_step(step_);
    loss_sum += pr.loss, answer_sum += pr.answer_loss, time_sum += pr.step_s, ++n;
    for (const auto& [task, v] : pr.task_answer)
      task_answer[task].first += v.first, task_answer[task].second += v.second;
    if (on_step) on_step(pr);
    const bool last = step_ == stop;
    if (step_ % 10 == 0 || last) {
      json by_task = json::object();  // mean answer-token loss per task over these steps
      for (const auto& [task, v] : task_answer)
        by_task[task] = v.first / static_cast<double>(std::max<int64_t>(1, v.second));
      emit({{"step", step_},
            {"loss", loss_sum / n},
            {"answer_loss", answer_sum / n},
            {"answer_loss_by_task", by_task},
            {"lr", pr.lr},
            {"grad_norm", pr.grad_norm},
            {"tokens", pr.tokens},
            {"step_s", time_sum / n}});
      loss_sum = answer_sum = time_sum = 0, n = 0;
      task_answer.clear();
    }
    if (!recipe_.evals.empty() &&
        ((recipe_.eval_every > 0 && step_ % recipe_.eval_every == 0) || last))
      evaluate();
    if ((recipe_.checkpoint_every > 0 && step_ % recipe_.checkpoint_every == 0) || last) {
      save_checkpoint();
      if (on_event) on_event("step " + std::to_string(step_) + ": checkpoint " + out_dir_);
    }
  }
}

}  // namespace kvbench
