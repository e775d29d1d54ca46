// `kvbench train`: trains a Llama-architecture model on a mixture of the project's own
// synthetic long-context tasks (passkey, RULER needles, variable tracking, ...) with libtorch
// autograd, and writes it as a Hugging Face checkpoint the normal loader reads.
//
// The recipe is one JSON file (configs/train-*.json, docs/models.md): the model's config.json,
// the task mixture, context-length stages, AdamW with linear warm-up and cosine decay, global
// gradient-norm clipping, a loss on every token with extra weight on the answer, periodic
// held-out evaluation and checkpoints. Everything is a function of the seed and the step: the
// batch of step s is generated from (seed, s) alone, so a run resumed from a checkpoint
// continues bit-identically, and two runs with the same recipe give the same weights (at the
// same thread count).
//
// Seeds: training samples use task seeds >= 2^32 (kTrainSeedBase + a random 32-bit offset);
// evaluation, like the accuracy suite, uses seeds 0, 1, 2, ..., so the two never meet.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvbench/core/rng.h"

#include "kvbench/model/model_config.h"
#include "kvbench/model/tokenizer.h"
#include "kvbench/model/transformer.h"

namespace kvbench {

constexpr uint64_t kTrainSeedBase = uint64_t{1} << 32;

struct TrainTask {
  std::string task;        // a task_factory task
  double weight = 1;       // share of the mixture
  int64_t min_tokens = 0;  // left out of steps whose target length is shorter
  nlohmann::json params;   // extra task parameters (num_keys, num_hops, ...)
  int64_t max_tokens = 0;  // left out of steps whose target is longer (0: no limit)
  // Share of samples whose digit answers are redrawn with repeated digits (see
  // repeat_digit_key): copying "9690900" or "7040404" is where a small model's copy loops.
  double repeat_keys = 0;
  bool allowed_at(int64_t target) const {
    return weight > 0 && min_tokens <= target && (max_tokens == 0 || target <= max_tokens);
  }
};

struct TrainStage {
  int64_t steps = 0;
  int64_t batch = 16;
  int64_t min_tokens = 256, max_tokens = 256;  // each step draws its target in [min, max]
};

struct TrainEval {
  std::string task;
  int64_t target_tokens = 1024;
  int64_t max_new_tokens = 16;
  nlohmann::json params;
};

struct TrainRecipe {
  std::string description;
  nlohmann::json model;  // config.json of the model to train (vocab_size = the tiny tokenizer's)
  uint64_t seed = 0;     // weights and data
  int64_t threads = 2;
  std::string init = "torch";  // torch | normal
  double lr = 1e-3, min_lr = 1e-4;
  int64_t warmup_steps = 50;
  double weight_decay = 0.1, beta1 = 0.9, beta2 = 0.95, adam_eps = 1e-8;
  double grad_clip = 1.0;
  double answer_weight = 5.0;  // loss weight of the answer tokens (and EOS) vs. 1 for the prompt
  int64_t eval_every = 100, eval_samples = 20, checkpoint_every = 100;
  std::vector<TrainTask> tasks;
  std::vector<TrainStage> stages;
  std::vector<TrainEval> evals;

