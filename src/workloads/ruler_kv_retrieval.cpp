// Key-value retrieval as in "Lost in the Middle" (Liu et al. 2023): a JSON object of random
// UUID keys and values, one pair per line, and the question for the value of one key, whose
// position among the pairs is the depth. The filler is the number of other pairs.
#include <unordered_set>

#include "kvbench/core/error.h"
#include "kvbench/workloads/ruler.h"
#include "kvbench/workloads/scorers.h"
#include "ruler_util.h"

namespace kvbench {
namespace {

using namespace workloads_detail;

std::string pair_text(const std::string& key, const std::string& value) {
  return "\"" + key + "\": \"" + value + "\"";
}

}  // namespace

TaskSample make_kv_retrieval(const Tokenizer& tokenizer, const KvRetrievalOptions& o) {
  const std::string task = "kv_retrieval";
  KVB_CHECK(o.depth >= 0 && o.depth <= 1, task, ": depth must be in [0, 1], got ", o.depth);

  // Keys and values are all distinct, so no other pair shares the asked key or its value.
  std::unordered_set<std::string> used;
  Rng rng = substream(o.seed, 0);
  const std::string key = draw_unique(used, [&] { return random_uuid(rng); });
  const std::string value = draw_unique(used, [&] { return random_uuid(rng); });
  std::vector<std::string> others;
  Rng filler_rng = substream(o.seed, 1);
  auto other = [&](int64_t i) -> const std::string& {
    while (static_cast<int64_t>(others.size()) <= i) {
      const std::string k = draw_unique(used, [&] { return random_uuid(filler_rng); });
      others.push_back(pair_text(k, draw_unique(used, [&] { return random_uuid(filler_rng); })));
    }
    return others[i];
  };

  const std::string header =
      "Extract the value corresponding to the specified key in the JSON object below.\n\n"
      "JSON data:\n";
  const std::string question = "\n\nKey: \"" + key + "\"\nCorresponding value:";
  auto build = [&](int64_t n) {
    const int64_t before = units_before(o.depth, n);
    std::string object = "{";
    for (int64_t i = 0; i <= n; ++i) {
      if (i) object += ",\n ";
      // Pair i of the object: the asked one at `before`, the others around it in order.
      object += i == before ? pair_text(key, value) : other(i < before ? i : i - 1);
    }
    return header + object + "}" + question;
  };
  const int64_t n = fit_filler([&](int64_t m) { return count_tokens(tokenizer, build(m)); },
                               o.target_tokens, task);

  TaskSample s;
  s.prompt = build(n);
  s.prompt_tokens = count_tokens(tokenizer, s.prompt);
  s.answers = {value};
  s.needle_depth = depth_fraction(o.depth, n);
  s.id = sample_id(task, o.seed, o.target_tokens, o.depth);
  return s;
}

// Lost in the Middle's scorer (evaluate_kv_responses.py): the value, lower-cased, occurs in the
// lower-cased output; RULER's string_match_part is that rule. (Until session 62 LongBench's
// normalised substring match, which also credited a value with its hyphens dropped.)
double kv_retrieval_score(const std::string& output, const std::vector<std::string>& answers) {
  return string_match_part(output, answers);
}

}  // namespace kvbench
