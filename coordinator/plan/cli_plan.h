// `rigserve plan`: prints the placement plan (coordinator/plan/planner.h) for a model file or a
// --synthetic table and an inventory given on the command line. The helpers below are what the
// command uses to build the planner's input; tests use them too.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/plan/planner.h"

namespace rs::plan {

struct ModelInput {
  std::vector<TensorDesc> tensors;
  ModelShape shape;
};

// "PRESET:QUANT" (worker/synthetic.h): make-model's tensor table; no weights are allocated.
absl::StatusOr<ModelInput> ModelFromSynthetic(std::string_view spec);
// A GGUF file's tensor table and hyperparameters (the CLI only: the coordinator itself learns
// the model from a worker's Describe).
absl::StatusOr<ModelInput> ModelFromFile(const std::string& path);

// The inventory of --gpus / --host-ram / --workers:
//   gpus      "24GiB,24GiB,24GiB": one worker per comma item; "24GiB+24GiB" gives one worker
//             two GPUs. The GPUs are numbered cuda:0, cuda:1, ... across the workers (one
//             host, as `serve --local-workers` runs them). Empty: CPU workers.
//   host_ram  one size: the host's RAM, shared equally by all workers (one host); or one size
//             per worker, comma-separated. Empty: 0 (GPU workers), required for CPU workers.
//   cpu_workers  number of CPU workers when gpus is empty.
absl::StatusOr<std::vector<WorkerInventory>> InventoryFromFlags(std::string_view gpus,
                                                                std::string_view host_ram,
                                                                int cpu_workers);

}  // namespace rs::plan

namespace rs::cli {
int plan_main(int argc, char** argv);
}  // namespace rs::cli
