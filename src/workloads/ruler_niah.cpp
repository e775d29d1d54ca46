// RULER's needle-in-a-haystack family (scripts/data/synthetic/niah.py in NVIDIA/RULER): the
// template, needle sentence and singular/plural wording follow it; the haystack is its
// "repeat" or "needle" kind (the Paul Graham essays are not shipped).
#include <algorithm>
#include <limits>
#include <numeric>
#include <unordered_set>

#include "kvbench/core/error.h"
#include "kvbench/workloads/ruler.h"
#include "kvbench/workloads/scorers.h"
#include "ruler_util.h"

namespace kvbench {
namespace {

using namespace workloads_detail;

struct Needle {
  std::string text;
  double depth = 0;
};

std::string random_key(NeedleKeyType type, Rng& rng) {
  switch (type) {
    case NeedleKeyType::kWords:
      return random_word_pair(rng);
    case NeedleKeyType::kNumbers:
      return random_digits(rng, 7);
    case NeedleKeyType::kUuids:
      return random_uuid(rng);
  }
  return {};
}

std::string random_value(NeedleValueType type, Rng& rng) {
  return type == NeedleValueType::kNumbers ? random_digits(rng, 7) : random_uuid(rng);
}

std::string needle_text(const std::string& kind, const std::string& key, const std::string& value) {
  return "One of the special magic " + kind + " for " + key + " is: " + value + ".";
}

// Filler lines of a needle haystack with word keys: below the 301 x 345 distinct pairs, with
// room for the sample's own keys and the redraws of keys overlapping an asked one.
constexpr int64_t kMaxWordKeyLines = 90000;

// "a", "a, and b", "a, b, and c" (RULER's join, Oxford comma even for two).
std::string join_queries(const std::vector<std::string>& keys) {
  if (keys.size() == 1) return keys[0];
  std::string s;
  for (size_t i = 0; i + 1 < keys.size(); ++i) s += keys[i] + ", ";
  return s + "and " + keys.back();
}

}  // namespace

TaskSample make_needle_task(const Tokenizer& tokenizer, const NeedleOptions& o) {
  const std::string& task = o.task;
  KVB_CHECK(o.depth >= 0 && o.depth <= 1, task, ": depth must be in [0, 1], got ", o.depth);
  KVB_CHECK(o.num_keys >= 1 && o.num_values >= 1, task,
            ": num_keys and num_values must be >= 1, got ", o.num_keys, " and ", o.num_values);
  KVB_CHECK(o.num_queries >= 1 && o.num_queries <= o.num_keys, task,
            ": num_queries must be in [1, num_keys = ", o.num_keys, "], got ", o.num_queries);

  const std::string kind = o.value_type == NeedleValueType::kNumbers ? "numbers" : "uuids";
  // Every key and value of the sample, filler needles included, is distinct, so a distractor
  // can never repeat an asked key or an answer.
  std::unordered_set<std::string> used;
  Rng rng = substream(o.seed, 0);
  std::vector<std::string> keys;
  std::vector<std::vector<std::string>> values;
  // Nor does any other key hold an asked one or sit inside it ("bold-carpet" beside an asked
  // "old-car": word keys only, the others are of one length), asked keys each other included:
  // such a key is drawn again. (Keys are drawn asked ones first.)
  auto overlaps_asked = [&](const std::string& key) {
    for (int64_t q = 0; q < std::min<int64_t>(o.num_queries, keys.size()); ++q)
      if (key.find(keys[q]) != std::string::npos || keys[q].find(key) != std::string::npos)
        return true;
    return false;
  };
  auto other_key = [&](Rng& from) {
    std::string key;
    do {
      key = draw_unique(used, [&] { return random_key(o.key_type, from); });
    } while (overlaps_asked(key));
    return key;
  };
  for (int64_t k = 0; k < o.num_keys; ++k) {
    keys.push_back(other_key(rng));
    values.emplace_back();
    for (int64_t v = 0; v < o.num_values; ++v) {
      values.back().push_back(draw_unique(used, [&] { return random_value(o.value_type, rng); }));
    }
  }

  // Needle 0 (the first value of the first asked key) sits at the requested depth; the others
  // at evenly spaced interior depths in a seeded order.
  std::vector<Needle> needles;
  for (int64_t k = 0; k < o.num_keys; ++k) {
    for (int64_t v = 0; v < o.num_values; ++v) {
      needles.push_back({needle_text(kind, keys[k], values[k][v]), 0.0});
    }
  }
  needles[0].depth = o.depth;
  std::vector<size_t> others(needles.size() - 1);
  std::iota(others.begin(), others.end(), 1);
  Rng order = substream(o.seed, 1);
  shuffle(others, order);
  for (size_t j = 0; j < others.size(); ++j) {
    needles[others[j]].depth = static_cast<double>(j + 1) / static_cast<double>(others.size() + 1);
  }

  // Filler units: noise sentences, or in the "needle" haystack whole lines, each a needle
  // with a fresh key and value drawn on demand from its own stream, so the search over the
  // amount only ever extends the list.
  std::vector<std::string> filler;
  Rng filler_rng = substream(o.seed, 2);
  auto filler_line = [&](int64_t i) -> const std::string& {
    if (o.haystack == HaystackType::kRepeat) return noise_sentence(i);
    while (static_cast<int64_t>(filler.size()) <= i) {
      const std::string key = other_key(filler_rng);
      const std::string value =
          draw_unique(used, [&] { return random_value(o.value_type, filler_rng); });
      filler.push_back(needle_text(kind, key, value));
    }
    return filler[i];
  };

  std::vector<std::string> asked(keys.begin(), keys.begin() + o.num_queries);
  const std::string query = join_queries(asked);
  const bool one = o.num_queries * o.num_values == 1;
  const std::string noun = one ? kind.substr(0, kind.size() - 1) : kind;
  const std::string header =
      (one ? "A special magic " + noun + " is" : "Some special magic " + noun + " are") +
      " hidden within the following text. Make sure to memorize it. I will quiz you about the " +
      noun + " afterwards.\n";
  const std::string answer_prefix = " The special magic " + noun + " for " + query +
                                    " mentioned in the provided text " + (one ? "is" : "are");
  const std::string question = "\nWhat " + std::string(one ? "is the" : "are all the") +
                               " special magic " + noun + " for " + query +
                               " mentioned in the provided text?" + answer_prefix;

  auto build = [&](int64_t n) {
    // Needles before filler line i are those with units_before == i; ties keep needle order.
    std::vector<std::pair<int64_t, size_t>> slots;
    for (size_t j = 0; j < needles.size(); ++j)
      slots.push_back({units_before(needles[j].depth, n), j});
    std::stable_sort(slots.begin(), slots.end());
    FillerText context;
    size_t next = 0;
    for (int64_t i = 0; i <= n; ++i) {
      for (; next < slots.size() && slots[next].first == i; ++next) {
        context.line(needles[slots[next].second].text);
      }
      if (i < n) {
        context.unit(filler_line(i), o.haystack == HaystackType::kNeedle || noise_ends_line(i));
      }
    }
    return header + context.str() + question;
  };
  // A needle haystack of word keys runs out of distinct "adjective-noun" keys (about 104k):
  // the search counts more lines than that as too long, and a target past them is refused by
  // name (not by the draw running dry somewhere in the doubling search).
  const int64_t cap = o.haystack == HaystackType::kNeedle && o.key_type == NeedleKeyType::kWords
                          ? kMaxWordKeyLines
                          : std::numeric_limits<int64_t>::max();
  const int64_t n = fit_filler(
      [&](int64_t m) {
        return m > cap ? std::numeric_limits<int64_t>::max() : count_tokens(tokenizer, build(m));
      },
      o.target_tokens, task);
  KVB_CHECK(n < cap, task, ": a needle haystack of word keys holds at most ", cap,
            " lines (distinct adjective-noun keys), fewer than target_tokens ", o.target_tokens,
            " needs; set key_type to numbers or uuids");

  TaskSample s;
  s.prompt = build(n);
  s.answer_prefix = answer_prefix;
  s.prompt_tokens = count_tokens(tokenizer, s.prompt);
  for (int64_t q = 0; q < o.num_queries; ++q) {
    s.answers.insert(s.answers.end(), values[q].begin(), values[q].end());
  }
  s.needle_depth = depth_fraction(o.depth, n);
  s.id = sample_id(task, o.seed, o.target_tokens, o.depth);
  return s;
}

double needle_score(const std::string& output, const std::vector<std::string>& answers) {
  return string_match_all(output, answers);
}

}  // namespace kvbench
