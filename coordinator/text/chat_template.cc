#include "coordinator/text/chat_template.h"

#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace rs::chat {

using jinja::Value;

namespace {

// A shallow copy of a dict value (so normalisation never mutates the caller's value).
Value CopyDict(const Value& d) {
  Value out = Value::MakeDict();
  out.mutable_dict() = d.dict();
  return out;
}

}  // namespace

absl::StatusOr<Value> NormalizeMessages(const Value& messages) {
  if (!messages.is_list() || messages.is_tuple())
    return absl::InvalidArgumentError("messages must be a JSON array");
  std::vector<Value> out;
  out.reserve(messages.list().size());
  for (size_t i = 0; i < messages.list().size(); ++i) {
    const Value& m = messages.list()[i];
    if (!m.is_mapping())
      return absl::InvalidArgumentError(absl::StrCat("messages[", i, "] is not an object"));
    const Value* role = m.dict().find("role");
    if (!role || !role->is_string())
      return absl::InvalidArgumentError(absl::StrCat("messages[", i, "] has no string 'role'"));
    const Value* calls = m.dict().find("tool_calls");
    if (role->str() != "assistant" || !calls || !calls->is_list()) {
      out.push_back(m);
      continue;
    }
    std::vector<Value> new_calls;
    for (size_t j = 0; j < calls->list().size(); ++j) {
      const Value& call = calls->list()[j];
      const Value* fn = call.is_mapping() ? call.dict().find("function") : nullptr;
      if (!fn || !fn->is_mapping()) {
        new_calls.push_back(call);
        continue;
      }
      const Value* args = fn->dict().find("arguments");
      Value parsed;
      if (!args || args->is_none() || (args->is_string() && args->str().empty())) {
        parsed = Value::MakeDict();
      } else if (args->is_string()) {
        auto v = jinja::ParseJson(args->str());
        if (!v.ok())
          return absl::InvalidArgumentError(
              absl::StrCat("messages[", i, "].tool_calls[", j,
                           "].function.arguments is a string but not valid JSON: ",
                           v.status().message()));
        parsed = std::move(*v);
      } else {
        new_calls.push_back(call);
        continue;
      }
      Value new_fn = CopyDict(*fn);
      new_fn.mutable_dict().set("arguments", std::move(parsed));
      Value new_call = CopyDict(call);
      new_call.mutable_dict().set("function", std::move(new_fn));
      new_calls.push_back(std::move(new_call));
    }
    Value nm = CopyDict(m);
    nm.mutable_dict().set("tool_calls", Value::List(std::move(new_calls)));
    out.push_back(std::move(nm));
  }
  return Value::List(std::move(out));
}

absl::StatusOr<ChatTemplate> ChatTemplate::Create(std::string_view template_text) {
  auto t = jinja::Template::Parse(template_text);
  if (!t.ok()) return t.status();
  ChatTemplate ct;
  ct.tpl_ = std::move(*t);
  return ct;
}

absl::StatusOr<std::string> ChatTemplate::ApplyValues(Value messages, Value tools,
                                                      bool add_generation_prompt,
                                                      const Value& kwargs) const {
  auto norm = NormalizeMessages(messages);
  if (!norm.ok()) return norm.status();
  if (!tools.is_undefined() && !tools.is_none() && !(tools.is_list() && !tools.is_tuple()))
    return absl::InvalidArgumentError("tools must be a JSON array");
  if (!kwargs.is_undefined() && !kwargs.is_mapping())
    return absl::InvalidArgumentError("chat template kwargs must be a JSON object");
  Value ctx = Value::MakeDict();
  jinja::Dict& d = ctx.mutable_dict();
  d.set("messages", std::move(*norm));
  d.set("tools", tools.is_undefined() ? Value::None() : std::move(tools));
  d.set("documents", Value::None());
  d.set("add_generation_prompt", Value::Bool(add_generation_prompt));
  for (const auto& kv : kwargs.dict().items) {
    if (!kv.first.is_string()) continue;
    const std::string& k = kv.first.str();
    if (k == "messages" || k == "tools" || k == "documents" || k == "add_generation_prompt")
      return absl::InvalidArgumentError(
          absl::StrCat("chat template kwarg '", k, "' collides with a reserved variable"));
    d.set(k, kv.second);
  }
  return tpl_.Render(ctx);
}

absl::StatusOr<std::string> ChatTemplate::Apply(std::string_view messages_json,
                                                std::string_view tools_json,
                                                bool add_generation_prompt,
                                                std::string_view kwargs_json) const {
  auto messages = jinja::ParseJson(messages_json);
  if (!messages.ok())
    return absl::InvalidArgumentError(absl::StrCat("messages: ", messages.status().message()));
  Value tools;
  if (!tools_json.empty()) {
    auto t = jinja::ParseJson(tools_json);
    if (!t.ok()) return absl::InvalidArgumentError(absl::StrCat("tools: ", t.status().message()));
    tools = std::move(*t);
  }
  Value kwargs;
  if (!kwargs_json.empty()) {
    auto k = jinja::ParseJson(kwargs_json);
    if (!k.ok()) return absl::InvalidArgumentError(absl::StrCat("kwargs: ", k.status().message()));
    kwargs = std::move(*k);
  }
  return ApplyValues(std::move(*messages), std::move(tools), add_generation_prompt, kwargs);
}

absl::StatusOr<std::string> Render(std::string_view template_text, std::string_view messages_json,
                                   std::string_view tools_json, bool add_generation_prompt,
                                   std::string_view kwargs_json) {
  auto ct = ChatTemplate::Create(template_text);
  if (!ct.ok()) return ct.status();
  return ct->Apply(messages_json, tools_json, add_generation_prompt, kwargs_json);
}

}  // namespace rs::chat
