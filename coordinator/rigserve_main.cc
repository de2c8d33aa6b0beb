// rigserve: one binary, subcommands. Each subcommand lives with the room that owns it.
#include <cstdio>
#include <cstring>
#include <string>

#include "coordinator/plan/cli_plan.h"
#include "coordinator/text/cli.h"
#include "coordinator/text/cli_render.h"
#include "worker/cli.h"
#ifdef RIGSERVE_HAVE_DAEMON
#include "coordinator/daemon.h"
#endif

namespace {

struct Command {
  const char* name;
  int (*fn)(int, char**);
  const char* summary;
};

const Command kCommands[] = {
    {"inspect", rs::cli::inspect_main, "print a GGUF file's metadata and tensor table"},
    {"make-model", rs::cli::make_model_main, "write a random-weight Qwen3.5 GGUF (presets)"},
    {"generate", rs::cli::generate_main, "greedy/sampled generation from prompt ids"},
    {"score", rs::cli::score_main, "logits of every input position in one forward pass"},
    {"render-chat", rs::cli::render_chat_main, "render messages through the chat template"},
    {"tokenize", rs::cli::tokenize_main, "text on stdin -> token ids (GGUF or tokenizer.json)"},
    {"detokenize", rs::cli::detokenize_main, "token ids on stdin -> text"},
    {"plan", rs::cli::plan_main, "placement plan: layers and experts per worker and device"},
#ifdef RIGSERVE_HAVE_DAEMON
    {"serve", rs::cli::serve_main, "run the daemon: coordinator + one in-process worker"},
    {"coordinator", rs::cli::coordinator_main, "run the coordinator (public gRPC API)"},
    {"worker", rs::cli::worker_main, "run a worker process (owns a model shard)"},
    {"client", rs::cli::client_main, "talk to a daemon: client generate | client chat"},
    {"bench", rs::cli::bench_main, "load generator: N concurrent streams against a daemon (TTFT, ITL, tok/s)"},
#endif
};

void usage(FILE* f) {
  std::fprintf(f,
               "usage: rigserve COMMAND [options]   (rigserve COMMAND --help for details)\n\n"
               "rigserve serves the Qwen3.5 model family from GGUF files.\n\ncommands:\n");
  for (const auto& c : kCommands) std::fprintf(f, "  %-12s %s\n", c.name, c.summary);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  std::string cmd = argv[1];
  if (cmd == "--help" || cmd == "-h" || cmd == "help") {
    usage(stdout);
    return 0;
  }
  for (const auto& c : kCommands) {
    if (cmd == c.name) return c.fn(argc - 1, argv + 1);
  }
  std::fprintf(stderr, "rigserve: unknown command '%s'\n\n", cmd.c_str());
  usage(stderr);
  return 2;
}
