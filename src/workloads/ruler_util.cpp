#include "ruler_util.h"

#include <cmath>
#include <cstdio>

#include "kvbench/core/error.h"
#include "kvbench/workloads/word_lists.h"

namespace kvbench::workloads_detail {

const std::string& noise_sentence(int64_t i) {
  static const std::string sentences[5] = {"The grass is green.", "The sky is blue.",
                                           "The sun is yellow.", "Here we go.",
                                           "There and back again."};
  return sentences[i % 5];
}

void FillerText::line(const std::string& text) {
  if (!text_.empty()) text_ += '\n';
  text_ += text;
  separator_ = "\n";
}

void FillerText::unit(const std::string& text, bool ends_line) {
  if (!text_.empty()) text_ += separator_;
  text_ += text;
  separator_ = ends_line ? "\n" : " ";
}

int64_t count_tokens(const Tokenizer& tokenizer, const std::string& text) {
  return static_cast<int64_t>(tokenizer.encode(text, /*add_special_tokens=*/true).size());
}

int64_t fit_filler(const std::function<int64_t(int64_t)>& length_with, int64_t target_tokens,
                   const std::string& task) {
  const int64_t bare = length_with(0);
  KVB_CHECK(bare <= target_tokens, task, ": ", target_tokens,
            " tokens cannot hold even the prompt without filler (", bare, " tokens)");
  // Invariant: length_with(lo) fits, length_with(hi) does not. Only fitting amounts become lo,
  // so the result fits even if tokenisation made the length not strictly monotone.
  int64_t lo = 0, hi = 1;
  while (length_with(hi) <= target_tokens) {
    lo = hi;
    hi *= 2;
    KVB_CHECK(hi < (int64_t{1} << 40), task, ": the prompt does not grow with its filler");
  }
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    (length_with(mid) <= target_tokens ? lo : hi) = mid;
  }
  return lo;
}

Rng substream(uint64_t seed, uint64_t stream) {
  // Rng's constructor runs the seed through splitmix64, so nearby seeds give unrelated streams.
  return Rng(seed ^ (stream * 0xD1B54A32D192ED03ull));
}

std::string random_digits(Rng& rng, int digits) {
  uint64_t low = 1;
  for (int i = 1; i < digits; ++i) low *= 10;
  return std::to_string(low + rng.below(9 * low));
}

std::string random_uuid(Rng& rng) {
  uint64_t hi = rng.next(), lo = rng.next();
  hi = (hi & ~0xF000ull) | 0x4000ull;                  // version 4
  lo = (lo & ~(0xC000ull << 48)) | (0x8000ull << 48);  // RFC 4122 variant
  char text[40];
  std::snprintf(text, sizeof(text), "%08llx-%04llx-%04llx-%04llx-%012llx",
                static_cast<unsigned long long>(hi >> 32),
                static_cast<unsigned long long>((hi >> 16) & 0xFFFF),
                static_cast<unsigned long long>(hi & 0xFFFF),
                static_cast<unsigned long long>(lo >> 48),
                static_cast<unsigned long long>(lo & 0xFFFFFFFFFFFFull));
  return text;
}

std::string random_word_pair(Rng& rng) {
  const auto& adjectives = adjective_words();
  const auto& nouns = noun_words();
  const std::string& adjective = adjectives[rng.below(adjectives.size())];
  return adjective + "-" + nouns[rng.below(nouns.size())];
}

std::string draw_unique(std::unordered_set<std::string>& used,
                        const std::function<std::string()>& draw) {
  for (int attempt = 0; attempt < 1000000; ++attempt) {
    std::string s = draw();
    if (used.insert(s).second) return s;
  }
  KVB_CHECK(false, "ran out of distinct random strings (", used.size(), " drawn)");
  return {};
}

int64_t units_before(double depth, int64_t n) {
  return std::llround(depth * static_cast<double>(n));
}

std::string sample_id(const std::string& task, uint64_t seed, int64_t target_tokens, double depth) {
  std::string id = task + "-" + std::to_string(seed) + "-" + std::to_string(target_tokens);
  if (depth >= 0) {
    char d[16];
    std::snprintf(d, sizeof(d), "-%.2f", depth);
    id += d;
  }
  return id;
}

double depth_fraction(double depth, int64_t n) {
  return n ? static_cast<double>(units_before(depth, n)) / static_cast<double>(n) : 0.0;
}

}  // namespace kvbench::workloads_detail
