// RULER's variable tracking (scripts/data/synthetic/variable_tracking.py in NVIDIA/RULER):
// chains "VAR ABCDE = 12345", "VAR FGHIJ = VAR ABCDE", ... hidden in repeated noise, and the
// question for every variable that ends up holding the first chain's value. Unlike RULER, the
// asked chain's depth is controlled, every statement is its own line, chain values are
// distinct (so the answer set is exactly one chain), and no few-shot example is prepended.
#include <algorithm>
#include <tuple>
#include <unordered_set>

#include "kvbench/core/error.h"
#include "kvbench/workloads/ruler.h"
#include "kvbench/workloads/scorers.h"
#include "ruler_util.h"

namespace kvbench {
namespace {

using namespace workloads_detail;

struct Statement {
  std::string text;
  double depth = 0;
};

std::string random_variable(Rng& rng) {
  std::string name(5, 'A');
  for (char& c : name) c = static_cast<char>('A' + rng.below(26));
  return name;
}

}  // namespace

TaskSample make_variable_tracking(const Tokenizer& tokenizer, const VariableTrackingOptions& o) {
  const std::string task = "variable_tracking";
  KVB_CHECK(o.depth >= 0 && o.depth <= 1, task, ": depth must be in [0, 1], got ", o.depth);
  KVB_CHECK(o.num_chains >= 1 && o.num_hops >= 1, task,
            ": num_chains and num_hops must be >= 1, got ", o.num_chains, " and ", o.num_hops);

  Rng rng = substream(o.seed, 0);
  std::unordered_set<std::string> names, numbers;
  std::vector<std::vector<std::string>> chains;  // variable names, in assignment order
  std::vector<std::string> chain_values;
  std::vector<Statement> statements;  // chain-major, each chain in hop order
  for (int64_t c = 0; c < o.num_chains; ++c) {
    chain_values.push_back(draw_unique(numbers, [&] { return random_digits(rng, 5); }));
    chains.emplace_back();
    for (int64_t j = 0; j <= o.num_hops; ++j) {
      chains.back().push_back(draw_unique(names, [&] { return random_variable(rng); }));
    }
    // The asked chain spans [depth, 1) evenly; the others sit at sorted random depths.
    std::vector<double> depths;
    for (int64_t j = 0; j <= o.num_hops; ++j) {
      depths.push_back(c == 0 ? o.depth + (1 - o.depth) * static_cast<double>(j) /
                                              static_cast<double>(o.num_hops + 1)
                              : rng.uniform());
    }
    std::sort(depths.begin(), depths.end());
    const auto& vars = chains.back();
    statements.push_back({"VAR " + vars[0] + " = " + chain_values.back(), depths[0]});
    for (int64_t j = 1; j <= o.num_hops; ++j) {
      statements.push_back({"VAR " + vars[j] + " = VAR " + vars[j - 1], depths[j]});
    }
  }

  const std::string& value = chain_values[0];
  const std::string header =
      "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n";
  const std::string answer_prefix =
      " Answer: According to the chain(s) of variable assignment in the text above, " +
      std::to_string(o.num_hops + 1) + " variables are assigned the value " + value + ", they are:";
  const std::string question = "\nQuestion: Find all variables that are assigned the value " +
                               value + " in the text above." + answer_prefix;

  auto build = [&](int64_t n) {
    // Statements before noise sentence i are those with units_before == i, in chain-major order
    // (positions within a chain never decrease, so each chain keeps its order).
    std::vector<std::pair<int64_t, size_t>> slots;
    for (size_t j = 0; j < statements.size(); ++j) {
      slots.push_back({units_before(statements[j].depth, n), j});
    }
    std::stable_sort(slots.begin(), slots.end());
    FillerText context;
    size_t next = 0;
    for (int64_t i = 0; i <= n; ++i) {
      for (; next < slots.size() && slots[next].first == i; ++next) {
        context.line(statements[slots[next].second].text);
      }
      if (i < n) context.unit(noise_sentence(i), noise_ends_line(i));
    }
    return header + context.str() + question;
  };
  const int64_t n = fit_filler([&](int64_t m) { return count_tokens(tokenizer, build(m)); },
                               o.target_tokens, task);

  TaskSample s;
  s.prompt = build(n);
  s.answer_prefix = answer_prefix;
  s.prompt_tokens = count_tokens(tokenizer, s.prompt);
  s.answers = chains[0];
  s.needle_depth = depth_fraction(o.depth, n);
  s.id = sample_id(task, o.seed, o.target_tokens, o.depth);
  return s;
}

double variable_tracking_score(const std::string& output, const std::vector<std::string>& answers) {
  return string_match_all(output, answers);
}

}  // namespace kvbench
