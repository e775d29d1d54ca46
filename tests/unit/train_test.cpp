// The trainer (src/train/trainer.cpp): its forward against the inference transformer, its
// AdamW step against the update written out in float64, a diverged step stopped before its
// update, bit-identical seeded runs and resume,
// the data recipe, recipe validation, and the shipped checkpoint solving held-out prompts.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "kvbench/core/error.h"
#include "kvbench/kv/full_cache.h"
#include "kvbench/kv/method_registry.h"
#include "kvbench/model/presets.h"
#include "kvbench/model/tiny_tokenizer.h"
#include "kvbench/model/tokenizer.h"
#include "kvbench/model/transformer.h"
#include "kvbench/train/trainer.h"
#include "kvbench/workloads/task_factory.h"

namespace kvbench {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

json tiny_model() {
  return {{"architectures", {"LlamaForCausalLM"}},
          {"model_type", "llama"},
          {"vocab_size", 264},
          {"hidden_size", 32},
          {"intermediate_size", 64},
          {"num_hidden_layers", 2},
          {"num_attention_heads", 4},
          {"num_key_value_heads", 2},
          {"max_position_embeddings", 1024},
          {"rms_norm_eps", 1e-6},
          {"rope_theta", 10000.0},
          {"tie_word_embeddings", false},
          {"bos_token_id", 1},
          {"eos_token_id", 2},
          {"torch_dtype", "float32"}};
}

json tiny_recipe() {
  return {{"model", tiny_model()},
          {"seed", 7},
          {"threads", 1},
          {"warmup_steps", 1},
          {"eval_every", 0},
          {"checkpoint_every", 0},
          {"tasks",
           {{{"task", "passkey"}, {"weight", 2}}, {{"task", "niah_single"}, {"min_tokens", 360}}}},
          {"stages",
           {{{"steps", 2}, {"batch", 2}, {"min_tokens", 260}, {"max_tokens", 300}},
            {{"steps", 2}, {"batch", 2}, {"min_tokens", 360}, {"max_tokens", 380}}}}};
}

Tokenizer tiny_tokenizer() {
  return Tokenizer::from_json(tiny_tokenizer_json(264), tiny_tokenizer_config());
}

fs::path temp_dir(const std::string& name) {
  const fs::path p =
      fs::temp_directory_path() / ("kvbench_train_test_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  return p;
}

// Recipe files are read as configs are: comments allowed, a syntax error at its line and
// column, a repeated key refused (the later value would silently win).
TEST(TrainRecipeFile, ReadsLikeAConfigFile) {
  const fs::path dir = temp_dir("recipe_file");
  fs::create_directories(dir);
  auto load_error = [&](const std::string& text) {
    const fs::path path = dir / "recipe.json";
    std::ofstream(path) << text;
    try {
      load_train_recipe(path.string());
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(load_error("{\n  \"steps\": 3,\n  \"steps\": 4\n}")
                .find("key \"steps\" appears twice in one object"),
            std::string::npos);
  EXPECT_NE(load_error("{\n  \"steps\": 3,,\n}").find("recipe.json:2:14: invalid JSON"),
            std::string::npos)
      << load_error("{\n  \"steps\": 3,,\n}");
  // Comments pass the parser (the recipe is then validated: not a JSON error).
  EXPECT_EQ(load_error("// a recipe\n{\"nonsense\": 1}").find("invalid JSON"), std::string::npos);
  fs::remove_all(dir);
}

TEST(Train, ForwardMatchesInferenceTransformer) {
  // The trainable forward (batched, padded, causal mask) and the inference path (packed, KV
  // cache) compute the same function: logits at every position agree.
  const ModelConfig c = parse_model_config(tiny_model(), "test");
  const Transformer model = Transformer::random(c, 3);
  const int64_t T = 40;
  at::Tensor ids = at::randint(3, 264, {2, T}, at::kLong);
  const at::Tensor train_logits = train_forward(c, model.weights(), ids);
  for (int64_t b = 0; b < 2; ++b) {
    FullKVCache cache(c.num_layers, c.num_kv_heads, c.head_dim, at::kFloat);
    const int64_t seq = cache.add_sequence();
    std::vector<int64_t> tokens(ids[b].data_ptr<int64_t>(), ids[b].data_ptr<int64_t>() + T);
    const at::Tensor ref = model.forward({{seq, tokens}}, cache, /*all_logits=*/true);
    EXPECT_TRUE(at::allclose(train_logits[b], ref, 1e-4, 1e-4))
        << (train_logits[b] - ref).abs().max().item<double>();
  }
}

TEST(Train, AdamWStepMatchesFloat64Formula) {
  // One step from zero moments: p1 = p0 (1 - lr wd) - lr m1/(1-b1) / (sqrt(v1/(1-b2)) + eps)
  // with m1 = (1-b1) g, v1 = (1-b2) g^2, g the gradient (unclipped here): the trainer's own, whose
  // loss TheLossIsTheWeightedNllOfTheBatch checks. One step from zero moments moves each weight
  // by about lr sign(g): this pins the update rule, the loss test the gradient's source.
  json r = tiny_recipe();
  r["grad_clip"] = 0.0;  // no clipping: the update is elementwise
  const TrainRecipe recipe = parse_train_recipe(r);
  Trainer trainer(recipe, temp_dir("adam").string(), false);
  std::vector<at::Tensor> before;
  for (const auto& [name, p] : trainer.parameters()) before.push_back(p.detach().clone());
  trainer.train_step(0);
  const double lr = learning_rate(recipe, 0);
  size_t i = 0;
  for (const auto& [name, p] : trainer.parameters()) {
    const at::Tensor g = p.grad().to(at::kDouble);
    const at::Tensor p0 = before[i++].to(at::kDouble);
    const double decay = p.dim() >= 2 ? 1 - lr * recipe.weight_decay : 1.0;
    const at::Tensor m = (1 - recipe.beta1) * g / (1 - recipe.beta1);
    const at::Tensor v = (1 - recipe.beta2) * g * g / (1 - recipe.beta2);
    const at::Tensor expected = p0 * decay - lr * m / (v.sqrt() + recipe.adam_eps);
    EXPECT_TRUE(at::allclose(p.detach().to(at::kDouble), expected, 1e-6, 1e-7)) << name;
  }
}

// The loss, by hand in float64: each example forwarded alone (no padding), targets shifted by
// one, answer tokens (and EOS) weighted answer_weight, the weighted mean over every token of
// the batch; the answer loss the plain mean over answer tokens. A loss scaled, weighted the
// wrong way, shifted by one or counting padding differs.
TEST(Train, TheLossIsTheWeightedNllOfTheBatch) {
  const TrainRecipe recipe = parse_train_recipe(tiny_recipe());
  Trainer trainer(recipe, temp_dir("loss").string(), false);
  const Tokenizer& tok = trainer.tokenizer();
  bool lengths_differ = false;
  for (int64_t step = 0; step < recipe.total_steps(); ++step) {
    const Transformer before = trainer.snapshot();
    const std::vector<TrainExample> batch = make_train_batch(recipe, tok, step);
    ASSERT_GE(batch.size(), 2u);
    double weighted = 0, weights = 0, answer = 0, answer_tokens = 0;
    for (const TrainExample& ex : batch) {
      lengths_differ = lengths_differ || ex.ids.size() != batch[0].ids.size();
      const int64_t n = static_cast<int64_t>(ex.ids.size()) - 1;
      const at::Tensor in =
          at::tensor(std::vector<int64_t>(ex.ids.begin(), ex.ids.end() - 1)).view({1, n});
      const at::Tensor logp = at::log_softmax(
          train_forward(before.config(), before.weights(), in)[0].to(at::kDouble), -1);
      for (int64_t t = 0; t < n; ++t) {
        const double nll = -logp[t][ex.ids[static_cast<size_t>(t + 1)]].item<double>();
        const bool is_answer = t + 1 >= ex.answer_start;
        const double w = is_answer ? recipe.answer_weight : 1.0;
        weighted += w * nll, weights += w;
        if (is_answer) answer += nll, answer_tokens += 1;
      }
    }
    const TrainProgress pr = trainer.train_step(step);
    EXPECT_NEAR(pr.loss, weighted / weights, 1e-5 * weighted / weights) << "step " << step;
    EXPECT_NEAR(pr.answer_loss, answer / answer_tokens, 1e-5 * answer / answer_tokens)
        << "step " << step;
  }
  EXPECT_TRUE(lengths_differ) << "no batch needed padding: the test would not see it";
  fs::remove_all(temp_dir("loss"));
}

TEST(Train, ANonFiniteLossStopsTheStepBeforeTheUpdate) {
  Trainer trainer(parse_train_recipe(tiny_recipe()), temp_dir("nan").string(), false);
  trainer.train_step(0);  // a finite step first: the moments are not zero
  std::vector<at::Tensor> before;
  for (const auto& [name, p] : trainer.parameters()) before.push_back(p.detach().clone());
  const auto& [poisoned, weight] = trainer.parameters().back();
  weight.detach()[0].fill_(std::numeric_limits<float>::quiet_NaN());
  try {
    trainer.train_step(1);
    FAIL() << "no error for a NaN weight";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("train: step 2: the loss (nan)"), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("weights of step 1 not updated"), std::string::npos)
        << e.what();
  }
  size_t i = 0;
  for (const auto& [name, p] : trainer.parameters()) {
    const at::Tensor now = p.detach();
    if (name == poisoned) now[0].copy_(before[i][0]);  // the poison itself
    EXPECT_TRUE(at::equal(now, before[i++])) << name << " changed";
  }
  EXPECT_EQ(trainer.step(), 1);
}

TEST(Train, SeededRunsAreBitIdenticalAndResumeContinuesExactly) {
  const TrainRecipe recipe = parse_train_recipe(tiny_recipe());
  const fs::path a = temp_dir("a"), b = temp_dir("b");
  Trainer ta(recipe, a.string(), false);
  ta.run();
  Trainer tb(recipe, b.string(), false);
  for (int64_t s = 0; s < 2; ++s) tb.train_step(s);
  tb.save_checkpoint();  // stop after 2 of 4 steps
  Trainer tc(recipe, b.string(), /*resume=*/true);
  EXPECT_EQ(tc.step(), 2);
  tc.run();
  ASSERT_EQ(ta.parameters().size(), tc.parameters().size());
  bool moved = false;
  for (size_t i = 0; i < ta.parameters().size(); ++i) {
    EXPECT_TRUE(at::equal(ta.parameters()[i].second, tc.parameters()[i].second))
        << ta.parameters()[i].first;
  }
  // The written checkpoint loads with the normal loader and holds the trained weights.
  const Transformer loaded = Transformer::load(a.string());
  const at::Tensor* q = nullptr;
  for (const auto& [name, p] : ta.parameters())
    if (name == "model.layers.0.self_attn.q_proj.weight") q = &p;
  ASSERT_NE(q, nullptr);
  EXPECT_TRUE(at::equal(loaded.weights().layers[0].q_proj, *q));
  Trainer fresh(recipe, temp_dir("fresh").string(), false);
  for (const auto& [name, p] : fresh.parameters())
    if (name == "model.layers.0.self_attn.q_proj.weight") moved = !at::equal(p, *q);
  EXPECT_TRUE(moved);
  EXPECT_TRUE(fs::exists(a / "tokenizer.json"));
  EXPECT_TRUE(fs::exists(a / "train_log.jsonl"));
  // A different seed gives different weights.
  json other = tiny_recipe();
  other["seed"] = 8;
  Trainer td(parse_train_recipe(other), temp_dir("d").string(), false);
  td.train_step(0);
  EXPECT_FALSE(at::equal(td.parameters()[1].second, tb.parameters()[1].second));
  fs::remove_all(a), fs::remove_all(b), fs::remove_all(temp_dir("d")),
      fs::remove_all(temp_dir("adam"));
}

// A resumed run keeps the log's lines up to the resumed step as they were written, so the log
// reads as one run; a log line that is not JSON fails the resume with its file and line.
TEST(Train, ResumeKeepsTheLogLinesUpToTheResumedStep) {
  const TrainRecipe recipe = parse_train_recipe(tiny_recipe());
  const fs::path dir = temp_dir("log"), log = dir / "train_log.jsonl";
  auto log_text = [&] {
    std::ostringstream s;
    s << std::ifstream(log).rdbuf();
    return s.str();
  };
  Trainer(recipe, dir.string(), false).run(nullptr, nullptr, /*until=*/2);
  const std::string before = log_text();
  ASSERT_NE(before.find("\"step\":2"), std::string::npos) << before;
  Trainer(recipe, dir.string(), /*resume=*/true).run();
  const std::string after = log_text();
  EXPECT_EQ(after.substr(0, before.size()), before);
  EXPECT_NE(after.find("\"step\":4", before.size()), std::string::npos) << after;

  std::ofstream(log, std::ios::app) << "\n{\"step\": \n";
  const int64_t bad_line = std::count(after.begin(), after.end(), '\n') + 2;
  try {
    Trainer(recipe, dir.string(), /*resume=*/true).run();
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(
        std::string(e.what()).find(log.string() + ":" + std::to_string(bad_line) + ": not JSON"),
        std::string::npos)
        << e.what();
  }
  fs::remove_all(dir);
}

TEST(Train, ResumeRejectsAnotherRecipe) {
  const fs::path dir = temp_dir("recipe");
  Trainer t(parse_train_recipe(tiny_recipe()), dir.string(), false);
  t.train_step(0);
  t.save_checkpoint();
  json other = tiny_recipe();
  other["lr"] = 0.5;
  EXPECT_THROW(Trainer(parse_train_recipe(other), dir.string(), true), Error);
  EXPECT_THROW(Trainer(parse_train_recipe(tiny_recipe()), temp_dir("absent").string(), true),
               Error);
  fs::remove_all(dir);
}

// The checkpoint's files are written one by one: weights of one step beside the optimiser state
// of another (a kill between the writes) cannot continue one run, and resume says so.
TEST(Train, ResumeRejectsWeightsOfAnotherStep) {
  const TrainRecipe recipe = parse_train_recipe(tiny_recipe());
  const fs::path dir = temp_dir("torn"), state = dir / "train_state.safetensors";
  const fs::path step2_state = temp_dir("torn_state");
  Trainer t(recipe, dir.string(), false);
  for (int64_t s = 0; s < 2; ++s) t.train_step(s);
  t.save_checkpoint();
  fs::create_directories(step2_state);
  fs::copy_file(state, step2_state / "state.safetensors");
  for (int64_t s = 2; s < 4; ++s) t.train_step(s);
  t.save_checkpoint();
  EXPECT_EQ(Trainer(recipe, dir.string(), true).step(), 4);
  fs::copy_file(state, step2_state / "state4.safetensors");
  // Step 4's weights beside step 2's optimiser state.
  fs::copy_file(step2_state / "state.safetensors", state, fs::copy_options::overwrite_existing);
  try {
    Trainer(recipe, dir.string(), true);
    FAIL() << "a torn checkpoint was resumed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("holds the weights of step 4"), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("optimiser state of step 2"), std::string::npos)
        << e.what();
  }
  // A checkpoint from before the weights held their step: config.json's step is read instead.
  std::ifstream config_in(dir / "config.json");
  const json config = json::parse(config_in);
  ASSERT_EQ(config["kvbench"]["step"], 4);
  write_checkpoint(t.snapshot(), config, dir.string());      // no kvbench_step metadata
  EXPECT_THROW(Trainer(recipe, dir.string(), true), Error);  // still step 2's state
  fs::copy_file(step2_state / "state4.safetensors", state, fs::copy_options::overwrite_existing);
  EXPECT_EQ(Trainer(recipe, dir.string(), true).step(), 4);
  fs::remove_all(dir), fs::remove_all(step2_state);
}

TEST(Train, BatchesComeFromTheTaskGeneratorsWithTrainingSeeds) {
  const TrainRecipe recipe = parse_train_recipe(tiny_recipe());
  const Tokenizer tok = tiny_tokenizer();
  const auto b0 = make_train_batch(recipe, tok, 0);
  const auto again = make_train_batch(recipe, tok, 0);
  ASSERT_EQ(b0.size(), 2u);
  for (size_t i = 0; i < b0.size(); ++i) EXPECT_EQ(b0[i].ids, again[i].ids);
  EXPECT_NE(b0[0].ids, make_train_batch(recipe, tok, 1)[0].ids);
  for (const auto& ex : b0) {
    // BOS + prompt (<= the stage's 300 tokens) + " " + 5-digit key + EOS.
    EXPECT_EQ(ex.ids.front(), 1);
    EXPECT_EQ(ex.ids.back(), 2);
    EXPECT_LE(ex.answer_start, 300);
    const std::vector<int32_t> answer(ex.ids.begin() + ex.answer_start, ex.ids.end() - 1);
    const std::string text = tok.decode(answer);
    EXPECT_EQ(text.size(), 6u) << text;
    EXPECT_EQ(text[0], ' ');
    // The prompt is the generator's passkey prompt for some seed >= 2^32, never an eval seed.
    const std::vector<int32_t> prompt(ex.ids.begin(), ex.ids.begin() + ex.answer_start);
    EXPECT_NE(tok.decode(prompt, true).find("The pass key is" + text + "."), std::string::npos);
  }
  EXPECT_EQ(answer_text({"a", "b"}), " a, b");
  // Stage two (>= 360 tokens) may draw niah_single; stage one never does.
  for (int64_t s = 0; s < 2; ++s) {
    for (const auto& ex : make_train_batch(recipe, tok, s)) {
      const std::vector<int32_t> prompt(ex.ids.begin(), ex.ids.begin() + ex.answer_start);
      EXPECT_EQ(tok.decode(prompt, true).find("magic number"), std::string::npos);
    }
  }
}

TEST(Train, TaskLengthLimitsChooseTheMixturePerStep) {
  // passkey only up to 300 tokens, niah_single from 360: stage one draws only passkey, stage
  // two only niah_single; a stage length that no task admits is an error naming the length.
  json r = tiny_recipe();
  r["tasks"][0]["max_tokens"] = 300;
  const TrainRecipe recipe = parse_train_recipe(r);
  const Tokenizer tok = tiny_tokenizer();
  for (int64_t s = 0; s < 4; ++s) {
    for (const auto& ex : make_train_batch(recipe, tok, s)) {
      EXPECT_EQ(ex.task, s < 2 ? "passkey" : "niah_single") << s;
      const std::vector<int32_t> prompt(ex.ids.begin(), ex.ids.begin() + ex.answer_start);
      EXPECT_EQ(tok.decode(prompt, true).find("magic number") != std::string::npos, s >= 2);
    }
  }
  EXPECT_EQ(recipe.to_json()["tasks"][0]["max_tokens"], 300);
  // Recipes without the key serialise as before (checkpoints' recipe check is unchanged).
  EXPECT_FALSE(parse_train_recipe(tiny_recipe()).to_json()["tasks"][0].contains("max_tokens"));
  r["stages"][0]["max_tokens"] = 320;  // 301-320: passkey is over, niah_single not yet
  try {
    parse_train_recipe(r);
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("301 tokens"), std::string::npos) << e.what();
  }
  r = tiny_recipe();
  r["tasks"][1]["max_tokens"] = 300;  // below its min_tokens 360
  EXPECT_THROW(parse_train_recipe(r), ConfigError);
}

TEST(Train, RepeatKeysRedrawDigitAnswersEverywhereInThePrompt) {
  // repeat_keys 1: every passkey answer is a redrawn key, written in both places the prompt
  // states it, and the original key is gone; repeat_keys 0 keeps the generator's own batches.
  json r = tiny_recipe();
  r["tasks"][0]["repeat_keys"] = 1.0;
  const TrainRecipe recipe = parse_train_recipe(r);
  const TrainRecipe plain = parse_train_recipe(tiny_recipe());
  const Tokenizer tok = tiny_tokenizer();
  EXPECT_EQ(recipe.to_json()["tasks"][0]["repeat_keys"], 1.0);
  EXPECT_FALSE(plain.to_json()["tasks"][0].contains("repeat_keys"));
  int redrawn = 0;
  for (int64_t s = 0; s < 2; ++s) {
    const auto a = make_train_batch(recipe, tok, s);
    const auto b = make_train_batch(plain, tok, s);
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      if (a[i].task != "passkey") continue;
      const std::string key =
          tok.decode({a[i].ids.begin() + a[i].answer_start + 1, a[i].ids.end() - 1});
      const std::string old =
          tok.decode({b[i].ids.begin() + b[i].answer_start + 1, b[i].ids.end() - 1});
      const std::string prompt =
          tok.decode({a[i].ids.begin(), a[i].ids.begin() + a[i].answer_start}, true);
      ASSERT_EQ(key.size(), 5u) << key;
      EXPECT_NE(key, old);
      EXPECT_NE(prompt.find("The pass key is " + key + ". Remember it. " + key + " is the"),
                std::string::npos)
          << prompt;
      EXPECT_EQ(prompt.find(old), std::string::npos);
      ++redrawn;
    }
  }
  EXPECT_GT(redrawn, 0);
  // The key generator: digits only, no leading zero unless allowed, and repeats far above the
  // 10% a uniform digit has of equalling its predecessor.
  Rng rng(3);
  int repeats = 0, pairs = 0;
  for (int i = 0; i < 2000; ++i) {
    const std::string k = repeat_digit_key(7, false, rng);
    ASSERT_EQ(k.size(), 7u);
    ASSERT_NE(k[0], '0');
    for (size_t j = 1; j < k.size(); ++j) {
      ASSERT_TRUE(k[j] >= '0' && k[j] <= '9');
      repeats += k[j] == k[j - 1], ++pairs;
    }
  }
  EXPECT_GT(repeats, pairs / 4);
  EXPECT_LT(repeats, pairs / 2);
  r["tasks"][0]["repeat_keys"] = 1.5;
  EXPECT_THROW(parse_train_recipe(r), ConfigError);
}

TEST(Train, LearningRateWarmsUpThenDecaysToMin) {
  json r = tiny_recipe();
  r["warmup_steps"] = 2;
  r["lr"] = 1e-3;
  r["min_lr"] = 1e-4;
  const TrainRecipe recipe = parse_train_recipe(r);
  EXPECT_NEAR(learning_rate(recipe, 0), 1e-3 / 3, 1e-12);
  EXPECT_NEAR(learning_rate(recipe, 1), 2e-3 / 3, 1e-12);
  EXPECT_NEAR(learning_rate(recipe, 2), 1e-3, 1e-12);
  EXPECT_NEAR(learning_rate(recipe, 3), 1e-4 + 0.45e-3 * (1 + std::cos(M_PI * 0.5)), 1e-12);
  EXPECT_GT(learning_rate(recipe, 2), learning_rate(recipe, 3));
}

// The ConfigError a recipe gives, "no error" when it parses.
std::string recipe_error(const json& recipe) {
  try {
    parse_train_recipe(recipe);
  } catch (const ConfigError& e) {
    return std::string(e.what());
  }
  return std::string("no error");
}

TEST(Train, RecipeErrorsNameTheKey) {
  json r = tiny_recipe();
  r["tasks"][0]["task"] = "pass_key";
  EXPECT_NE(recipe_error(r).find("train.tasks[0].task"), std::string::npos) << recipe_error(r);
  r = tiny_recipe();
  r["tasks"][0]["num_key"] = 3;
  EXPECT_NE(recipe_error(r).find("num_key"), std::string::npos) << recipe_error(r);
  r = tiny_recipe();
  r["tasks"][0]["seed"] = 3;
  EXPECT_NE(recipe_error(r).find("train.tasks[0].seed"), std::string::npos) << recipe_error(r);
  r = tiny_recipe();
  r["lr"] = -1;
  EXPECT_NE(recipe_error(r).find("train.lr"), std::string::npos) << recipe_error(r);
  r = tiny_recipe();
  r["stages"][0]["max_tokens"] = 100;
  EXPECT_NE(recipe_error(r).find("train.stages[0].max_tokens"), std::string::npos)
      << recipe_error(r);
  r = tiny_recipe();
  r["stages"][0]["min_tokens"] = 100;
  r["tasks"] = {{{"task", "niah_single"}, {"min_tokens", 360}}};
  EXPECT_NE(recipe_error(r).find("train.stages[0].min_tokens"), std::string::npos)
      << recipe_error(r);
  r = tiny_recipe();
  r["steps"] = 3;
  EXPECT_NE(recipe_error(r).find("steps"), std::string::npos) << recipe_error(r);
}

// What would fail mid-run, or save a checkpoint that behaves otherwise than it trained, fails
// the recipe first, naming the key.
TEST(Train, RecipesThatCouldNotTrainOrRunAreRefused) {
  // A passkey prompt needs about 245 tokens: a stage that can draw 200 fails before step 0.
  json r = tiny_recipe();
  r["stages"][0]["min_tokens"] = 200;
  EXPECT_NE(recipe_error(r).find("train.stages[0].min_tokens: passkey cannot make a sample of 200"),
            std::string::npos)
      << recipe_error(r);
  r = tiny_recipe();
  r["evals"] = {{{"task", "passkey"}, {"target_tokens", 150}, {"max_new_tokens", 8}}};
  EXPECT_NE(recipe_error(r).find("train.evals[0].target_tokens"), std::string::npos)
      << recipe_error(r);
  // Lengths past the model's positions.
  r = tiny_recipe();
  r["model"]["max_position_embeddings"] = 370;
  EXPECT_NE(recipe_error(r).find("train.stages[1].max_tokens"), std::string::npos)
      << recipe_error(r);
  r = tiny_recipe();
  r["model"]["max_position_embeddings"] = 380;  // the stage's longest prompt, not its answer
  EXPECT_NE(recipe_error(r).find(
                "train.stages[1].max_tokens: niah_single at 380 tokens makes an example"),
            std::string::npos)
      << recipe_error(r);
  r = tiny_recipe();
  r["evals"] = {{{"task", "passkey"}, {"target_tokens", 500}, {"max_new_tokens", 8}}};
  r["model"]["max_position_embeddings"] = 506;
  EXPECT_NE(recipe_error(r).find("train.evals[0].target_tokens"), std::string::npos)
      << recipe_error(r);
  // Token ids other than the tiny tokenizer's; a model the trainer does not take.
  r = tiny_recipe();
  r["model"]["eos_token_id"] = 3;
  EXPECT_NE(recipe_error(r).find("train.model.eos_token_id"), std::string::npos) << recipe_error(r);
  r = tiny_recipe();
  r["model"]["eos_token_id"] = json::array({2});
  EXPECT_EQ(recipe_error(r), "no error");
  r = tiny_recipe();
  r["model"]["torch_dtype"] = "bfloat16";
  EXPECT_NE(recipe_error(r).find("config: train.model: model.torch_dtype must be float32"),
            std::string::npos)
      << recipe_error(r);
  r = tiny_recipe();
  r["min_lr"] = 2e-3;
  EXPECT_NE(recipe_error(r).find("train.min_lr"), std::string::npos) << recipe_error(r);
}

}  // namespace
}  // namespace kvbench

