// The built-in chat formats, transcribed from the chat_template strings in the models'
// tokenizer_config.json: "llama3" (Meta-Llama-3-8B-Instruct), "llama3.1" (Llama-3.1-8B-Instruct,
// kept by 3.2 and 3.3), "chatml" (Qwen3), "qwen3-nothink" (Qwen3 with enable_thinking=False) and
// "qwen2.5" (Qwen2.5-7B-Instruct).
#include "kvbench/model/chat_format.h"

#include <cstring>

#include "kvbench/core/error.h"
#include "kvbench/core/text.h"
#include "kvbench/model/tokenizer.h"
#include "tokenizer_parts.h"

namespace kvbench {
namespace {

constexpr const char* kQwen25DefaultSystem =
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";

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

// Llama 3.1's template (3.2 and 3.3 keep it) without tools: BOS, then always a system turn that
// opens with the knowledge cut-off and a date, the first message's text after it when it is a
// system one, then the turns as Llama 3's. The date is the template's own default, 26 Jul 2024:
// transformers renders 3.2's and 3.3's with today's date (strftime_now), which would make a
// prompt, and its score, depend on the day it ran.
std::string render_llama31(const std::vector<ChatMessage>& messages, bool generation_prompt) {
  check_roles(messages, {"system", "user", "assistant"}, "llama3.1");
  const bool has_system = !messages.empty() && messages[0].role == "system";
  std::string out =
      "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
      "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n" +
      (has_system ? python_strip(messages[0].content) : std::string()) + "<|eot_id|>";
  for (size_t i = has_system ? 1 : 0; i < messages.size(); ++i) {
    out += "<|start_header_id|>" + messages[i].role + "<|end_header_id|>\n\n" +
           python_strip(messages[i].content) + "<|eot_id|>";
  }
  if (generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

// Qwen2.5's template without tools: ChatML turns as they are (no <think> handling), after a
// system turn that is the first message's or, without one, Qwen2.5's default.
std::string render_qwen25(const std::vector<ChatMessage>& messages, bool generation_prompt) {
  check_roles(messages, {"system", "user", "assistant", "tool"}, "qwen2.5");
  std::string out =
      "<|im_start|>system\n" +
      (!messages.empty() && messages[0].role == "system" ? messages[0].content
                                                         : std::string(kQwen25DefaultSystem)) +
      "<|im_end|>\n";
  const size_t n = messages.size();
  for (size_t i = 0; i < n; ++i) {
    const ChatMessage& m = messages[i];
    if (m.role == "tool") {
      if (i == 0 || messages[i - 1].role != "tool") out += "<|im_start|>user";
      out += "\n<tool_response>\n" + m.content + "\n</tool_response>";
      if (i + 1 == n || messages[i + 1].role != "tool") out += "<|im_end|>\n";
    } else if (!(m.role == "system" && i == 0)) {
      out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
    }
  }
  if (generation_prompt) out += "<|im_start|>assistant\n";
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

std::vector<std::string> chat_format_names() {
  return {"chatml", "llama3", "llama3.1", "qwen2.5", "qwen3-nothink"};
}

std::string render_chat(const std::string& format, const std::vector<ChatMessage>& messages,
                        bool add_generation_prompt) {
  for (const ChatMessage& m : messages)
    KVB_CHECK(is_valid_utf8(m.content), "chat format ", format, ": a ", m.role,
              " message is not valid UTF-8 text");
  if (format == "llama3") return render_llama3(messages, add_generation_prompt);
  if (format == "chatml") return render_chatml(messages, add_generation_prompt);
  // Qwen3's template with enable_thinking=False: an empty reasoning block opens the reply.
  if (format == "qwen3-nothink")
    return render_chatml(messages, add_generation_prompt) +
           (add_generation_prompt ? "<think>\n\n</think>\n\n" : "");
  if (format == "llama3.1") return render_llama31(messages, add_generation_prompt);
  if (format == "qwen2.5") return render_qwen25(messages, add_generation_prompt);
  throw Error("unknown chat format '" + format + "'; formats: " + join(chat_format_names(), ", "));
}

std::string detect_chat_format(const std::string& chat_template) {
  auto has = [&](const char* s) { return chat_template.find(s) != std::string::npos; };
  if (has("<|start_header_id|>")) return has("Cutting Knowledge Date") ? "llama3.1" : "llama3";
  if (has("<|im_start|>")) {
    if (has(kQwen25DefaultSystem)) return "qwen2.5";
    // A reply the template opens with <think> itself (QwQ, Qwen3's Thinking-2507 models).
    if (has("assistant\\n<think>\\n")) return "";
    // A system turn whose text the template writes itself (Qwen2's "You are a helpful
    // assistant.", Qwen2.5-Math's "Please reason step by step..."), which no built-in format
    // renders: in the source, the turn's opening string goes on with literal text instead of
    // closing its quote (Qwen3's closes it and adds the message's content).
    const std::string open = "<|im_start|>system\\n";
    for (size_t at = chat_template.find(open); at != std::string::npos;
         at = chat_template.find(open, at + 1)) {
      const size_t next = at + open.size();
      if (next < chat_template.size() && chat_template[next] != '\'' && chat_template[next] != '"')
        return "";
    }
    return "chatml";
  }
  return "";
}

void check_chat_tokens(const std::string& format, const Tokenizer& tokenizer) {
  const std::vector<std::string> markers =
      format.rfind("llama3", 0) == 0
          ? std::vector<std::string>{"<|begin_of_text|>", "<|start_header_id|>",
                                     "<|end_header_id|>", "<|eot_id|>"}
      : format == "qwen3-nothink"
          ? std::vector<std::string>{"<|im_start|>", "<|im_end|>", "<think>", "</think>"}
          : std::vector<std::string>{"<|im_start|>", "<|im_end|>"};
  for (const std::string& m : markers) {
    KVB_CHECK(tokenizer.encode(m).size() == 1, "chat format ", format, ": ", m,
              " is not one token of the model's tokenizer (", tokenizer.encode(m).size(),
              " tokens), so the template would be read as plain text; use the model's own "
              "format or none");
  }
}

}  // namespace kvbench
