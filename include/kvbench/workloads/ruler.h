// RULER-style synthetic long-context tasks (Hsieh et al. 2024, "RULER: What's the Real Context
// Size of Your Long-Context Language Models?") plus key-value retrieval (Liu et al. 2023, "Lost
// in the Middle"). Like make_passkey, every generator is seeded, measures the prompt in the
// model's own tokens (encode with special tokens), makes it as long as possible without
// exceeding target_tokens by a binary search on the amount of filler, and throws Error when
// even the prompt without filler does not fit. The formats are in docs/workloads.md.
//
// Each task has a scorer in [0, 1] wired to the RULER / LongBench reference scorers in
// scorers.h: string_match_all for needles, variable tracking and common words (the fraction of
// the references found in the lower-cased output), string_match_part for key-value retrieval.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kvbench/model/tokenizer.h"
#include "kvbench/workloads/task_sample.h"

namespace kvbench {

// --- Needle in a haystack: "One of the special magic numbers for {key} is: {value}." ---

enum class NeedleKeyType { kWords, kNumbers, kUuids };  // "adjective-noun", 7 digits, UUID
enum class NeedleValueType { kNumbers, kUuids };        // 7 digits, UUID-like
enum class HaystackType {
  kRepeat,  // "The grass is green. ..." lines, as RULER's niah_single_1
  kNeedle,  // every filler line is itself a needle with another key (RULER's niah_multikey_2)
};

// One generator covers RULER's four needle variants; the task presets differ only in counts:
// single (1 key, 1 value, 1 query), multi-key (4 keys, the 3 not asked are distractors),
// multi-value (4 values of the one key, all asked), multi-query (4 keys, all asked).
struct NeedleOptions {
  int64_t target_tokens = 4096;
  int64_t num_keys = 1;     // distinct keys with needles; the first num_queries are asked
  int64_t num_values = 1;   // needles (values) per key; every value of an asked key is an answer
  int64_t num_queries = 1;  // keys asked at once, <= num_keys
  double depth = 0.5;       // depth in [0, 1] of the first answer needle; the other needles sit
                            // at the evenly spaced depths 1/(M+1) ... M/(M+1), in seeded order
  NeedleKeyType key_type = NeedleKeyType::kWords;
  NeedleValueType value_type = NeedleValueType::kNumbers;
  HaystackType haystack = HaystackType::kRepeat;
  uint64_t seed = 0;
  std::string task = "niah";  // the id prefix
};

TaskSample make_needle_task(const Tokenizer& tokenizer, const NeedleOptions& options);
// string_match_all: the fraction of the answers (every value of every asked key) found.
double needle_score(const std::string& output, const std::vector<std::string>& answers);

// --- Variable tracking: "VAR ABCDE = 12345", "VAR FGHIJ = VAR ABCDE", ... ---

struct VariableTrackingOptions {
  int64_t target_tokens = 4096;
  int64_t num_chains = 1;  // chains with distinct values; the first one is asked
  int64_t num_hops = 4;    // "VAR Y = VAR X" links per chain (each chain names hops+1 variables)
  double depth = 0.0;      // the asked chain's assignments sit at depth + (1 - depth) * j /
                           // (hops + 1), j = 0..hops; the other chains at seeded random depths
  uint64_t seed = 0;
};

// Answers: the hops + 1 variable names of the asked chain.
TaskSample make_variable_tracking(const Tokenizer& tokenizer,
                                  const VariableTrackingOptions& options);
// string_match_all over the variable names.
double variable_tracking_score(const std::string& output, const std::vector<std::string>& answers);

// --- Common-words extraction: a numbered list, a few words much more frequent ---

struct CommonWordsOptions {
  int64_t target_tokens = 4096;
  int64_t num_common = 10;    // the words asked for
  int64_t common_freq = 30;   // times each common word appears
  int64_t uncommon_freq = 3;  // times each other word appears; the filler is their number
  uint64_t seed = 0;
  int64_t shots = 1;  // worked examples before the list (RULER's num_fewshot)
};
// The most worked examples a common_words sample takes.
constexpr int64_t kMaxCommonWordsShots = 3;

// Answers: the num_common common words. needle_depth is 0 (no needle).
TaskSample make_common_words(const Tokenizer& tokenizer, const CommonWordsOptions& options);
// string_match_all over the common words.
double common_words_score(const std::string& output, const std::vector<std::string>& answers);

// --- Key-value retrieval: a JSON object of UUID keys and values ---

struct KvRetrievalOptions {
  int64_t target_tokens = 4096;
  double depth = 0.5;  // position of the asked pair among the pairs, in [0, 1]
  uint64_t seed = 0;
};

// Answers: the asked key's value. The object between "JSON data:\n" and "\n\nKey:" parses as
// JSON.
TaskSample make_kv_retrieval(const Tokenizer& tokenizer, const KvRetrievalOptions& options);
// Lost in the Middle's rule (RULER's string_match_part): 1 when the value occurs in the output,
// case-insensitively.
double kv_retrieval_score(const std::string& output, const std::vector<std::string>& answers);

}  // namespace kvbench
