// Coordinator-side text subcommands of the rigserve binary (chat-template rendering).
#pragma once

namespace rs::cli {
// rigserve render-chat (--model FILE | --template FILE | --builtin) --messages FILE.json
//   [--tools FILE.json] [--kwargs JSON] [--no-generation-prompt]; --builtin-template prints the
//   built-in template. Prints exactly the rendered prompt.          (coordinator/text/cli_render_chat.cc)
int render_chat_main(int argc, char** argv);
}  // namespace rs::cli
