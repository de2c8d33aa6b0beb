// Streaming reasoning / content / tool-call parser (see output_parser.h for the rules).
#include "coordinator/text/output_parser.h"

#include <algorithm>
#include <array>
#include <cctype>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace rs {
namespace {

constexpr std::string_view kThinkOpen = "<think>";
constexpr std::string_view kThinkClose = "</think>";
constexpr std::string_view kCallOpen = "<tool_call>";
constexpr std::string_view kCallClose = "</tool_call>";
constexpr std::string_view kFunctionOpen = "<function=";
constexpr std::string_view kFunctionClose = "</function>";
constexpr std::string_view kParamOpen = "<parameter=";
constexpr std::string_view kParamClose = "</parameter>";

bool IsSpace(char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

std::string_view Trim(std::string_view s) {
  while (!s.empty() && IsSpace(s.front())) s.remove_prefix(1);
  while (!s.empty() && IsSpace(s.back())) s.remove_suffix(1);
  return s;
}

// The JSON types a parameter schema allows, in declaration order ("type": "x" or ["x", ...],
// or the types of the anyOf/oneOf members).
std::vector<std::string> SchemaTypes(const json::Json* schema) {
  std::vector<std::string> types;
  if (schema == nullptr || !schema->is_object()) return types;
  if (const json::Json* t = schema->find("type")) {
    if (t->is_string()) types.push_back(t->as_string());
    if (t->is_array())
      for (const json::Json& e : t->as_array())
        if (e.is_string()) types.push_back(e.as_string());
  }
  for (const char* key : {"anyOf", "oneOf"}) {
    const json::Json* alts = schema->find(key);
    if (alts == nullptr || !alts->is_array()) continue;
    for (const json::Json& alt : alts->as_array())
      for (std::string& t : SchemaTypes(&alt)) types.push_back(std::move(t));
  }
  if (types.empty() && schema->contains("enum")) types.push_back("string");
  return types;
}

}  // namespace

absl::StatusOr<std::vector<ToolSpec>> ToolSpecsFromOpenAiJson(std::string_view tools_json) {
  absl::StatusOr<json::Json> doc = json::Parse(tools_json);
  if (!doc.ok()) return absl::InvalidArgumentError(absl::StrCat("tools: ", doc.status().message()));
  if (!doc->is_array()) return absl::InvalidArgumentError("tools: expected a JSON array");
  std::vector<ToolSpec> out;
  for (size_t i = 0; i < doc->as_array().size(); ++i) {
    const json::Json& tool = doc->as_array()[i];
    const json::Json* fn = tool.find("function");
    if (fn == nullptr) fn = &tool;  // bare {"name", "parameters"}
    const json::Json* name = fn->find("name");
    if (name == nullptr || !name->is_string())
      return absl::InvalidArgumentError(absl::StrCat("tools[", i, "]: missing function name"));
    ToolSpec spec;
    spec.name = name->as_string();
    if (const json::Json* params = fn->find("parameters")) spec.parameters_schema = json::DumpCompact(*params);
    out.push_back(std::move(spec));
  }
  return out;
}

absl::StatusOr<OutputParser> OutputParser::Create(OutputParserOptions options) {
  OutputParser p;
  for (const ToolSpec& tool : options.tools) {
    if (Trim(tool.parameters_schema).empty()) {
      p.schemas_.emplace_back();
      continue;
    }
    absl::StatusOr<json::Json> schema = json::Parse(tool.parameters_schema);
    if (!schema.ok())
      return absl::InvalidArgumentError(absl::StrCat("tool '", tool.name,
                                                     "': parameters schema is not JSON: ",
                                                     schema.status().message()));
    p.schemas_.push_back(*std::move(schema));
  }
  p.state_ = options.prompt_opened_think ? State::kReasoning : State::kContent;
  p.opt_ = std::move(options);
  return p;
}

// ---- streaming -----------------------------------------------------------------------------

std::vector<OutputEvent> OutputParser::Feed(int32_t token_id, std::string_view piece) {
  std::vector<OutputEvent> out;
  Tag tag = Tag::kNone;
  if (token_id >= 0) {
    if (token_id == opt_.think_open_id) tag = Tag::kThinkOpen;
    else if (token_id == opt_.think_close_id) tag = Tag::kThinkClose;
    else if (token_id == opt_.tool_call_open_id) tag = Tag::kCallOpen;
    else if (token_id == opt_.tool_call_close_id) tag = Tag::kCallClose;
  }
  if (state_ == State::kReasoning && (tag == Tag::kNone || tag == Tag::kThinkClose ||
                                      tag == Tag::kThinkOpen))
    ++reasoning_tokens_;
  if (tag == Tag::kNone) {
    pending_.append(piece);
    ProcessText(/*final=*/false, &out);
  } else {
    // A tag token decides any held prefix: it was text.
    ProcessText(/*final=*/true, &out);
    ApplyTag(tag, &out);
  }
  return out;
}

std::vector<OutputEvent> OutputParser::Finish() {
  std::vector<OutputEvent> out;
  ProcessText(/*final=*/true, &out);
  held_newlines_.clear();
  if (state_ == State::kToolCall) CloseCall(/*closed=*/false, &out);
  return out;
}

void OutputParser::ProcessText(bool final, std::vector<OutputEvent>* out) {
  const bool text_tags = opt_.match_tags_in_text;
  while (true) {
    if (state_ == State::kToolCall) {
      call_body_.append(pending_);
      pending_.clear();
      if (!text_tags) return;
      const size_t from = call_scanned_ >= kCallClose.size() ? call_scanned_ - kCallClose.size() + 1 : 0;
      const size_t pos = call_body_.find(kCallClose, from);
      if (pos == std::string::npos) {
        call_scanned_ = call_body_.size();
        return;
      }
      pending_ = call_body_.substr(pos + kCallClose.size());
      call_body_.resize(pos);
      CloseCall(/*closed=*/true, out);
      continue;
    }
    // Content or reasoning: every tag may appear (the state decides what it does).
    static constexpr std::array<std::pair<std::string_view, Tag>, 4> kTags = {{
        {kThinkOpen, Tag::kThinkOpen},
        {kThinkClose, Tag::kThinkClose},
        {kCallOpen, Tag::kCallOpen},
        {kCallClose, Tag::kCallClose},
    }};
    size_t best = std::string::npos;
    Tag best_tag = Tag::kNone;
    size_t best_len = 0;
    if (text_tags) {
      for (const auto& [text, tag] : kTags) {
        const size_t pos = pending_.find(text);
        if (pos < best) {
          best = pos;
          best_tag = tag;
          best_len = text.size();
        }
      }
    }
    if (best != std::string::npos) {
      EmitText(std::string_view(pending_).substr(0, best), out);
      pending_.erase(0, best + best_len);
      ApplyTag(best_tag, out);
      continue;
    }
    // No complete tag: hold the longest suffix that could still become one.
    size_t hold = 0;
    if (text_tags && !final) {
      for (size_t k = std::min<size_t>(pending_.size(), kCallClose.size() - 1); k > 0; --k) {
        const std::string_view suffix = std::string_view(pending_).substr(pending_.size() - k);
        bool prefix = false;
        for (const auto& [text, tag] : kTags)
          if (k < text.size() && text.substr(0, k) == suffix) prefix = true;
        if (prefix) {
          hold = k;
          break;
        }
      }
    }
    EmitText(std::string_view(pending_).substr(0, pending_.size() - hold), out);
    pending_.erase(0, pending_.size() - hold);
    return;
  }
}

void OutputParser::EmitText(std::string_view text, std::vector<OutputEvent>* out) {
  if (segment_start_) {
    while (!text.empty() && text.front() == '\n') text.remove_prefix(1);
    if (text.empty()) return;
    segment_start_ = false;
  }
  size_t body_len = text.size();
  while (body_len > 0 && text[body_len - 1] == '\n') --body_len;
  if (body_len == 0) {
    held_newlines_.append(text);
    return;
  }
  const OutputEvent::Kind kind =
      state_ == State::kReasoning ? OutputEvent::Kind::kReasoning : OutputEvent::Kind::kContent;
  if (out->empty() || out->back().kind != kind || out->back().parse_failed) {
    out->emplace_back();
    out->back().kind = kind;
  }
  std::string& dst = out->back().text;
  dst.append(held_newlines_);
  dst.append(text.substr(0, body_len));
  held_newlines_.assign(text.substr(body_len));
}

void OutputParser::ApplyTag(Tag tag, std::vector<OutputEvent>* out) {
  if (state_ == State::kToolCall) {
    if (tag == Tag::kCallClose) {
      CloseCall(/*closed=*/true, out);
      return;
    }
    // Any other tag token inside a call is part of the (likely malformed) body.
    call_body_.append(tag == Tag::kThinkOpen    ? kThinkOpen
                      : tag == Tag::kThinkClose ? kThinkClose
                                                : kCallOpen);
    return;
  }
  held_newlines_.clear();  // newlines right before a tag belong to the markup
  switch (tag) {
    case Tag::kThinkOpen:
      if (state_ == State::kContent) {
        state_ = State::kReasoning;
        segment_start_ = true;
      }
      break;
    case Tag::kThinkClose:
      if (state_ == State::kReasoning) {
        state_ = State::kContent;
        segment_start_ = true;
      }
      break;
    case Tag::kCallOpen:
      resume_state_ = state_;
      state_ = State::kToolCall;
      call_body_.clear();
      call_scanned_ = 0;
      break;
    case Tag::kCallClose:  // stray: dropped
    case Tag::kNone:
      break;
  }
}

void OutputParser::CloseCall(bool closed, std::vector<OutputEvent>* out) {
  state_ = resume_state_;
  segment_start_ = true;
  held_newlines_.clear();
  absl::StatusOr<ParsedToolCall> call =
      closed ? ParseCallBody(call_body_) : absl::StatusOr<ParsedToolCall>(
                                               absl::DataLossError("tool call not closed"));
  OutputEvent ev;
  if (call.ok()) {
    ev.kind = OutputEvent::Kind::kToolCall;
    ev.call = *std::move(call);
    ev.call.id = absl::StrCat(opt_.call_id_prefix, tool_calls_);
    ++tool_calls_;
  } else {
    ev.kind = OutputEvent::Kind::kContent;
    ev.parse_failed = true;
    ev.text = std::string(kCallOpen) + call_body_ + (closed ? std::string(kCallClose) : "");
    ++parse_failures_;
  }
  out->push_back(std::move(ev));
  call_body_.clear();
  call_scanned_ = 0;
}

// ---- call bodies -----------------------------------------------------------------------------

json::Json OutputParser::TypedValue(const json::Json* schema, std::string_view raw) const {
  const std::vector<std::string> types = SchemaTypes(schema);
  const std::string_view v = Trim(raw);
  for (const std::string& type : types) {
    if (type == "string") return json::Json(std::string(raw));
    if (type == "null") {
      if (v == "null") return json::Json();
      continue;
    }
    if (type == "boolean") {
      std::string lower(v);
      absl::AsciiStrToLower(&lower);
      if (lower == "true") return json::Json(true);
      if (lower == "false") return json::Json(false);
      continue;
    }
    absl::StatusOr<json::Json> parsed = json::Parse(v);
    if (!parsed.ok()) continue;
    const bool match = (type == "integer" || type == "number") ? parsed->is_number()
                       : type == "object"                     ? parsed->is_object()
                       : type == "array"                      ? parsed->is_array()
                                                              : false;
    if (match) return *std::move(parsed);
  }
  return json::Json(std::string(raw));
}

absl::StatusOr<ParsedToolCall> OutputParser::ParseCallBody(std::string_view body) const {
  const std::string_view s = Trim(body);
  auto schema_for = [&](std::string_view tool) -> const json::Json* {
    for (size_t i = 0; i < opt_.tools.size(); ++i)
      if (opt_.tools[i].name == tool) return &schemas_[i];
    return nullptr;
  };
  ParsedToolCall call;
  if (!s.empty() && s.front() == '{') {  // Qwen3 JSON form
    absl::StatusOr<json::Json> doc = json::Parse(s);
    if (!doc.ok())
      return absl::InvalidArgumentError(absl::StrCat("tool call JSON: ", doc.status().message()));
    const json::Json* name = doc->find("name");
    if (name == nullptr || !name->is_string() || name->as_string().empty())
      return absl::InvalidArgumentError("tool call JSON has no \"name\" string");
    call.name = name->as_string();
    const json::Json* args = doc->find("arguments");
    if (args == nullptr) args = doc->find("parameters");
    json::Json obj = json::Json::Object();
    if (args != nullptr && args->is_string()) {
      absl::StatusOr<json::Json> inner = json::Parse(args->as_string());
      if (!inner.ok() || !inner->is_object())
        return absl::InvalidArgumentError("tool call \"arguments\" string is not a JSON object");
      obj = *std::move(inner);
    } else if (args != nullptr && args->is_object()) {
      obj = *args;
    } else if (args != nullptr && !args->is_null()) {
      return absl::InvalidArgumentError("tool call \"arguments\" is not an object");
    }
    absl::StatusOr<std::string> text = json::Dump(obj);
    if (!text.ok()) return text.status();
    call.arguments = *std::move(text);
    return call;
  }

  // Qwen3.5 XML form.
  if (s.substr(0, kFunctionOpen.size()) != kFunctionOpen)
    return absl::InvalidArgumentError(
        "tool call body starts with neither '{' nor '<function=': '" +
        std::string(s.substr(0, 40)) + "'");
  size_t pos = kFunctionOpen.size();
  const size_t name_end = s.find('>', pos);
  if (name_end == std::string_view::npos)
    return absl::InvalidArgumentError("'<function=' without a closing '>'");
  call.name = std::string(Trim(s.substr(pos, name_end - pos)));
  if (call.name.empty() || call.name.find_first_of("<\n") != std::string::npos)
    return absl::InvalidArgumentError(absl::StrCat("bad function name '", call.name, "'"));
  pos = name_end + 1;
  const json::Json* tool_schema = schema_for(call.name);
  const json::Json* props = tool_schema != nullptr ? tool_schema->find("properties") : nullptr;
  json::Json args = json::Json::Object();
  bool closed = false;
  while (true) {
    while (pos < s.size() && IsSpace(s[pos])) ++pos;
    if (pos >= s.size()) break;  // </function> missing: tolerated (</tool_call> ended the call)
    const std::string_view rest = s.substr(pos);
    if (rest.substr(0, kFunctionClose.size()) == kFunctionClose) {
      pos += kFunctionClose.size();
      closed = true;
      break;
    }
    if (rest.substr(0, kParamOpen.size()) != kParamOpen)
      return absl::InvalidArgumentError(absl::StrCat(
          "unexpected text in function '", call.name, "' at offset ", pos, ": '",
          std::string(rest.substr(0, 40)), "'"));
    const size_t pname_start = pos + kParamOpen.size();
    const size_t pname_end = s.find('>', pname_start);
    if (pname_end == std::string_view::npos)
      return absl::InvalidArgumentError("'<parameter=' without a closing '>'");
    const std::string pname(Trim(s.substr(pname_start, pname_end - pname_start)));
    if (pname.empty() || pname.find_first_of("<\n") != std::string::npos)
      return absl::InvalidArgumentError(absl::StrCat("bad parameter name '", pname, "'"));
    const size_t vstart = pname_end + 1;
    size_t vend = s.find(kParamClose, vstart);
    size_t next;
    if (vend != std::string_view::npos) {
      next = vend + kParamClose.size();
    } else {  // missing </parameter>: the value ends at the next parameter or </function>
      vend = std::min(s.find(kParamOpen, vstart), s.find(kFunctionClose, vstart));
      if (vend == std::string_view::npos) vend = s.size();
      next = vend;
    }
    std::string_view value = s.substr(vstart, vend - vstart);
    if (!value.empty() && value.front() == '\n') value.remove_prefix(1);
    if (!value.empty() && value.back() == '\n') value.remove_suffix(1);
    const json::Json* pschema =
        props != nullptr && props->is_object() ? props->find(pname) : nullptr;
    args.set(pname, TypedValue(pschema, value));
    pos = next;
  }
  if (closed) {
    while (pos < s.size() && IsSpace(s[pos])) ++pos;
    if (pos < s.size())
      return absl::InvalidArgumentError(absl::StrCat(
          "text after </function> in the call of '", call.name, "': '",
          std::string(s.substr(pos, 40)), "'"));
  }
  absl::StatusOr<std::string> text = json::Dump(args);
  if (!text.ok()) return text.status();
  call.arguments = *std::move(text);
  return call;
}

}  // namespace rs
