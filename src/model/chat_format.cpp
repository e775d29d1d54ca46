// The "llama3" and "chatml" chat formats, transcribed from the chat_template strings in the
// models' tokenizer_config.json (Meta-Llama-3-8B-Instruct, Qwen3).
#include "kvbench/model/chat_format.h"

#include <cstring>

#include "kvbench/core/error.h"
#include "kvbench/core/text.h"
#include "kvbench/model/tokenizer.h"
#include "tokenizer_parts.h"

namespace kvbench {
namespace {

// Python's str.isspace, which Jinja's trim and str.strip() use.
bool is_python_space(uint32_t cp) {
  if (cp < 0x80) return std::strchr(" \t\n\r\v\f\x1c\x1d\x1e\x1f", static_cast<int>(cp)) && cp;
  return tok::is_unicode_whitespace(cp);
}

std::string python_strip(const std::string& s) {
  size_t begin = 0, end = s.size();
  while (begin < end) {
    size_t i = begin;
    if (!is_python_space(tok::next_code_point(s, i))) break;
    begin = i;
  }
  while (end > begin) {
    size_t p = end - 1;
    while (p > begin && (static_cast<unsigned char>(s[p]) & 0xC0) == 0x80) --p;
    size_t q = p;
    if (!is_python_space(tok::next_code_point(s, q))) break;
    end = p;
  }
  return s.substr(begin, end - begin);
}

std::string lstrip_newlines(const std::string& s) {
  const size_t b = s.find_first_not_of('\n');
  return b == std::string::npos ? "" : s.substr(b);
}

std::string rstrip_newlines(const std::string& s) {
  const size_t e = s.find_last_not_of('\n');
  return e == std::string::npos ? "" : s.substr(0, e + 1);
}

bool starts_with(const std::string& s, const std::string& p) {
  return s.compare(0, p.size(), p) == 0;
}
bool ends_with(const std::string& s, const std::string& p) {
  return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
}

void check_roles(const std::vector<ChatMessage>& messages, const std::vector<std::string>& roles,
                 const std::string& format) {
  for (size_t i = 0; i < messages.size(); ++i) {
    bool ok = false;
    for (const auto& r : roles) ok |= messages[i].role == r;
    KVB_CHECK(ok, "chat: ", format, ": messages[", i, "].role: expected one of ", join(roles, ", "),
              ", got '", messages[i].role, "'");
  }
}

std::string render_llama3(const std::vector<ChatMessage>& messages, bool generation_prompt) {
  check_roles(messages, {"system", "user", "assistant", "tool", "ipython"}, "llama3");
  // The template puts BOS before the first message, inside its loop: none without messages.
  std::string out = messages.empty() ? "" : "<|begin_of_text|>";
  for (const ChatMessage& m : messages) {
    out += "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + python_strip(m.content) +
           "<|eot_id|>";
  }
  if (generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

// Qwen3's template without tools: a leading system message, then user/system turns verbatim,
// assistant turns with their <think> part removed unless they follow the last user query, and
// consecutive tool results grouped into one user turn.
std::string render_chatml(const std::vector<ChatMessage>& messages, bool generation_prompt) {
  check_roles(messages, {"system", "user", "assistant", "tool"}, "chatml");
  std::string out;
  const size_t n = messages.size();
  if (n > 0 && messages[0].role == "system") {
    out += "<|im_start|>system\n" + messages[0].content + "<|im_end|>\n";
  }
  size_t last_query = n == 0 ? 0 : n - 1;
  for (size_t k = n; k-- > 0;) {
    const ChatMessage& m = messages[k];
    if (m.role == "user" &&
        !(starts_with(m.content, "<tool_response>") && ends_with(m.content, "</tool_response>"))) {
      last_query = k;
      break;
    }
  }
  for (size_t i = 0; i < n; ++i) {
    const ChatMessage& m = messages[i];
    if (m.role == "user" || (m.role == "system" && i != 0)) {
      out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
    } else if (m.role == "assistant") {
      std::string content = m.content, reasoning;
      const size_t close = m.content.rfind("</think>");
      if (close != std::string::npos) {
        content = lstrip_newlines(m.content.substr(close + std::strlen("</think>")));
        std::string before = rstrip_newlines(m.content.substr(0, m.content.find("</think>")));
        const size_t open = before.rfind("<think>");
        if (open != std::string::npos) before = before.substr(open + std::strlen("<think>"));
        reasoning = lstrip_newlines(before);
      }
      if (i > last_query && (i + 1 == n || !reasoning.empty())) {
        out += "<|im_start|>assistant\n<think>\n" + lstrip_newlines(rstrip_newlines(reasoning)) +
               "\n</think>\n\n" + lstrip_newlines(content);
      } else {
        out += "<|im_start|>assistant\n" + content;
      }
      out += "<|im_end|>\n";
    } else if (m.role == "tool") {
      if (i == 0 || messages[i - 1].role != "tool") out += "<|im_start|>user";
      out += "\n<tool_response>\n" + m.content + "\n</tool_response>";
      if (i + 1 == n || messages[i + 1].role != "tool") out += "<|im_end|>\n";
    }
  }
  if (generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

}  // namespace

std::vector<std::string> chat_format_names() { return {"chatml", "llama3"}; }

std::string render_chat(const std::string& format, const std::vector<ChatMessage>& messages,
                        bool add_generation_prompt) {
  if (format == "llama3") return render_llama3(messages, add_generation_prompt);
  if (format == "chatml") return render_chatml(messages, add_generation_prompt);
  throw Error("unknown chat format '" + format + "'; formats: " + join(chat_format_names(), ", "));
}

std::string detect_chat_format(const std::string& chat_template) {
  if (chat_template.find("<|start_header_id|>") != std::string::npos) return "llama3";
  if (chat_template.find("<|im_start|>") != std::string::npos) return "chatml";
  return "";
}

void check_chat_tokens(const std::string& format, const Tokenizer& tokenizer) {
  const std::vector<std::string> markers =
      format == "llama3" ? std::vector<std::string>{"<|begin_of_text|>", "<|start_header_id|>",
                                                    "<|end_header_id|>", "<|eot_id|>"}
                         : std::vector<std::string>{"<|im_start|>", "<|im_end|>"};
  for (const std::string& m : markers) {
    KVB_CHECK(tokenizer.encode(m).size() == 1, "chat format ", format, ": ", m,
              " is not one token of the model's tokenizer (", tokenizer.encode(m).size(),
              " tokens), so the template would be read as plain text; use the model's own "
              "format or none");
  }
}

}  // namespace kvbench
