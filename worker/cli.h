// Worker-side subcommands of the rigserve binary. Each takes argv starting at the subcommand.
#pragma once

namespace rs::cli {
int inspect_main(int argc, char** argv);      // worker/cli_inspect.cc
int make_model_main(int argc, char** argv);   // worker/cli_make_model.cc
int generate_main(int argc, char** argv);     // worker/cli_generate.cc
int score_main(int argc, char** argv);        // worker/cli_generate.cc
}  // namespace rs::cli
