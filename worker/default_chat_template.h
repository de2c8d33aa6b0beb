// The chat template rigserve writes into the models it generates (make-model, --synthetic):
// a Qwen3.5-style ChatML template of our own (spec §8). Owned by the chat-template work;
// tests render it against python3-jinja2.
#pragma once

namespace rs {

inline constexpr const char* kDefaultChatTemplate =
    R"TPL({%- for message in messages %}{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\n\n</think>\n\n' }}{%- else %}{{- '<think>\n' }}{%- endif %}{%- endif %})TPL";

}  // namespace rs
