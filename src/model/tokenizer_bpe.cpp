// The BPE model: vocabulary, merges by rank, byte fallback and unknown-token handling, with a
// per-pre-token cache (natural text repeats a small set of words, so most lookups hit).
#include <queue>

#include "tokenizer_parts.h"

namespace kvbench::tok {
namespace {

uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

std::string byte_token(int b) {
  static const char* hex = "0123456789ABCDEF";
  return std::string("<0x") + hex[b >> 4] + hex[b & 15] + ">";
}

}  // namespace

BpeModel::BpeModel(const json& model, const std::string& source) {
  const std::string type = model.value("type", "BPE");
  if (type != "BPE") fail(source, "unsupported tokenizer model: " + type + " (supported: BPE)");
  const auto option_set = [&](const char* key) {
    return model.contains(key) && !model[key].is_null() &&
           !(model[key].is_string() && model[key].get<std::string>().empty());
  };
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (option_set(key)) fail(source, std::string("unsupported BPE option: ") + key);
  }
  if (model.contains("dropout") && model["dropout"].is_number() &&
      model["dropout"].get<double>() != 0.0) {
    fail(source, "unsupported BPE option: dropout");
  }
  ignore_merges_ = model.value("ignore_merges", false);
  byte_fallback_ = model.value("byte_fallback", false);
  fuse_unk_ = model.value("fuse_unk", false);

  const json& vocab = model.at("vocab");
  if (!vocab.is_object()) fail(source, "model.vocab: expected an object of token -> id");
  vocab_.reserve(vocab.size());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    // (An id of 4.7 would read as 4, "4" as nothing: both are a broken file.)
    if (!it.value().is_number_integer())
      fail(source,
           "model.vocab: the id of " + it.key() + " is " + it.value().dump() + ", not an integer");
    const int64_t id = it.value().get<int64_t>();
    // Real vocabularies number their tokens densely from 0; a few holes are allowed, but not an
    // id that would size the table by itself (1e9 would allocate 32 GiB of strings).
    const int64_t most = static_cast<int64_t>(vocab.size()) + (1 << 16);
    if (id < 0 || id >= most)
      fail(source, "model.vocab: id " + std::to_string(id) + " of " + it.key() +
                       " is outside [0, " + std::to_string(most) +
                       ") (the entries' count plus 65536)");
    vocab_.emplace(it.key(), static_cast<int32_t>(id));
    if (tokens_.size() <= static_cast<size_t>(id)) tokens_.resize(id + 1);
    tokens_[id] = it.key();
  }
  if (option_set("unk_token")) {
    const std::string unk = model.at("unk_token").get<std::string>();
    auto it = vocab_.find(unk);
    if (it == vocab_.end()) fail(source, "model.unk_token not in the vocabulary: " + unk);
    unk_id_ = it->second;
  }
  for (int b = 0; b < 256; ++b) {
    auto it = vocab_.find(byte_token(b));
    byte_ids_[b] = it == vocab_.end() ? -1 : it->second;
  }

  // Both layouts exist: ["a b", ...] (tokenizers < 0.20) and [["a", "b"], ...].
  const json& merges = model.at("merges");
  // (A null or an object would loop over nothing, or over values: a BPE with no merges.)
  if (!merges.is_array())
    fail(source, "model.merges: expected an array, got " + std::string(merges.type_name()));
  merges_.reserve(merges.size());
  int32_t rank = 0;
  for (const json& m : merges) {
    std::string left, right;
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
        fail(source, "model.merges[" + std::to_string(rank) + "]: expected \"left right\"");
      }
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else if (m.is_array() && m.size() == 2) {
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    } else {
      fail(source, "model.merges[" + std::to_string(rank) + "]: expected a string or a pair");
    }
    const auto a = vocab_.find(left), b = vocab_.find(right), c = vocab_.find(left + right);
    if (a == vocab_.end() || b == vocab_.end() || c == vocab_.end()) {
      fail(source, "model.merges[" + std::to_string(rank) +
                       "]: token not in the vocabulary: " + left + " " + right);
    }
    merges_[pair_key(a->second, b->second)] = {rank, c->second};
    ++rank;
  }
}

std::optional<int32_t> BpeModel::token_to_id(const std::string& token) const {
  auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

void BpeModel::encode(const std::string& piece, std::vector<int32_t>& out) const {
  if (piece.empty()) return;
  if (ignore_merges_) {
    // Llama-3: a pre-token that is itself a vocabulary entry maps to it directly, even when the
    // merges would reach a different segmentation.
    auto it = vocab_.find(piece);
    if (it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  const bool cacheable = piece.size() <= kMaxCachedPieceBytes;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    auto it = cache_.find(piece);
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t first = out.size();
  merge_word(piece, out);
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    // Bounded: a long run over unusual text must not grow memory without limit.
    if (cache_.size() >= kMaxCacheEntries) cache_.clear();
    cache_.emplace(piece, std::vector<int32_t>(out.begin() + first, out.end()));
  }
}

void BpeModel::merge_word(const std::string& piece, std::vector<int32_t>& out) const {
  struct Symbol {
    int32_t id;
    int prev, next;
    bool alive;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(piece.size());
  const auto push = [&](int32_t id) {
    const int n = static_cast<int>(symbols.size());
    symbols.push_back({id, n - 1, n + 1, true});
  };
  bool last_unk = false;
  std::string ch;
  for (size_t i = 0; i < piece.size();) {
    const size_t begin = i;
    next_code_point(piece, i);
    ch.assign(piece, begin, i - begin);
    auto it = vocab_.find(ch);
    if (it != vocab_.end()) {
      push(it->second);
      last_unk = false;
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (char c : ch) all &= byte_ids_[static_cast<unsigned char>(c)] >= 0;
      if (all) {
        for (char c : ch) push(byte_ids_[static_cast<unsigned char>(c)]);
        last_unk = false;
        continue;
      }
    }
    if (unk_id_) {
      if (!(fuse_unk_ && last_unk)) push(*unk_id_);
      last_unk = true;
    }
    // No unk token: `tokenizers` drops the character; so do we.
  }
  if (symbols.empty()) return;
  symbols.back().next = -1;

  struct Candidate {
    int32_t rank;
    int pos;
    int32_t new_id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
  const auto consider = [&](int left) {
    if (left < 0) return;
    const int right = symbols[left].next;
    if (right < 0) return;
    auto it = merges_.find(pair_key(symbols[left].id, symbols[right].id));
    if (it != merges_.end()) queue.push({it->second.rank, left, it->second.new_id});
  };
  for (int i = 0; i + 1 < static_cast<int>(symbols.size()); ++i) consider(i);
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.pos];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    // Stale entry: one side was merged since this pair was queued.
    auto it = merges_.find(pair_key(left.id, right.id));
    if (it == merges_.end() || it->second.new_id != top.new_id) continue;
    left.id = top.new_id;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    if (left.prev >= 0) consider(left.prev);
    consider(top.pos);
  }
  for (int i = 0; i >= 0; i = symbols[i].next) out.push_back(symbols[i].id);
}

}  // namespace kvbench::tok
