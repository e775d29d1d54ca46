// Pre-tokenizers: the file's Split regex (Llama-3, Qwen), ByteLevel (GPT-2 byte mapping and
// optionally its regex) and Metaspace (sentencepiece "▁"), chained by Sequence.
#include <algorithm>

#include "tokenizer_parts.h"

namespace kvbench::tok {
namespace {

// The pattern `tokenizers` uses for ByteLevel with use_regex: true (GPT-2's).
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

std::string map_bytes(const std::string& text) {
  const auto& symbols = byte_symbols();
  std::string out;
  out.reserve(text.size() * 2);
  for (char c : text) out += symbols[static_cast<unsigned char>(c)];
  return out;
}

std::string replace_spaces(const std::string& text, const std::string& replacement) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    if (c == ' ') {
      out += replacement;
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace

PreTokenizer::PreTokenizer(const json& config, const std::string& source) {
  if (!config.is_null()) add(config, source);
}

void PreTokenizer::add(const json& config, const std::string& source) {
  const std::string type = config.value("type", "");
  if (type == "Sequence") {
    const json& children = config.at("pretokenizers");
    if (!children.is_array())
      fail(source, "pre_tokenizer.pretokenizers (a Sequence's): expected an array, got " +
                       std::string(children.type_name()));
    for (const json& child : children) add(child, source);
  } else if (type == "Split") {
    Step step;
    step.kind = Kind::kSplit;
    const json& pattern = config.at("pattern");
    if (pattern.contains("Regex")) {
      step.regex = std::make_shared<Regex>(pattern.at("Regex").get<std::string>(), false, source);
    } else if (pattern.contains("String")) {
      step.regex = std::make_shared<Regex>(pattern.at("String").get<std::string>(), true, source);
    } else {
      fail(source, "unsupported pre_tokenizer: Split without String or Regex pattern");
    }
    if (config.value("invert", false)) fail(source, "unsupported pre_tokenizer: Split with invert");
    const std::string behavior = config.value("behavior", "Isolated");
    if (behavior == "Isolated") {
      step.behavior = Behavior::kIsolated;
    } else if (behavior == "Removed") {
      step.behavior = Behavior::kRemoved;
    } else if (behavior == "MergedWithPrevious") {
      step.behavior = Behavior::kMergedWithPrevious;
    } else if (behavior == "MergedWithNext") {
      step.behavior = Behavior::kMergedWithNext;
    } else {
      fail(source, "unsupported pre_tokenizer: Split behavior " + behavior);
    }
    steps_.push_back(std::move(step));
  } else if (type == "ByteLevel") {
    Step step;
    step.kind = Kind::kByteLevel;
    step.add_prefix_space = config.value("add_prefix_space", false);
    if (config.value("use_regex", true)) {
      step.regex = std::make_shared<Regex>(kGpt2Pattern, false, source);
    }
    byte_level_ = true;
    steps_.push_back(std::move(step));
  } else if (type == "Metaspace") {
    Step step;
    step.kind = Kind::kMetaspace;
    step.replacement = config.value("replacement", "\u2581");
    if (config.contains("prepend_scheme")) {
      step.prepend_scheme = config.at("prepend_scheme").get<std::string>();
    } else {
      // Files from tokenizers < 0.19 say add_prefix_space instead.
      step.prepend_scheme = config.value("add_prefix_space", true) ? "always" : "never";
    }
    if (step.prepend_scheme != "always" && step.prepend_scheme != "first" &&
        step.prepend_scheme != "never") {
      fail(source, "unsupported pre_tokenizer: Metaspace prepend_scheme " + step.prepend_scheme);
    }
    step.split = config.value("split", true);
    step.regex = std::make_shared<Regex>(step.replacement, true, source);
    step.behavior = Behavior::kMergedWithNext;
    steps_.push_back(std::move(step));
  } else {
    fail(source, "unsupported pre_tokenizer: " + (type.empty() ? config.dump() : type) +
                     " (supported: Split, ByteLevel, Metaspace, Sequence)");
  }
}

// Splits every piece at the regex matches; the behavior decides what becomes of the matched
// delimiters (the fold in NormalizedString::split of `tokenizers`). Empty pieces are dropped.
void PreTokenizer::split_pieces(const Regex& regex, Behavior behavior, std::vector<Piece>& pieces) {
  std::vector<Piece> result;
  result.reserve(pieces.size());
  std::vector<std::pair<size_t, size_t>> hits;
  struct Range {
    size_t begin, end;
    bool is_match;
  };
  std::vector<Range> ranges;
  for (Piece& piece : pieces) {
    const std::string& text = piece.text;
    hits.clear();
    regex.find_all(text, hits);
    ranges.clear();
    size_t pos = 0;
    for (const auto& [b, e] : hits) {
      if (pos < b) ranges.push_back({pos, b, false});
      ranges.push_back({b, e, true});
      pos = e;
    }
    if (pos < text.size()) ranges.push_back({pos, text.size(), false});

    std::vector<Range> merged;
    switch (behavior) {
      case Behavior::kIsolated:
        merged = ranges;
        break;
      case Behavior::kRemoved:
        for (const Range& r : ranges) {
          if (!r.is_match) merged.push_back(r);
        }
        break;
      case Behavior::kMergedWithPrevious: {
        bool previous_match = false;
        for (const Range& r : ranges) {
          if (r.is_match && !previous_match && !merged.empty()) {
            merged.back().end = r.end;
          } else {
            merged.push_back({r.begin, r.end, false});
          }
          previous_match = r.is_match;
        }
        break;
      }
      case Behavior::kMergedWithNext: {
        bool previous_match = false;
        for (auto it = ranges.rbegin(); it != ranges.rend(); ++it) {
          if (it->is_match && !previous_match && !merged.empty()) {
            merged.back().begin = it->begin;
          } else {
            merged.push_back({it->begin, it->end, false});
          }
          previous_match = it->is_match;
        }
        std::reverse(merged.begin(), merged.end());
        break;
      }
    }
    for (const Range& r : merged) {
      if (r.begin == r.end) continue;
      result.push_back({text.substr(r.begin, r.end - r.begin), piece.at_start && r.begin == 0});
    }
  }
  pieces = std::move(result);
}

void PreTokenizer::run(std::string text, bool at_start, std::vector<Piece>& out) const {
  std::vector<Piece> pieces;
  pieces.push_back({std::move(text), at_start});
  for (const Step& step : steps_) {
    switch (step.kind) {
      case Kind::kSplit:
        split_pieces(*step.regex, step.behavior, pieces);
        break;
      case Kind::kByteLevel:
        if (step.add_prefix_space) {
          for (Piece& p : pieces) {
            if (p.text.empty() || p.text[0] != ' ') p.text.insert(0, " ");
          }
        }
        if (step.regex) split_pieces(*step.regex, Behavior::kIsolated, pieces);
        for (Piece& p : pieces) p.text = map_bytes(p.text);
        break;
      case Kind::kMetaspace:
        for (Piece& p : pieces) {
          p.text = replace_spaces(p.text, step.replacement);
          const bool starts = p.text.compare(0, step.replacement.size(), step.replacement) == 0;
          if (!starts &&
              (step.prepend_scheme == "always" || (step.prepend_scheme == "first" && p.at_start))) {
            p.text.insert(0, step.replacement);
          }
        }
        if (step.split) split_pieces(*step.regex, Behavior::kMergedWithNext, pieces);
        break;
    }
  }
  for (Piece& p : pieces) {
    if (!p.text.empty()) out.push_back(std::move(p));
  }
}

}  // namespace kvbench::tok
