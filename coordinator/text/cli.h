// Coordinator-side (text) subcommands of the rigserve binary. Each takes argv starting at the
// subcommand.
#pragma once

namespace rs::cli {
int tokenize_main(int argc, char** argv);    // coordinator/text/cli_tokenize.cc
int detokenize_main(int argc, char** argv);  // coordinator/text/cli_tokenize.cc
}  // namespace rs::cli
