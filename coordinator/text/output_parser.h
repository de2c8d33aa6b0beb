// Streaming parser of generated text: reasoning, content and tool calls.
// ../shared/spec/qwen35.md §7 (tag ids), §8 (thinking, tool-call format).
//
// Input: the generated tokens one at a time, each as (id, decoded text piece). A piece may be
// empty (the detokenizer holding an incomplete UTF-8 sequence). The four tags <think>,
// </think>, <tool_call>, </tool_call> are recognised by id (when the ids are given; the piece is
// then ignored, so a detokenizer that skips special tokens is fine) and, unless disabled, also
// as text (a model or a test that spells them with ordinary tokens).
//
// Output: events in generation order:
//   kReasoning  a delta of the text inside <think>...</think>;
//   kContent    a delta of the answer text (also: a malformed tool call, verbatim, with
//               parse_failed set);
//   kToolCall   a complete call: generated id, function name, arguments as a JSON object text
//               (Python json.dumps form, ensure_ascii=False).
// Never takes anything back: text that may still turn out to be the start of a tag is held
// until the next piece decides it; Finish() releases what is held at the end of generation.
//
// Rules:
//   - State at start: reasoning if the prompt opened <think> (thinking on: the generation prompt
//     ends with "<think>\n"), else content. <think> in content opens reasoning; </think> closes
//     it. A stray </think> in content (enable_thinking=false output never has one) or a repeated
//     <think> inside reasoning is dropped.
//   - <tool_call> opens a call in either state; a call inside reasoning is a tool call (never
//     reasoning text) and reasoning resumes after it. The body up to </tool_call> is parsed as
//     the Qwen3.5 XML form
//         <function=NAME>\n<parameter=P>\nVALUE\n</parameter>\n...</function>
//     (one newline after <parameter=P> and one before </parameter> are stripped; a missing
//     </parameter> ends the value at the next <parameter= or </function>) or the Qwen3 JSON
//     form {"name": NAME, "arguments": {...}} ("arguments" may also be a JSON string holding
//     an object). Parameter values are typed by the tool's JSON schema (properties.P.type):
//     "string" (or no schema for the tool/parameter) keeps the raw text; integer, number,
//     boolean, object, array, null are parsed as JSON (booleans also True/False in any case)
//     and kept when the result has that type, else the raw string is kept. A type list
//     (["integer", "null"]) or anyOf/oneOf tries each type in order ("null" matches the
//     value null; "string" takes the raw text); an "enum" without a type is a string.
//     Arguments are serialised like Python's json.dumps(..., ensure_ascii=False), in the order
//     the parameters appeared.
//   - A body that matches neither form, and an unclosed call at Finish(), become content
//     "<tool_call>" + body (+ "</tool_call>" if it was closed) with parse_failed = true.
//   - Newlines: leading newlines of each reasoning/content segment (after <think>, </think>,
//     </tool_call>) and trailing newlines right before a tag or the end are dropped, as the
//     chat template strips them when it renders history; newlines inside the text are kept.
//   - Unclosed <think> at the end: the reasoning emitted so far stays reasoning.
//
// reasoning_tokens(): tokens that arrived while the parser was inside reasoning (text pieces,
// plus the closing </think> token itself); tool-call tokens inside reasoning are not counted.
//
// Not thread-safe: one parser per generated sequence.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/text/json.h"

namespace rs {

// One tool as the request declared it (OpenAI "function" object).
struct ToolSpec {
  std::string name;
  std::string parameters_schema;  // the "parameters" JSON schema text; may be empty
};

// The tools array of an OpenAI request as JSON text ([{"type":"function","function":{...}}]).
absl::StatusOr<std::vector<ToolSpec>> ToolSpecsFromOpenAiJson(std::string_view tools_json);

struct ParsedToolCall {
  std::string id;         // call_id_prefix + a per-parser counter (or as the caller sets)
  std::string name;
  std::string arguments;  // JSON object text, e.g. {"city": "Paris", "days": 3}
};

struct OutputEvent {
  enum class Kind { kReasoning, kContent, kToolCall };
  Kind kind = Kind::kContent;
  std::string text;           // kReasoning / kContent
  ParsedToolCall call;        // kToolCall
  bool parse_failed = false;  // kContent that was a malformed or unclosed tool call
};

struct OutputParserOptions {
  // The prompt ended inside an open <think> (Qwen3.5 thinking mode): output starts as reasoning.
  bool prompt_opened_think = true;
  // Tag token ids from the vocabulary; -1: recognise that tag by text only.
  int32_t think_open_id = -1;      // 248068 for Qwen3.5
  int32_t think_close_id = -1;     // 248069
  int32_t tool_call_open_id = -1;  // 248058
  int32_t tool_call_close_id = -1; // 248059
  // Also recognise the four tags spelled as ordinary text.
  bool match_tags_in_text = true;
  std::vector<ToolSpec> tools;
  // Call ids are prefix + a counter; give each request a unique prefix (e.g. "call_<request>_").
  std::string call_id_prefix = "call_";
};

class OutputParser {
 public:
  // Tool schemas that do not parse as JSON are an error naming the tool.
  static absl::StatusOr<OutputParser> Create(OutputParserOptions options);

  // One generated token. Returns the events it completes (often none or one delta).
  std::vector<OutputEvent> Feed(int32_t token_id, std::string_view piece);
  // End of generation (EOS, stop string or max tokens): releases held text, reports an
  // unclosed tool call as failed content.
  std::vector<OutputEvent> Finish();

  int64_t reasoning_tokens() const { return reasoning_tokens_; }
  int64_t tool_calls() const { return tool_calls_; }
  int64_t parse_failures() const { return parse_failures_; }
  bool in_reasoning() const { return state_ == State::kReasoning; }
  bool in_tool_call() const { return state_ == State::kToolCall; }

  // Parses one tool-call body (the text between <tool_call> and </tool_call>); exposed for
  // tests and for non-streaming use. NotFound/InvalidArgument name what was wrong.
  absl::StatusOr<ParsedToolCall> ParseCallBody(std::string_view body) const;

 private:
  enum class State { kContent, kReasoning, kToolCall };
  enum class Tag { kNone, kThinkOpen, kThinkClose, kCallOpen, kCallClose };

  OutputParser() = default;
  void ProcessText(bool final, std::vector<OutputEvent>* out);
  void EmitText(std::string_view text, std::vector<OutputEvent>* out);
  void ApplyTag(Tag tag, std::vector<OutputEvent>* out);
  json::Json TypedValue(const json::Json* schema, std::string_view raw) const;
  void CloseCall(bool closed, std::vector<OutputEvent>* out);

  OutputParserOptions opt_;
  std::vector<json::Json> schemas_;  // parsed parameters schemas, parallel to opt_.tools
  State state_ = State::kContent;
  State resume_state_ = State::kContent;  // state after the current tool call
  std::string pending_;      // text not yet classified (a possible tag prefix)
  std::string call_body_;    // inside <tool_call>: the body so far
  size_t call_scanned_ = 0;  // call_body_ bytes already searched for </tool_call>
  std::string held_newlines_;
  bool segment_start_ = true;
  int64_t reasoning_tokens_ = 0;
  int64_t tool_calls_ = 0;
  int64_t parse_failures_ = 0;
};

}  // namespace rs