  int64_t total_steps() const;
  nlohmann::json to_json() const;
};

// Validates a recipe; errors are ConfigError naming the key (`path`.lr, tasks[1].task, ...).
TrainRecipe parse_train_recipe(const nlohmann::json& config, const std::string& path = "train");
TrainRecipe load_train_recipe(const std::string& file);

// One training sequence: BOS + prompt + " " + answer + EOS, and where the answer starts.
struct TrainExample {
  std::vector<int64_t> ids;
  int64_t answer_start = 0;  // index in ids of the answer's first token
  std::string task;          // the task that made it (per-task losses in the training log)
};
// The answer text a model should produce after a task's prompt: " " + answers joined by ", ".
std::string answer_text(const std::vector<std::string>& answers);
// With `repeat_rng`, every all-digit answer is first replaced, in the answers and everywhere in
// the prompt, by repeat_digit_key of the same length (a leading zero only where it had one).
TrainExample make_train_example(const std::string& task, const Tokenizer& tokenizer,
                                const nlohmann::json& params, Rng* repeat_rng = nullptr);
// A digit string whose every digit after the first repeats the digit 1, 2 or 3 places back with
// probability 1/2 (else uniform): runs and cycles such as 1111, 0404, 638638.
std::string repeat_digit_key(size_t length, bool leading_zero_allowed, Rng& rng);

// The batch of step `step` (0-based): a function of (recipe.seed, step) only.
std::vector<TrainExample> make_train_batch(const TrainRecipe& recipe, const Tokenizer& tokenizer,
                                           int64_t step);

// Learning rate at `step` (0-based): linear warm-up to lr, then cosine down to min_lr.
double learning_rate(const TrainRecipe& recipe, int64_t step);

// Accuracy of `model` on the recipe's held-out evaluations, exactly as the accuracy suite runs
// them with method full and run seed 0: seeds 0..samples-1, depths (i + 0.5) / samples,
// greedy decoding. One entry per eval: {"task", "target_tokens", "score"}.
nlohmann::json evaluate_model(const Transformer& model, const Tokenizer& tokenizer,
                              const std::vector<TrainEval>& evals, int64_t samples);

struct TrainProgress {
  int64_t step = 0, total = 0, tokens = 0;
  double loss = 0, answer_loss = 0, lr = 0, grad_norm = 0, step_s = 0;
  // Per task of this step's batch: (sum of answer-token losses, answer tokens), so the log can
  // show which task a model has learned when the mixture's mean hides it.
  std::map<std::string, std::pair<double, int64_t>> task_answer;
};

class Trainer {
 public:
  // Starts from random weights (seeded), or, with `resume`, from the checkpoint in `out_dir`
  // (model.safetensors + train_state.safetensors) written by an earlier run of the same recipe.
  Trainer(TrainRecipe recipe, std::string out_dir, bool resume);

  // Trains to the last step (or stops after step `until` when 0 < until < total: the same
  // schedule, cut short; --resume continues it), evaluating and checkpointing as the recipe
  // says; writes the final checkpoint. `on_step` is called after every step (progress display).
  void run(const std::function<void(const TrainProgress&)>& on_step = {},
           const std::function<void(const std::string&)>& on_event = {}, int64_t until = 0);

  // One optimiser step on batch `step`; returns its losses.
  TrainProgress train_step(int64_t step);
  // The current weights as an inference model (shares no storage with the trainer).
  Transformer snapshot() const;
  // Writes model + tokenizer + optimiser state into out_dir.
  void save_checkpoint() const;
  int64_t step() const { return step_; }
  const ModelConfig& config() const { return config_; }
  // The tiny byte-level tokenizer its batches and evaluations encode with.
  const Tokenizer& tokenizer() const { return tokenizer_; }
  const std::vector<std::pair<std::string, at::Tensor>>& parameters() const { return params_; }

 private:
  at::Tensor forward(const at::Tensor& ids) const;  // [B, T] -> logits [B, T, V]

  TrainRecipe recipe_;
  std::string out_dir_;
  ModelConfig config_;
  Tokenizer tokenizer_;
  std::vector<std::pair<std::string, at::Tensor>> params_;  // HF names, requires_grad
  std::vector<at::Tensor> adam_m_, adam_v_;
  int64_t step_ = 0;
  at::Tensor inv_freq_;
};

// The trainable forward on its own, for tests: logits [B, T, V] of `weights` (HF-named tensors
// of `config`) on token ids [B, T], all positions from 0.
at::Tensor train_forward(const ModelConfig& config, const ModelWeights& weights,
                         const at::Tensor& ids);

}  // namespace kvbench
