// Renders a chat (OpenAI chat-format messages, optional tools, chat_template_kwargs) through a
// model's Jinja chat template, the way transformers' apply_chat_template does (spec §8):
// the template sees `messages`, `tools` (None when absent), `documents` (None),
// `add_generation_prompt`, and every kwarg as a top-level variable (enable_thinking, ...).
//
// Message normalisation before rendering (what vLLM does for tool-use templates):
// an assistant tool call's `function.arguments` given as a JSON string is parsed into its
// value (an object), and a missing, null or empty-string `arguments` becomes {}. Templates
// such as Qwen3's accept both forms; Qwen3.5-style templates iterate `arguments|items`, so
// they need the object.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "coordinator/text/jinja.h"

namespace rs::chat {

// A parsed chat template, reusable across requests (thread-safe to Apply concurrently).
class ChatTemplate {
 public:
  static absl::StatusOr<ChatTemplate> Create(std::string_view template_text);

  // messages: JSON array of message objects; tools: JSON array or empty for none; kwargs:
  // JSON object or empty for none. Errors name the message/tool index or template line:col.
  absl::StatusOr<std::string> Apply(std::string_view messages_json, std::string_view tools_json,
                                    bool add_generation_prompt,
                                    std::string_view kwargs_json) const;

  // The same with already-parsed values (tools: None/undefined for none; kwargs: dict or
  // undefined). `messages` is normalised as described above.
  absl::StatusOr<std::string> ApplyValues(jinja::Value messages, jinja::Value tools,
                                          bool add_generation_prompt,
                                          const jinja::Value& kwargs) const;

 private:
  jinja::Template tpl_;
};

// One-shot convenience: parse the template and apply it.
absl::StatusOr<std::string> Render(std::string_view template_text, std::string_view messages_json,
                                   std::string_view tools_json, bool add_generation_prompt,
                                   std::string_view kwargs_json);

// Validates `messages` (an array of objects with a string `role`) and returns it with tool-call
// arguments normalised (see the header comment).
absl::StatusOr<jinja::Value> NormalizeMessages(const jinja::Value& messages);

}  // namespace rs::chat
