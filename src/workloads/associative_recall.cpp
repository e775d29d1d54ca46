#include "kvbench/workloads/associative_recall.h"

#include <cmath>
#include <limits>
#include <unordered_set>
#include <vector>

#include "kvbench/core/error.h"
#include "ruler_util.h"

namespace kvbench {
namespace {

using namespace workloads_detail;

constexpr const char* kInstruction =
    "Each line below pairs a key with a number. Then some keys are recalled with their "
    "numbers. Recall the number of the last key.\n";
constexpr const char* kRecall = "Recall:\n";
// Keys and values are distinct within a prompt (26^3 keys, 9000 values), so a prompt holds at
// most this many lines; longer targets stop there (about 30k tokens of a BPE tokenizer).
constexpr int64_t kMaxLines = 8000;

struct Pair {
  std::string key, value;
};

// The lines of a prompt with `lines` list-or-recall lines: pairs first, then recall lines.
struct Layout {
  int64_t pairs = 0, recalls = 0, asked = 0;  // asked: index of the asked pair
};

Layout layout(int64_t lines, const AssociativeRecallOptions& o) {
  Layout l;
  l.pairs = std::max<int64_t>(
      1, lines - static_cast<int64_t>(std::floor(o.recall_fraction * static_cast<double>(lines))));
  l.recalls = std::min(lines - l.pairs, l.pairs - 1);  // never the asked key, never twice
  l.asked = std::llround(o.depth * static_cast<double>(l.pairs - 1));
  return l;
}

// Keys and values from their own streams, so the length search never changes the answer.
class Draws {
 public:
  explicit Draws(uint64_t seed) : rng_(substream(seed, 0)) {}
  const Pair& pair(int64_t i) {
    while (static_cast<int64_t>(pairs_.size()) <= i) {
      Pair p;
      p.key = draw_unique(used_, [&] {
        std::string k(3, 'a');
        for (char& c : k) c = static_cast<char>('a' + rng_.below(26));
        return k;
      });
      p.value = draw_unique(used_, [&] { return random_digits(rng_, 4); });
      pairs_.push_back(p);
    }
    return pairs_[static_cast<size_t>(i)];
  }

 private:
  Rng rng_;
  std::unordered_set<std::string> used_;
  std::vector<Pair> pairs_;
};

std::string build(Draws& draws, const Layout& l, uint64_t seed) {
  // The asked pair is pair 0 of the draws (its value does not depend on the length), placed
  // at index l.asked of the list; list index i > asked holds draw i, i < asked holds draw i+1.
  auto at = [&](int64_t i) -> const Pair& {
    return draws.pair(i == l.asked ? 0 : (i < l.asked ? i + 1 : i));
  };
  std::string p = kInstruction;
  for (int64_t i = 0; i < l.pairs; ++i) p += at(i).key + " " + at(i).value + "\n";
  p += kRecall;
  std::vector<int64_t> others;
  for (int64_t i = 0; i < l.pairs; ++i)
    if (i != l.asked) others.push_back(i);
  Rng order = substream(seed, 1);
  shuffle(others, order);
  for (int64_t j = 0; j < l.recalls; ++j) {
    const Pair& q = at(others[static_cast<size_t>(j)]);
    p += q.key + " " + q.value + "\n";
  }
  return p + at(l.asked).key;
}

}  // namespace

TaskSample make_associative_recall(const Tokenizer& tokenizer, const AssociativeRecallOptions& o) {
  KVB_CHECK(o.depth >= 0 && o.depth <= 1, "associative_recall: depth must be in [0, 1], got ",
            o.depth);
  KVB_CHECK(o.recall_fraction >= 0 && o.recall_fraction <= 0.5,
            "associative_recall: recall_fraction must be in [0, 0.5], got ", o.recall_fraction);
  Draws draws(o.seed);
  // n = 0 is the smallest prompt: one pair (the asked one) and the question.
  const int64_t n = fit_filler(
      [&](int64_t m) {
        return m + 1 > kMaxLines ? std::numeric_limits<int64_t>::max()
                                 : count_tokens(tokenizer, build(draws, layout(m + 1, o), o.seed));
      },
      o.target_tokens, "associative_recall");
  const Layout l = layout(n + 1, o);
  TaskSample s;
  s.prompt = build(draws, l, o.seed);
  s.answers = {draws.pair(0).value};
  s.prompt_tokens = count_tokens(tokenizer, s.prompt);
  s.needle_depth =
      l.pairs > 1 ? static_cast<double>(l.asked) / static_cast<double>(l.pairs - 1) : 0.0;
  s.id = sample_id("associative_recall", o.seed, o.target_tokens, o.depth);
  return s;
}

}  // namespace kvbench
