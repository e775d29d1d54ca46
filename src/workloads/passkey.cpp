#include "kvbench/workloads/passkey.h"

#include <cctype>
#include <cmath>
#include <cstdio>

#include "kvbench/core/error.h"
#include "kvbench/core/rng.h"

namespace kvbench {
namespace {

constexpr const char* kInstruction =
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize "
    "it. I will quiz you about the important information there.\n";
// The filler repeats these five sentences; its amount is counted in sentences, so the prompt
// ends within one short sentence of the token target.
constexpr const char* kFiller[5] = {"The grass is green. ", "The sky is blue. ",
                                    "The sun is yellow. ", "Here we go. ",
                                    "There and back again. "};
constexpr const char* kQuestion = "\nWhat is the pass key?";
constexpr const char* kAnswerPrefix = " The pass key is";

std::string build(int64_t before, int64_t after, const std::string& key) {
  std::string p = kInstruction;
  int64_t i = 0;
  for (; i < before; ++i) p += kFiller[i % 5];
  p += "The pass key is " + key + ". Remember it. " + key + " is the pass key. ";
  for (; i < before + after; ++i) p += kFiller[i % 5];
  return p + kQuestion + kAnswerPrefix;
}

int64_t count(const Tokenizer& tokenizer, const std::string& text) {
  return static_cast<int64_t>(tokenizer.encode(text, /*add_special_tokens=*/true).size());
}

}  // namespace

TaskSample make_passkey(const Tokenizer& tokenizer, const PasskeyOptions& o) {
  KVB_CHECK(o.depth >= 0 && o.depth <= 1, "passkey: depth must be in [0, 1], got ", o.depth);
  Rng rng(o.seed);
  const std::string key = std::to_string(10000 + rng.below(90000));
  auto length_with = [&](int64_t fillers) {
    const int64_t before = std::llround(o.depth * static_cast<double>(fillers));
    return count(tokenizer, build(before, fillers - before, key));
  };
  KVB_CHECK(length_with(0) <= o.target_tokens, "passkey: ", o.target_tokens,
            " tokens cannot hold even the instruction, needle and question (", length_with(0),
            " tokens)");
  // The length grows monotonically with the filler count: binary search the largest fit.
  int64_t lo = 0, hi = 1;
  while (length_with(hi) <= o.target_tokens) lo = hi, hi *= 2;
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    (length_with(mid) <= o.target_tokens ? lo : hi) = mid;
  }
  const int64_t before = std::llround(o.depth * static_cast<double>(lo));
  TaskSample s;
  s.prompt = build(before, lo - before, key);
  s.answer_prefix = kAnswerPrefix;
  s.answers = {key};
  s.prompt_tokens = count(tokenizer, s.prompt);
  s.needle_depth = lo ? static_cast<double>(before) / static_cast<double>(lo) : 0.0;
  char id[96];
  std::snprintf(id, sizeof(id), "passkey-%llu-%lld-%.2f", static_cast<unsigned long long>(o.seed),
                static_cast<long long>(o.target_tokens), o.depth);
  s.id = id;
  return s;
}

double passkey_score(const std::string& output, const std::string& key) {
  size_t i = 0;
  while (i < output.size() && !std::isdigit(static_cast<unsigned char>(output[i]))) ++i;
  size_t j = i;
  while (j < output.size() && std::isdigit(static_cast<unsigned char>(output[j]))) ++j;
  return i < output.size() && output.substr(i, j - i) == key ? 1.0 : 0.0;
}

}  // namespace kvbench
