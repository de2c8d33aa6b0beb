// rigserve render-chat: renders a chat through a chat template and prints the prompt exactly
// (no newline added), so tests can compare it byte for byte with python3-jinja2.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include "coordinator/text/chat_template.h"
#include "coordinator/text/cli_render.h"
#include "worker/args.h"
#include "worker/default_chat_template.h"
#include "worker/gguf.h"

namespace rs::cli {
namespace {

bool ReadFile(const std::string& path, std::string* out) {
  if (path == "-") {
    std::ostringstream ss;
    ss << std::cin.rdbuf();
    *out = ss.str();
    return true;
  }
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  std::ostringstream ss;
  ss << f.rdbuf();
  *out = ss.str();
  return true;
}

}  // namespace

int render_chat_main(int argc, char** argv) {
  Args args("render-chat",
            "Renders OpenAI-format messages through a chat template (the GGUF's "
            "tokenizer.chat_template, a template file, or the built-in Qwen3.5-style one) and "
            "prints the prompt exactly, without a trailing newline.");
  args.opt("model", "GGUF file whose tokenizer.chat_template is used")
      .opt("template", "Jinja template file")
      .flag("builtin", "use the built-in Qwen3.5-style template")
      .opt("messages", "JSON array of messages ('-' = stdin)")
      .opt("tools", "JSON array of tools (OpenAI format)")
      .opt("kwargs", "JSON object of extra template variables, e.g. {\"enable_thinking\":false}")
      .flag("no-generation-prompt", "do not append the assistant generation prompt")
      .flag("builtin-template", "print the built-in template and exit");
  if (!args.parse(argc, argv)) return parse_exit(args);
  if (args.has("builtin-template")) {
    std::fwrite(kDefaultChatTemplate, 1, std::char_traits<char>::length(kDefaultChatTemplate), stdout);
    return 0;
  }
  int sources = args.has("model") + args.has("template") + args.has("builtin");
  if (sources != 1) return args.usage_error("give exactly one of --model, --template, --builtin");
  if (!args.has("messages")) return args.usage_error("--messages is required");

  std::string tpl;
  if (args.has("model")) {
    auto f = gguf::File::Open(args.get("model"));
    if (!f.ok()) {
      std::fprintf(stderr, "rigserve render-chat: %s\n", std::string(f.status().message()).c_str());
      return 1;
    }
    auto s = (*f)->get_string("tokenizer.chat_template");
    if (!s.ok()) {
      std::fprintf(stderr, "rigserve render-chat: %s: %s\n", args.get("model").c_str(),
                   std::string(s.status().message()).c_str());
      return 1;
    }
    tpl = std::move(*s);
  } else if (args.has("template")) {
    if (!ReadFile(args.get("template"), &tpl)) {
      std::fprintf(stderr, "rigserve render-chat: cannot read template %s\n", args.get("template").c_str());
      return 1;
    }
  } else {
    tpl = kDefaultChatTemplate;
  }
  std::string messages, tools;
  if (!ReadFile(args.get("messages"), &messages)) {
    std::fprintf(stderr, "rigserve render-chat: cannot read messages %s\n", args.get("messages").c_str());
    return 1;
  }
  if (args.has("tools") && !ReadFile(args.get("tools"), &tools)) {
    std::fprintf(stderr, "rigserve render-chat: cannot read tools %s\n", args.get("tools").c_str());
    return 1;
  }
  auto out = chat::Render(tpl, messages, tools, !args.has("no-generation-prompt"), args.get("kwargs"));
  if (!out.ok()) {
    std::fprintf(stderr, "rigserve render-chat: %s\n", std::string(out.status().message()).c_str());
    return 1;
  }
  std::fwrite(out->data(), 1, out->size(), stdout);
  return std::fflush(stdout) == 0 ? 0 : 1;
}

}  // namespace rs::cli
