// Splitting added tokens ("<|begin_of_text|>", "<think>") out of raw text before the
// normalizer and pre-tokenizer run, so they can never be broken up or merged with neighbours.
#include "tokenizer_parts.h"

namespace kvbench::tok {
namespace {

// Start of the code point that ends at s[end - 1].
size_t prev_start(std::string_view s, size_t end) {
  size_t i = end - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  return i;
}

uint32_t last_code_point(std::string_view s) {
  size_t i = prev_start(s, s.size());
  return next_code_point(s, i);
}

}  // namespace

AddedTokenSplitter::AddedTokenSplitter(const std::vector<AddedToken>& tokens) : tokens_(tokens) {
  trie_.emplace_back();
  for (size_t t = 0; t < tokens_.size(); ++t) {
    const std::string& content = tokens_[t].content;
    if (content.empty()) continue;
    first_byte_[static_cast<unsigned char>(content[0])] = true;
    int node = 0;
    for (char ch : content) {
      const auto c = static_cast<unsigned char>(ch);
      auto it = trie_[node].next.find(c);
      if (it == trie_[node].next.end()) {
        trie_.emplace_back();
        const int child = static_cast<int>(trie_.size()) - 1;
        trie_[node].next.emplace(c, child);
        node = child;
      } else {
        node = it->second;
      }
    }
    trie_[node].token = static_cast<int>(t);
  }
}

std::pair<size_t, int> AddedTokenSplitter::longest_at(std::string_view text, size_t pos) const {
  std::pair<size_t, int> best{0, -1};
  int node = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    auto it = trie_[node].next.find(static_cast<unsigned char>(text[i]));
    if (it == trie_[node].next.end()) break;
    node = it->second;
    if (trie_[node].token >= 0) best = {i + 1 - pos, trie_[node].token};
  }
  return best;
}

std::vector<AddedTokenSplitter::Segment> AddedTokenSplitter::split(std::string_view text) const {
  std::vector<Segment> segments;
  size_t start_offset = 0;  // end of the previous segment
  size_t pos = 0;
  while (pos < text.size()) {
    if (!first_byte_[static_cast<unsigned char>(text[pos])]) {
      ++pos;
      continue;
    }
    const auto [len, index] = longest_at(text, pos);
    if (index < 0) {
      ++pos;
      continue;
    }
    const AddedToken& token = tokens_[index];
    size_t start = pos, stop = pos + len;
    if (token.single_word) {
      // Only a whole word: no word character (tokenizers' \w) directly before or after.
      const bool left_ok =
          start == 0 || !is_unicode_word_char(last_code_point(text.substr(0, start)));
      size_t after = stop;
      const bool right_ok =
          stop == text.size() || !is_unicode_word_char(next_code_point(text, after));
      if (!left_ok || !right_ok) {
        pos += len;  // the aho-corasick iterator has moved past this match already
        continue;
      }
    }
    if (token.lstrip) {
      // Swallow the whitespace before the token, but not text an earlier match already took.
      size_t s = start;
      while (s > start_offset) {
        size_t p = prev_start(text, s);
        size_t q = p;
        if (!is_unicode_whitespace(next_code_point(text, q))) break;
        s = p;
      }
      start = s;
    }
    if (token.rstrip) {
      while (stop < text.size()) {
        size_t q = stop;
        if (!is_unicode_whitespace(next_code_point(text, q))) break;
        stop = q;
      }
    }
    if (start_offset < start) segments.push_back({start_offset, start, -1});
    segments.push_back({start, stop, token.id});
    start_offset = stop;
    pos = stop;
  }
  if (start_offset < text.size()) segments.push_back({start_offset, text.size(), -1});
  return segments;
}

}  // namespace kvbench::tok
