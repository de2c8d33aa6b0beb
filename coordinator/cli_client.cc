// rigserve client generate|chat: a command-line client of the public API (same output flags
// as `rigserve generate`; chat streams text to the terminal).
#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "coordinator/daemon.h"
#include "coordinator/text/json.h"
#include "rigserve/v1/inference.grpc.pb.h"
#include "worker/args.h"

namespace rs::cli {
namespace {

namespace pb = rigserve::v1;

void AddSamplingOptions(Args& a) {
  a.opt("server", "HOST:PORT of the daemon", "127.0.0.1:50051")
      .opt("max-tokens", "tokens to generate")
      .opt("temperature", "sampling temperature (0 = greedy)")
      .opt("top-p", "nucleus sampling mass").opt("top-k", "top-k").opt("min-p", "min-p")
      .opt("presence-penalty", "presence penalty").opt("frequency-penalty", "frequency penalty")
      .opt("repetition-penalty", "repetition penalty").opt("seed", "sampling seed")
      .opt("stop", "stop string (may be given once)")
      .opt("ids-out", "write the generated ids here")
      .opt("request-id", "request id (for Abort)")
      .opt("timeout", "seconds before giving up", "600");
}

bool FillSampling(const Args& a, pb::SamplingParams* s) {
  auto f = [&](const char* name, auto setter) {
    if (!a.has(name)) return true;
    double v;
    if (!absl::SimpleAtod(a.get(name), &v)) {
      a.usage_error(std::string("--") + name + " must be a number");
      return false;
    }
    setter(v);
    return true;
  };
  return f("max-tokens", [&](double v) { s->set_max_tokens(static_cast<int>(v)); }) &&
         f("temperature", [&](double v) { s->set_temperature(static_cast<float>(v)); }) &&
         f("top-p", [&](double v) { s->set_top_p(static_cast<float>(v)); }) &&
         f("top-k", [&](double v) { s->set_top_k(static_cast<int>(v)); }) &&
         f("min-p", [&](double v) { s->set_min_p(static_cast<float>(v)); }) &&
         f("presence-penalty", [&](double v) { s->set_presence_penalty(static_cast<float>(v)); }) &&
         f("frequency-penalty", [&](double v) { s->set_frequency_penalty(static_cast<float>(v)); }) &&
         f("repetition-penalty", [&](double v) { s->set_repetition_penalty(static_cast<float>(v)); }) &&
         f("seed", [&](double v) { s->set_seed(static_cast<uint64_t>(v)); }) &&
         (a.has("stop") ? (s->add_stop(a.get("stop")), true) : true);
}

std::unique_ptr<pb::Inference::Stub> Connect(const Args& a) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  return pb::Inference::NewStub(
      grpc::CreateCustomChannel(a.get("server"), grpc::InsecureChannelCredentials(), args));
}

int Fail(const grpc::Status& st) {
  std::fprintf(stderr, "rigserve client: %s: %s\n",
               st.error_code() == grpc::StatusCode::INVALID_ARGUMENT ? "INVALID_ARGUMENT"
               : st.error_code() == grpc::StatusCode::UNAVAILABLE    ? "UNAVAILABLE"
               : st.error_code() == grpc::StatusCode::CANCELLED      ? "CANCELLED"
                                                                      : "error",
               st.error_message().c_str());
  return 1;
}

std::string ReadFile(const std::string& path, bool* ok) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  *ok = static_cast<bool>(f);
  return ss.str();
}

