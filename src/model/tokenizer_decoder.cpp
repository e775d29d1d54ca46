// Decoders: ids -> token strings -> text, following the `tokenizers` decode chain.
#include "kvbench/core/text.h"
#include "tokenizer_parts.h"

namespace kvbench::tok {
namespace {

// "<0x0A>" (or "<0x0a>") -> 10; -1 for anything else.
int parse_byte_token(const std::string& t) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
  int value = 0;
  for (int k = 3; k < 5; ++k) {
    const char c = t[k];
    // Either case, as u8::from_str_radix reads it.
    const int d = c >= '0' && c <= '9'   ? c - '0'
                  : c >= 'A' && c <= 'F' ? c - 'A' + 10
                  : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                         : -1;
    if (d < 0) return -1;
    value = value * 16 + d;
  }
  return value;
}

// Invalid UTF-8 (a byte-level sequence cut in the middle of a character) becomes U+FFFD, as
// Rust's String::from_utf8_lossy makes it: one replacement per maximal subpart, the longest
// prefix of a well-formed sequence, with each continuation checked against its lead's range
// (E0 takes A0-BF second, ED 80-9F, F0 90-BF, F4 80-8F); C0, C1 and F5-FF stand alone.
std::string utf8_lossy(const std::string& bytes) {
  if (is_valid_utf8(bytes)) return bytes;
  auto at = [&](size_t k) { return static_cast<unsigned char>(bytes[k]); };
  std::string out;
  size_t i = 0;
  while (i < bytes.size()) {
    const unsigned char c = at(i);
    size_t want = 0;                     // the sequence's length
    unsigned char lo = 0x80, hi = 0xBF;  // the range of its second byte
    if (c < 0x80) {
      want = 1;
    } else if (c >= 0xC2 && c <= 0xDF) {
      want = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      want = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      want = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    }
    size_t j = i + 1;
    while (want > 1 && j < bytes.size() && j < i + want) {
      const unsigned char b = at(j);
      const bool fits = j == i + 1 ? b >= lo && b <= hi : b >= 0x80 && b <= 0xBF;
      if (!fits) break;
      ++j;
    }
    if (want > 0 && j == i + want) {
      out.append(bytes, i, want);
    } else {
      out += "\xEF\xBF\xBD";
    }
    i = j;
  }
  return out;
}

}  // namespace

Decoder::Decoder(const json& config, const std::string& source) {
  if (config.is_null()) {
    none_ = true;
  } else {
    add(config, source);
  }
}

void Decoder::add(const json& config, const std::string& source) {
  const std::string type = config.value("type", "");
  if (type == "Sequence") {
    const json& children = config.at("decoders");
    if (!children.is_array())
      fail(source, "decoder.decoders (a Sequence's): expected an array, got " +
                       std::string(children.type_name()));
    for (const json& child : children) add(child, source);
  } else if (type == "ByteLevel") {
    {
      Step step;
      step.kind = Kind::kByteLevel;
      steps_.push_back(step);
    }
  } else if (type == "Metaspace") {
    Step step;
    step.kind = Kind::kMetaspace;
    step.a = config.value("replacement", "\u2581");
    if (config.contains("prepend_scheme")) {
      step.prepend = config.at("prepend_scheme").get<std::string>() != "never";
    } else {
      step.prepend = config.value("add_prefix_space", true);
    }
    steps_.push_back(step);
  } else if (type == "Replace") {
    Step step;
    step.kind = Kind::kReplace;
    const json& pattern = config.at("pattern");
    if (!pattern.contains("String")) fail(source, "unsupported decoder: Replace with a Regex");
    step.a = pattern.at("String").get<std::string>();
    step.b = config.at("content").get<std::string>();
    steps_.push_back(step);
  } else if (type == "ByteFallback") {
    {
      Step step;
      step.kind = Kind::kByteFallback;
      steps_.push_back(step);
    }
  } else if (type == "Fuse") {
    {
      Step step;
      step.kind = Kind::kFuse;
      steps_.push_back(step);
    }
  } else if (type == "Strip") {
    Step step;
    step.kind = Kind::kStrip;
    step.a = config.at("content").get<std::string>();
    step.start = config.value("start", 0);
    step.stop = config.value("stop", 0);
    steps_.push_back(step);
  } else {
    fail(source, "unsupported decoder: " + (type.empty() ? config.dump() : type) +
                     " (supported: ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, "
                     "Sequence)");
  }
}

std::string Decoder::decode(std::vector<std::string> tokens) const {
  if (none_) {
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
    return out;
  }
  for (const Step& step : steps_) {
    switch (step.kind) {
      case Kind::kByteLevel: {
        // Tokens made of byte symbols map back to bytes; any other token (an added token
        // outside the byte alphabet) passes through as its UTF-8.
        std::string bytes;
        for (const std::string& t : tokens) {
          std::string mapped;
          bool ok = true;
          for (size_t i = 0; i < t.size() && ok;) {
            const int b = symbol_byte(next_code_point(t, i));
            if (b < 0) ok = false;
            mapped += static_cast<char>(b);
          }
          bytes += ok ? mapped : t;
        }
        tokens = {utf8_lossy(bytes)};
        break;
      }
      case Kind::kMetaspace:
        for (size_t i = 0; i < tokens.size(); ++i) {
          // As `tokenizers`: in the first token every replacement is dropped when a prefix
          // was prepended at encode time; elsewhere it is a space.
          tokens[i] = replace_all(tokens[i], step.a, i == 0 && step.prepend ? "" : " ");
        }
        break;
      case Kind::kReplace:
        for (std::string& t : tokens) t = replace_all(t, step.a, step.b);
        break;
      case Kind::kByteFallback: {
        std::vector<std::string> result;
        std::string pending;
        size_t pending_count = 0;
        const auto flush = [&] {
          if (pending_count == 0) return;
          if (is_valid_utf8(pending)) {
            result.push_back(pending);
          } else {
            std::string bad;
            for (size_t k = 0; k < pending_count; ++k) bad += "\xEF\xBF\xBD";
            result.push_back(bad);
          }
          pending.clear();
          pending_count = 0;
        };
        for (const std::string& t : tokens) {
          const int b = parse_byte_token(t);
          if (b >= 0) {
            pending += static_cast<char>(b);
            ++pending_count;
          } else {
            flush();
            result.push_back(t);
          }
        }
        flush();
        tokens = std::move(result);
        break;
      }
      case Kind::kFuse: {
        std::string all;
        for (const std::string& t : tokens) all += t;
        tokens = {all};
        break;
      }
      case Kind::kStrip:
        for (std::string& t : tokens) {
          for (int k = 0; k < step.start && t.compare(0, step.a.size(), step.a) == 0; ++k) {
            t.erase(0, step.a.size());
          }
          for (int k = 0; k < step.stop && t.size() >= step.a.size() &&
                          t.compare(t.size() - step.a.size(), step.a.size(), step.a) == 0;
               ++k) {
            t.erase(t.size() - step.a.size());
          }
        }
        break;
    }
  }
  std::string out;
  for (const std::string& t : tokens) out += t;
  return out;
}

}  // namespace kvbench::tok