namespace kvbench {
namespace {

const std::string kShipped =
    std::string(KVBENCH_SOURCE_DIR) + "/assets/models/kvbench-retrieval-1m";

TEST(ShippedModel, IsTheRecipesModelAndLoads) {
  // The checkpoint in the repository is the one configs/train-retrieval-1m.json describes.
  const TrainRecipe recipe =
      load_train_recipe(std::string(KVBENCH_SOURCE_DIR) + "/configs/train-retrieval-1m.json");
  const ModelConfig shipped = load_model_config(kShipped);
  const ModelConfig planned = parse_model_config(recipe.model, "recipe");
  EXPECT_EQ(shipped.to_json(), planned.to_json());
  const Transformer model = Transformer::load(kShipped);
  const Tokenizer tok = Tokenizer::load(kShipped);
  EXPECT_EQ(tok.vocab_size(), shipped.vocab_size);
  EXPECT_EQ(tok.encode("The pass key is 12345.").size(), 22u);  // one id per byte
}

TEST(ShippedModel, SolvesHeldOutPasskeyAndNeedleAt1024Tokens) {
  // Seeds 0..7 (as the accuracy suite with run seed 0 draws them) were never trained on: the
  // trainer's samples use seeds >= 2^32. 1,024 tokens is a trained length; over 100 held-out
  // samples per task the model scores 100% (passkey) and 98% (niah_single; docs/models.md);
  // these 8 prompts per task are answered 8/8 and 8/8, so each task must score at least 7/8
  // (one flip of margin for numerics): a model that lost retrieval (or a runtime that broke
  // it) scores ~0 here.
  const Transformer model = Transformer::load(kShipped);
  const Tokenizer tok = Tokenizer::load(kShipped);
  const json scores = evaluate_model(
      model, tok, {{"passkey", 1024, 8, json::object()}, {"niah_single", 1024, 12, json::object()}},
      /*samples=*/8);
  EXPECT_GE(scores[0]["score"].get<double>(), 0.87) << scores.dump();
  EXPECT_GE(scores[1]["score"].get<double>(), 0.87) << scores.dump();
}

}  // namespace
}  // namespace kvbench