int GenerateCmd(int argc, char** argv) {
  Args a("client generate", "Generate through the daemon; prints the generated ids.");
  AddSamplingOptions(a);
  a.opt("prompt-ids", "prompt token ids").opt("prompt", "prompt text").flag("text", "also print the text");
  if (!a.parse(argc, argv)) return parse_exit(a);
  pb::GenerateRequest req;
  if (a.has("prompt-ids")) {
    for (absl::string_view t : absl::StrSplit(a.get("prompt-ids"), absl::ByAnyChar(" ,"), absl::SkipEmpty())) {
      int32_t id;
      if (!absl::SimpleAtoi(t, &id)) return a.usage_error("--prompt-ids: not a token id: " + std::string(t));
      req.mutable_token_ids()->add_ids(id);
    }
  } else if (a.has("prompt")) {
    req.set_text(a.get("prompt"));
  } else {
    return a.usage_error("give --prompt-ids or --prompt");
  }
  if (!FillSampling(a, req.mutable_sampling())) return 2;
  if (a.has("request-id")) req.set_request_id(a.get("request-id"));
  auto stub = Connect(a);
  grpc::ClientContext ctx;
  double timeout = 600;
  absl::SimpleAtod(a.get("timeout"), &timeout);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(static_cast<int64_t>(timeout * 1000)));
  auto reader = stub->Generate(&ctx, req);
  pb::GenerateResponse m;
  std::vector<int32_t> ids;
  std::string text;
  pb::GenerateResponse last;
  while (reader->Read(&m)) {
    ids.insert(ids.end(), m.token_ids().begin(), m.token_ids().end());
    text += m.text();
    last = m;
  }
  grpc::Status st = reader->Finish();
  if (!st.ok()) return Fail(st);
  std::string line;
  for (size_t i = 0; i < ids.size(); ++i) line += (i ? " " : "") + std::to_string(ids[i]);
  std::printf("%s\n", line.c_str());
  if (a.has("text")) std::printf("%s\n", text.c_str());
  std::fprintf(stderr, "finish_reason=%s prompt_tokens=%d completion_tokens=%d cached_tokens=%d\n",
               last.finish_reason().c_str(), last.usage().prompt_tokens(),
               last.usage().completion_tokens(), last.usage().cached_tokens());
  if (a.has("ids-out")) {
    std::ofstream f(a.get("ids-out"));
    f << line << "\n";
  }
  return 0;
}

