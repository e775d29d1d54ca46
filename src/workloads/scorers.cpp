#include "kvbench/workloads/scorers.h"

#include <algorithm>
#include <cctype>
#include <map>
#include <sstream>

namespace kvbench {
namespace {

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::vector<std::string> split_whitespace(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

std::vector<std::string> integers_in(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (std::isdigit(static_cast<unsigned char>(c))) {
      cur += c;
    } else if (!cur.empty()) {
      out.push_back(cur);
      cur.clear();
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

template <typename Fn>
double best(const std::vector<std::string>& references, Fn&& score) {
  double b = 0;
  for (const auto& r : references) b = std::max(b, score(r));
  return b;
}

// Longest common subsequence of two sequences (words or characters).
template <typename Seq>
size_t lcs_length(const Seq& a, const Seq& b) {
  std::vector<size_t> row(b.size() + 1, 0);
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = 0;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = a[i - 1] == b[j - 1] ? diagonal + 1 : std::max(row[j], row[j - 1]);
      diagonal = up;
    }
  }
  return row[b.size()];
}

double share_equal(const std::vector<std::string>& numbers, const std::string& want) {
  if (numbers.empty()) return 0;
  const auto right = std::count(numbers.begin(), numbers.end(), want);
  return static_cast<double>(right) / static_cast<double>(numbers.size());
}

}  // namespace

std::string normalize_answer(const std::string& text) {
  std::string no_punct;
  for (char c : lower(text)) {
    if (!std::ispunct(static_cast<unsigned char>(c))) no_punct += c;
  }
  std::string out;
  for (const auto& w : split_whitespace(no_punct)) {
    if (w == "a" || w == "an" || w == "the") continue;
    out += (out.empty() ? "" : " ") + w;
  }
  return out;
}

std::vector<std::string> normalized_tokens(const std::string& text) {
  return split_whitespace(normalize_answer(text));
}

double exact_match(const std::string& prediction, const std::vector<std::string>& references) {
  const std::string p = normalize_answer(prediction);
  return best(references,
              [&](const std::string& r) { return p == normalize_answer(r) ? 1.0 : 0.0; });
}

double substring_match(const std::string& prediction, const std::vector<std::string>& references) {
  const std::string p = normalize_answer(prediction);
  return best(references, [&](const std::string& r) {
    return p.find(normalize_answer(r)) != std::string::npos ? 1.0 : 0.0;
  });
}

double string_match_all(const std::string& prediction, const std::vector<std::string>& references) {
  if (references.empty()) return 0;
  const std::string p = lower(prediction);
  double found = 0;
  for (const auto& r : references) found += p.find(lower(r)) != std::string::npos ? 1.0 : 0.0;
  return found / static_cast<double>(references.size());
}

double string_match_part(const std::string& prediction,
                         const std::vector<std::string>& references) {
  const std::string p = lower(prediction);
  return best(references, [&](const std::string& r) {
    return p.find(lower(r)) != std::string::npos ? 1.0 : 0.0;
  });
}

double token_f1(const std::string& prediction, const std::vector<std::string>& references) {
  const auto p = normalized_tokens(prediction);
  return best(references, [&](const std::string& ref) {
    const auto r = normalized_tokens(ref);
    std::map<std::string, int> counts;
    for (const auto& w : r) ++counts[w];
    int same = 0;
    for (const auto& w : p) {
      if (counts[w] > 0) --counts[w], ++same;
    }
    if (same == 0) return 0.0;
    const double precision = double(same) / double(p.size()),
                 recall = double(same) / double(r.size());
    return 2 * precision * recall / (precision + recall);
  });
}

double rouge_l(const std::string& prediction, const std::vector<std::string>& references) {
  const auto p = split_whitespace(lower(prediction));
  return best(references, [&](const std::string& ref) {
    const auto r = split_whitespace(lower(ref));
    const size_t lcs = lcs_length(p, r);
    if (lcs == 0) return 0.0;
    const double precision = double(lcs) / double(p.size()),
                 recall = double(lcs) / double(r.size());
    const double beta2 = (precision / recall) * (precision / recall);
    return (1 + beta2) * recall * precision / (recall + beta2 * precision);
  });
}

double levenshtein_ratio(const std::string& a, const std::string& b) {
  if (a.empty() && b.empty()) return 1.0;
  // Indel distance (substitution = delete + insert) = |a| + |b| - 2 LCS.
  const double total = static_cast<double>(a.size() + b.size());
  return 1.0 - (total - 2.0 * static_cast<double>(lcs_length(a, b))) / total;
}

double edit_similarity(const std::string& prediction, const std::vector<std::string>& references) {
  // LongBench keeps the first line that is not a code fence or a comment.
  std::string line;
  std::istringstream lines(prediction);
  for (std::string l; std::getline(lines, l);) {
    const auto first = l.find_first_not_of(" \t");
    const std::string t = first == std::string::npos ? "" : l.substr(first);
    if (t.rfind("`", 0) == 0 || t.rfind("#", 0) == 0 || t.rfind("//", 0) == 0) continue;
    line = l;
    break;
  }
  return best(references, [&](const std::string& r) { return levenshtein_ratio(line, r); });
}

double classification_score(const std::string& prediction, const std::string& reference,
                            const std::vector<std::string>& all_classes) {
  std::vector<std::string> named;
  for (const auto& c : all_classes) {
    if (prediction.find(c) == std::string::npos) continue;
    // A class that is only part of the reference's name (e.g. "location" in "location city")
    // does not count as a separate answer.
    if (reference.find(c) != std::string::npos && c != reference) continue;
    named.push_back(c);
  }
  if (std::find(named.begin(), named.end(), reference) == named.end()) return 0;
  return 1.0 / static_cast<double>(named.size());
}

double count_score(const std::string& prediction, const std::string& reference) {
  return share_equal(integers_in(prediction), reference);
}

double retrieval_score(const std::string& prediction, const std::string& reference) {
  const auto ids = integers_in(reference);  // "Paragraph 12" -> "12"
  if (ids.empty()) return 0;
  return share_equal(integers_in(prediction), ids.front());
}

}  // namespace kvbench
