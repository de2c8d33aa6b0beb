// The chat template rigserve writes into the models it generates (make-model, --synthetic):
// a Qwen3.5-style ChatML template of our own writing that follows spec §8 (tools section,
// XML tool calls, reasoning kept only for the current agentic chain, consecutive tool results
// merged into one user turn, enable_thinking). Owned by the chat-template work; rendered
// against python3-jinja2 by tests/chat_template_test.sh (`rigserve render-chat
// --builtin-template` prints it) and unit-tested in tests/jinja_test.cc.
//
// Behaviour, in short (see spec §8 for the full statement):
//   system:    <|im_start|>system\n{system}<|im_end|>\n   (only when messages[0] is system)
//   tools:     <|im_start|>system\n# Tools ... <tools>\n{tool json}...\n</tools> {instructions}
//              [\n\n{system}]<|im_end|>\n
//   user:      <|im_start|>user\n{content|trim}<|im_end|>\n
//   assistant: <|im_start|>assistant\n[<think>\n{reasoning}\n</think>\n\n]{content}
//              [\n\n]<tool_call>\n<function=NAME>\n<parameter=K>\nV\n</parameter>\n...
//              </function>\n</tool_call>...<|im_end|>\n
//              (the think block only after the last real user query)
//   tool:      <|im_start|>user\n<tool_response>\n{content}\n</tool_response>...<|im_end|>\n
//   prompt:    <|im_start|>assistant\n<think>\n   or, enable_thinking=false,
//              <|im_start|>assistant\n<think>\n\n</think>\n\n
#pragma once

namespace rs {

inline constexpr const char* kDefaultChatTemplate = R"TPL({#- rigserve built-in chat template: Qwen3.5-style ChatML with XML tool calls. -#}
{%- macro text_of(content) -%}
    {%- if content is string -%}
        {{- content -}}
    {%- elif content is none or content is not defined -%}
    {%- elif content is iterable and content is not mapping -%}
        {%- for part in content -%}
            {%- if part is mapping and part.type == 'text' -%}
                {{- part.text -}}
            {%- else -%}
                {{- raise_exception('Only text content parts are supported by this model.') -}}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{- raise_exception('Message content must be a string or a list of text parts.') -}}
    {%- endif -%}
{%- endmacro -%}

{%- set has_system = messages|length > 0 and messages[0].role == 'system' -%}
{%- set system_text = text_of(messages[0].content)|trim if has_system else '' -%}
{%- if tools -%}
    {{- '<|im_start|>system\n# Tools\n\nYou have access to the following functions:\n\n<tools>' -}}
    {%- for tool in tools -%}
        {{- '\n' ~ tool|tojson -}}
    {%- endfor -%}
    {{- '\n</tools>\n\nTo call a function, write a block in exactly this form:\n<tool_call>\n<function=FUNCTION_NAME>\n<parameter=PARAMETER_NAME>\nVALUE\n</parameter>\n</function>\n</tool_call>\n\n<IMPORTANT>\nRules:\n- Put every call in its own <tool_call></tool_call> block and name the function with <function=...>.\n- Give each argument as a <parameter=...> block; a value may span several lines.\n- Write any explanation before the first call, never after the last one.\n- If no function fits the request, answer in plain text without a call.\n</IMPORTANT>' -}}
    {%- if system_text -%}
        {{- '\n\n' ~ system_text -}}
    {%- endif -%}
    {{- '<|im_end|>\n' -}}
{%- elif has_system -%}
    {{- '<|im_start|>system\n' ~ system_text ~ '<|im_end|>\n' -}}
{%- endif -%}

{#- The last real user query: later assistant turns form the current chain and keep reasoning. -#}
{%- set ns = namespace(last_query=-1) -%}
{%- for message in messages -%}
    {%- if message.role == 'user' -%}
        {%- set text = text_of(message.content)|trim -%}
        {%- if not (text.startswith('<tool_response>') and text.endswith('</tool_response>')) -%}
            {%- set ns.last_query = loop.index0 -%}
        {%- endif -%}
    {%- endif -%}
{%- endfor -%}

{%- for message in messages -%}
    {%- set role = message.role -%}
    {%- if role == 'system' -%}
        {%- if not loop.first -%}
            {{- raise_exception('A system message is only allowed as the first message.') -}}
        {%- endif -%}
    {%- elif role == 'user' -%}
        {{- '<|im_start|>user\n' ~ text_of(message.content)|trim ~ '<|im_end|>\n' -}}
    {%- elif role == 'assistant' -%}
        {%- set content = text_of(message.content) -%}
        {%- set reasoning = '' -%}
        {%- if message.reasoning_content is string -%}
            {%- set reasoning = message.reasoning_content -%}
        {%- elif '</think>' in content -%}
            {%- set reasoning = content.split('</think>')[0].split('<think>')[-1] -%}
            {%- set content = content.split('</think>')[-1] -%}
        {%- endif -%}
        {%- set content = content|trim -%}
        {%- if loop.index0 > ns.last_query -%}
            {{- '<|im_start|>assistant\n<think>\n' ~ reasoning|trim ~ '\n</think>\n\n' ~ content -}}
        {%- else -%}
            {{- '<|im_start|>assistant\n' ~ content -}}
        {%- endif -%}
        {%- if message.tool_calls -%}
            {%- for call in message.tool_calls -%}
                {%- set fn = call.function if call.function is defined else call -%}
                {%- if not loop.first -%}
                    {{- '\n' -}}
                {%- elif content -%}
                    {{- '\n\n' -}}
                {%- endif -%}
                {{- '<tool_call>\n<function=' ~ fn.name ~ '>\n' -}}
                {%- if fn.arguments is mapping -%}
                    {%- for key, value in fn.arguments|items -%}
                        {{- '<parameter=' ~ key ~ '>\n' -}}
                        {%- if value is string -%}
                            {{- value -}}
                        {%- else -%}
                            {{- value|tojson -}}
                        {%- endif -%}
                        {{- '\n</parameter>\n' -}}
                    {%- endfor -%}
                {%- elif fn.arguments is defined and fn.arguments is not none -%}
                    {{- raise_exception('Tool call arguments must be a JSON object.') -}}
                {%- endif -%}
                {{- '</function>\n</tool_call>' -}}
            {%- endfor -%}
        {%- endif -%}
        {{- '<|im_end|>\n' -}}
    {%- elif role == 'tool' -%}
        {%- if loop.first or loop.previtem.role != 'tool' -%}
            {{- '<|im_start|>user' -}}
        {%- endif -%}
        {{- '\n<tool_response>\n' ~ text_of(message.content)|trim ~ '\n</tool_response>' -}}
        {%- if loop.last or loop.nextitem.role != 'tool' -%}
            {{- '<|im_end|>\n' -}}
        {%- endif -%}
    {%- else -%}
        {{- raise_exception('Unknown message role: ' ~ role) -}}
    {%- endif -%}
{%- endfor -%}

{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant\n' -}}
    {%- if enable_thinking is defined and enable_thinking is false -%}
        {{- '<think>\n\n</think>\n\n' -}}
    {%- else -%}
        {{- '<think>\n' -}}
    {%- endif -%}
{%- endif -%}
)TPL";

}  // namespace rs
