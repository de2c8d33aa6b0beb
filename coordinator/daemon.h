// The daemon's subcommands: serve (coordinator + one in-process worker), coordinator, worker,
// client. Declared here, registered in rigserve_main.cc.
#pragma once

namespace rs::cli {
int serve_main(int argc, char** argv);
int coordinator_main(int argc, char** argv);
int worker_main(int argc, char** argv);
int client_main(int argc, char** argv);
int bench_main(int argc, char** argv);
}  // namespace rs::cli