int ChatCmd(int argc, char** argv) {
  Args a("client chat", "Chat through the daemon; streams reasoning and content to the terminal.");
  AddSamplingOptions(a);
  a.opt("message", "the user message").opt("system", "a system message")
      .opt("messages", "JSON file: an array of {role, content, ...} messages (instead of --message)")
      .opt("tools", "JSON file: an array of OpenAI-style tools")
      .opt("thinking-budget", "max reasoning tokens (0 = no reasoning)")
      .opt("json-out", "write the final result here as JSON {reasoning, content, tool_calls, usage}")
      .flag("no-think", "render with enable_thinking=false")
      .flag("quiet", "print nothing but errors");
  if (!a.parse(argc, argv)) return parse_exit(a);
  pb::ChatRequest req;
  if (a.has("messages")) {
    bool ok;
    std::string text = ReadFile(a.get("messages"), &ok);
    if (!ok) return a.usage_error("cannot read " + a.get("messages"));
    auto j = json::Parse(text);
    if (!j.ok() || !j->is_array()) return a.usage_error("--messages must hold a JSON array");
    for (const auto& m : j->as_array()) {
      auto* pm = req.add_messages();
      if (auto* r = m.find("role"); r && r->is_string()) pm->set_role(r->as_string());
      if (auto* c = m.find("content"); c && c->is_string()) pm->set_content(c->as_string());
      if (auto* c = m.find("reasoning_content"); c && c->is_string()) pm->set_reasoning_content(c->as_string());
      if (auto* c = m.find("tool_call_id"); c && c->is_string()) pm->set_tool_call_id(c->as_string());
      if (auto* tcs = m.find("tool_calls"); tcs && tcs->is_array())
        for (const auto& tc : tcs->as_array()) {
          auto* t = pm->add_tool_calls();
          if (auto* id = tc.find("id"); id && id->is_string()) t->set_id(id->as_string());
          const json::Json* fn = tc.find("function");
          if (fn) {
            if (auto* n = fn->find("name"); n && n->is_string()) t->set_name(n->as_string());
            if (auto* ar = fn->find("arguments"))
              t->set_arguments(ar->is_string() ? ar->as_string() : json::DumpCompact(*ar));
          }
        }
    }
  } else {
    if (a.has("system")) {
      auto* s = req.add_messages();
      s->set_role("system");
      s->set_content(a.get("system"));
    }
    if (!a.has("message")) return a.usage_error("give --message or --messages");
    auto* u = req.add_messages();
    u->set_role("user");
    u->set_content(a.get("message"));
  }
  if (a.has("tools")) {
    bool ok;
    req.set_tools_json(ReadFile(a.get("tools"), &ok));
    if (!ok) return a.usage_error("cannot read " + a.get("tools"));
  }
  if (a.has("no-think")) req.set_chat_template_kwargs_json("{\"enable_thinking\": false}");
  if (a.has("thinking-budget")) {
    int b;
    if (!absl::SimpleAtoi(a.get("thinking-budget"), &b)) return a.usage_error("--thinking-budget must be an integer");
    req.set_thinking_budget(b);
  }
  if (!FillSampling(a, req.mutable_sampling())) return 2;
  if (a.has("request-id")) req.set_request_id(a.get("request-id"));
  const bool quiet = a.has("quiet");
  auto stub = Connect(a);
  grpc::ClientContext ctx;
  double timeout = 600;
  absl::SimpleAtod(a.get("timeout"), &timeout);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(static_cast<int64_t>(timeout * 1000)));
  auto reader = stub->Chat(&ctx, req);
  pb::ChatResponse m;
  std::string reasoning, content, finish;
  json::Json calls = json::Json::Array();
  std::vector<int32_t> ids;
  pb::Usage usage;
  bool in_reasoning = false;
  while (reader->Read(&m)) {
    ids.insert(ids.end(), m.token_ids().begin(), m.token_ids().end());
    if (m.has_usage()) usage = m.usage();
    if (!m.finish_reason().empty()) finish = m.finish_reason();
    if (m.has_reasoning()) {
      if (!quiet && !in_reasoning) std::printf("\033[2m[thinking] ");
      in_reasoning = true;
      reasoning += m.reasoning();
      if (!quiet) std::printf("%s", m.reasoning().c_str());
    } else if (m.has_content()) {
      if (!quiet && in_reasoning) std::printf("\033[0m\n");
      in_reasoning = false;
      content += m.content();
      if (!quiet) std::printf("%s", m.content().c_str());
    } else if (m.has_tool_call()) {
      json::Json c = json::Json::Object();
      c.set("id", json::Json(m.tool_call().id()));
      c.set("name", json::Json(m.tool_call().name()));
      c.set("arguments", json::Json(m.tool_call().arguments()));
      if (!quiet) std::printf("\n[tool call] %s(%s)\n", m.tool_call().name().c_str(), m.tool_call().arguments().c_str());
      calls.push_back(std::move(c));
    }
    std::fflush(stdout);
  }
  if (!quiet && in_reasoning) std::printf("\033[0m");
  if (!quiet) std::printf("\n");
  grpc::Status st = reader->Finish();
  if (!st.ok()) return Fail(st);
  std::fprintf(stderr, "finish_reason=%s prompt_tokens=%d completion_tokens=%d cached_tokens=%d reasoning_tokens=%d\n",
               finish.c_str(), usage.prompt_tokens(), usage.completion_tokens(), usage.cached_tokens(),
               usage.reasoning_tokens());
  if (a.has("ids-out")) {
    std::ofstream f(a.get("ids-out"));
    for (size_t i = 0; i < ids.size(); ++i) f << (i ? " " : "") << ids[i];
    f << "\n";
  }
  if (a.has("json-out")) {
    json::Json o = json::Json::Object();
    o.set("reasoning", json::Json(reasoning));
    o.set("content", json::Json(content));
    o.set("tool_calls", std::move(calls));
    o.set("finish_reason", json::Json(finish));
    json::Json u = json::Json::Object();
    u.set("prompt_tokens", json::Json(usage.prompt_tokens()));
    u.set("completion_tokens", json::Json(usage.completion_tokens()));
    u.set("cached_tokens", json::Json(usage.cached_tokens()));
    u.set("reasoning_tokens", json::Json(usage.reasoning_tokens()));
    o.set("usage", std::move(u));
    std::vector<json::Json> idv;
    for (int32_t i : ids) idv.push_back(json::Json(i));
    o.set("token_ids", json::Json::Array(std::move(idv)));
    std::ofstream f(a.get("json-out"));
    f << json::DumpCompact(o) << "\n";
  }
  return 0;
}

}  // namespace

int client_main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    std::printf("usage: rigserve client generate|chat [options]   (--help on each)\n");
    return argc < 2 ? 2 : 0;
  }
  const std::string sub = argv[1];
  if (sub == "generate") return GenerateCmd(argc - 1, argv + 1);
  if (sub == "chat") return ChatCmd(argc - 1, argv + 1);
  std::fprintf(stderr, "rigserve client: unknown subcommand '%s' (generate, chat)\n", sub.c_str());
  return 2;
}

}  // namespace rs::cli
