// Built-in chat formats, chosen by name, that render a conversation exactly as the models' own
// Jinja chat templates do (no Jinja engine): "llama3" (Meta Llama 3 instruct, plain messages),
// "llama3.1" (Llama 3.1 / 3.2 / 3.3: a system turn with the knowledge cut-off and the template's
// default date always first), "chatml" (Qwen3: <|im_start|>role ... <|im_end|>, including its
// handling of <think> blocks in assistant turns), "qwen3-nothink" (Qwen3 with
// enable_thinking=False: an empty <think> block opens the reply) and "qwen2.5" (ChatML after
// Qwen2.5's default system turn). Tool definitions are not rendered.
#pragma once

#include <string>
#include <vector>

namespace kvbench {

class Tokenizer;

struct ChatMessage {
  std::string role;  // system, user, assistant (chatml also: tool)
  std::string content;
};

std::vector<std::string> chat_format_names();
// The built-in format a tokenizer_config.json `chat_template` (Jinja source) renders: for
// <|start_header_id|> headers "llama3.1" when it writes the knowledge cut-off, else "llama3";
// for <|im_start|> turns "qwen2.5" when it holds Qwen2.5's default system text, "" for another
// default system turn (Qwen2's) or a reply the template opens with <think> (QwQ), else
// "chatml"; "" for anything else.
std::string detect_chat_format(const std::string& chat_template);
// The prompt text; encode it with special-token splitting (Tokenizer::encode does) and without
// add_special_tokens, since "llama3" already starts with <|begin_of_text|>. Throws Error for an
// unknown format or role.
std::string render_chat(const std::string& format, const std::vector<ChatMessage>& messages,
                        bool add_generation_prompt = true);
// Throws Error unless every marker of `format` (<|start_header_id|>, <|im_start|>, ...) is one
// token of `tokenizer`: a tokenizer without them would read the template as plain text, and
// the model would see a prompt it was never trained on.
void check_chat_tokens(const std::string& format, const Tokenizer& tokenizer);

}  // namespace kvbench
