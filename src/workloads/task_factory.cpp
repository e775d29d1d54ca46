#include "kvbench/workloads/task_factory.h"

#include <functional>

#include "kvbench/core/error.h"
#include "kvbench/core/json_text.h"
#include "kvbench/core/text.h"
#include "kvbench/workloads/associative_recall.h"
#include "kvbench/workloads/passkey.h"
#include "kvbench/workloads/ruler.h"

namespace kvbench {
namespace {

using nlohmann::json;

ParamSpec target_spec() {
  return ParamSpec::integer("target_tokens", 4096,
                            "prompt length in the model's tokens (special tokens included): as "
                            "long as possible without exceeding this")
      .at_least(1);
}
ParamSpec seed_spec() {
  return ParamSpec::integer("seed", 0, "chooses every random key, value and position").at_least(0);
}
ParamSpec depth_spec(double def, const std::string& what) {
  return ParamSpec::number("depth", def, what).range(0, 1);
}

std::vector<ParamSpec> needle_specs(int64_t keys, int64_t values, int64_t queries) {
  return {
      target_spec(),
      depth_spec(0.5,
                 "depth of the first answer needle in the haystack; the other needles "
                 "are spread evenly over it"),
      seed_spec(),
      ParamSpec::integer("num_keys", keys, "keys with needles (the unasked are distractors)")
          .range(1, 1000),
      ParamSpec::integer("num_values", values, "needles (values) per key; all are asked")
          .range(1, 1000),
      ParamSpec::integer("num_queries", queries, "keys asked at once (<= num_keys)").range(1, 1000),
      ParamSpec::string("key_type", "words",
                        "needle keys: adjective-noun words, 7-digit "
                        "numbers or UUIDs",
                        {"words", "numbers", "uuids"}),
      ParamSpec::string("value_type", "numbers", "needle values: 7-digit numbers or UUIDs",
                        {"numbers", "uuids"}),
      ParamSpec::string("haystack", "repeat",
                        "filler lines: repeated noise sentences, or needles with other keys",
                        {"repeat", "needle"})};
}

// The needle tasks' check that spans two keys.
void check_needle(const json& p, const std::string& path) {
  const int64_t keys = p["num_keys"], queries = p["num_queries"];
  if (queries > keys) {
    throw ConfigError(
        join_path(path, "num_queries"),
        "expected at most num_keys (" + std::to_string(keys) + "), got " + std::to_string(queries));
  }
}

TaskSample make_needle(const std::string& task, const Tokenizer& tok, const json& p) {
  NeedleOptions o;
  o.task = task;
  o.target_tokens = p["target_tokens"].get<int64_t>();
  o.depth = p["depth"].get<double>();
  o.seed = p["seed"].get<uint64_t>();
  o.num_keys = p["num_keys"].get<int64_t>();
  o.num_values = p["num_values"].get<int64_t>();
  o.num_queries = p["num_queries"].get<int64_t>();
  const std::string key = p["key_type"], value = p["value_type"];
  o.key_type = key == "words"     ? NeedleKeyType::kWords
               : key == "numbers" ? NeedleKeyType::kNumbers
                                  : NeedleKeyType::kUuids;
  o.value_type = value == "numbers" ? NeedleValueType::kNumbers : NeedleValueType::kUuids;
  o.haystack = p["haystack"] == "repeat" ? HaystackType::kRepeat : HaystackType::kNeedle;
  return make_needle_task(tok, o);
}

struct TaskEntry {
  std::string name;
  std::vector<ParamSpec> specs;
  // Takes the resolved (checked) parameters.
  std::function<TaskSample(const Tokenizer&, const json&)> make;
  std::function<double(const std::string&, const TaskSample&)> score;
  // The checks that span two keys (ConfigError under the key path); none when empty.
  std::function<void(const json&, const std::string& path)> check = {};
};

double score_needle(const std::string& output, const TaskSample& s) {
  return needle_score(output, s.answers);
}

TaskEntry needle_entry(const std::string& name, int64_t keys, int64_t values, int64_t queries) {
  return {name, needle_specs(keys, values, queries),
          [name](const Tokenizer& tok, const json& p) { return make_needle(name, tok, p); },
          score_needle, check_needle};
}

const std::vector<TaskEntry>& tasks() {
  static const std::vector<TaskEntry> table = [] {
    std::vector<TaskEntry> t;
    t.push_back(
        {"passkey",
         {target_spec(), depth_spec(0.5, "depth of the pass key line in the filler"), seed_spec()},
         [](const Tokenizer& tok, const json& p) {
           PasskeyOptions o;
           o.target_tokens = p["target_tokens"].get<int64_t>();
           o.depth = p["depth"].get<double>();
           o.seed = p["seed"].get<uint64_t>();
           return make_passkey(tok, o);
         },
         [](const std::string& out, const TaskSample& s) {
           return passkey_score(out, s.answers.at(0));
         }});
    t.push_back(
        {"associative_recall",
         {target_spec(), depth_spec(0.5, "position of the asked pair in the key list"), seed_spec(),
          ParamSpec::number("recall_fraction", 0.5,
                            "share of the lines that recall earlier keys with their values")
              .range(0, 0.5)},
         [](const Tokenizer& tok, const json& p) {
           AssociativeRecallOptions o;
           o.target_tokens = p["target_tokens"].get<int64_t>();
           o.depth = p["depth"].get<double>();
           o.seed = p["seed"].get<uint64_t>();
           o.recall_fraction = p["recall_fraction"].get<double>();
           return make_associative_recall(tok, o);
         },
         [](const std::string& out, const TaskSample& s) {
           return passkey_score(out, s.answers.at(0));  // the first integer is the value
         }});
    t.push_back(needle_entry("niah_single", 1, 1, 1));
    t.push_back(needle_entry("niah_multikey", 4, 1, 1));
    t.push_back(needle_entry("niah_multivalue", 1, 4, 1));
    t.push_back(needle_entry("niah_multiquery", 4, 1, 4));
    t.push_back(
        {"variable_tracking",
         {target_spec(),
          depth_spec(0.0, "the asked chain's assignments spread evenly from this depth to the end"),
          seed_spec(),
          ParamSpec::integer("num_chains", 1, "chains; the first is asked, the others distract")
              .range(1, 100),
          ParamSpec::integer("num_hops", 4, "\"VAR Y = VAR X\" links per chain").range(1, 100)},
         [](const Tokenizer& tok, const json& p) {
           VariableTrackingOptions o;
           o.target_tokens = p["target_tokens"].get<int64_t>();
           o.depth = p["depth"].get<double>();
           o.seed = p["seed"].get<uint64_t>();
           o.num_chains = p["num_chains"].get<int64_t>();
           o.num_hops = p["num_hops"].get<int64_t>();
           return make_variable_tracking(tok, o);
         },
         [](const std::string& out, const TaskSample& s) {
           return variable_tracking_score(out, s.answers);
         }});
    t.push_back(
        {"common_words",
         {target_spec(), seed_spec(),
          ParamSpec::integer("num_common", 10, "words asked for").range(1, 100),
          ParamSpec::integer("common_freq", 30, "times each asked word appears").range(2, 1000),
          ParamSpec::integer("uncommon_freq", 3, "times every other word appears (< common_freq)")
              .range(1, 999),
          ParamSpec::integer("shots", 1, "worked examples before the list (RULER's one-shot)")
              .range(0, kMaxCommonWordsShots)},
         [](const Tokenizer& tok, const json& p) {
           CommonWordsOptions o;
           o.target_tokens = p["target_tokens"].get<int64_t>();
           o.seed = p["seed"].get<uint64_t>();
           o.num_common = p["num_common"].get<int64_t>();
           o.common_freq = p["common_freq"].get<int64_t>();
           o.uncommon_freq = p["uncommon_freq"].get<int64_t>();
           o.shots = p["shots"].get<int64_t>();
           return make_common_words(tok, o);
         },
         [](const std::string& out, const TaskSample& s) {
           return common_words_score(out, s.answers);
         },
         [](const json& p, const std::string& path) {
           const int64_t common = p["common_freq"], uncommon = p["uncommon_freq"];
           if (uncommon >= common) {
             throw ConfigError(join_path(path, "uncommon_freq"),
                               "expected less than common_freq (" + std::to_string(common) +
                                   "), got " + std::to_string(uncommon));
           }
         }});
    t.push_back({"kv_retrieval",
                 {target_spec(), depth_spec(0.5, "position of the asked pair among the pairs"),
                  seed_spec()},
                 [](const Tokenizer& tok, const json& p) {
                   KvRetrievalOptions o;
                   o.target_tokens = p["target_tokens"].get<int64_t>();
                   o.depth = p["depth"].get<double>();
                   o.seed = p["seed"].get<uint64_t>();
                   return make_kv_retrieval(tok, o);
                 },
                 [](const std::string& out, const TaskSample& s) {
                   return kv_retrieval_score(out, s.answers);
                 }});
    return t;
  }();
  return table;
}

const TaskEntry& find_task(const std::string& task, const std::string& path) {
  for (const auto& t : tasks()) {
    if (t.name == task) return t;
  }
  const std::vector<std::string>& names = task_names();
  std::string msg = "unknown task '" + key_text(task) + "'";
  const std::string hint = closest_match(task, names);
  if (!hint.empty()) msg += " (did you mean '" + hint + "'?)";
  throw ConfigError(join_path(path, "task"), msg + "; valid tasks: " + join(names, ", "));
}

}  // namespace

const std::vector<std::string>& task_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n;
    for (const auto& t : tasks()) n.push_back(t.name);
    return n;
  }();
  return names;
}

std::vector<ParamSpec> task_param_specs(const std::string& task, const std::string& path) {
  return find_task(task, path).specs;
}

TaskSample make_task_sample(const std::string& task, const Tokenizer& tokenizer, const json& params,
                            const std::string& path) {
  const TaskEntry& t = find_task(task, path);
  if (params.is_object() && params.contains("task") && params["task"] != task) {
    throw ConfigError(join_path(path, "task"),
                      "expected \"" + task + "\" (or no key), got " + brief_json(params["task"]));
  }
  return t.make(tokenizer, resolve_task_params(task, params, path, {"task", "name"}));
}

json resolve_task_params(const std::string& task, const json& params, const std::string& path,
                         const std::vector<std::string>& passthrough) {
  const TaskEntry& t = find_task(task, path);
  json p = resolve_params(params.is_null() ? json::object() : params, t.specs, path, passthrough);
  if (t.check) t.check(p, path);
  return p;
}

double score_task_sample(const std::string& task, const std::string& output,
                         const TaskSample& sample) {
  return find_task(task, "").score(output, sample);
}

}  // namespace kvbench
