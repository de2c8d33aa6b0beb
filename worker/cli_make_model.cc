// rigserve make-model: writes a random-weight Qwen3.5 GGUF of a preset (worker/make_model.h).
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

#include "absl/strings/numbers.h"
#include "worker/args.h"
#include "worker/cli.h"
#include "worker/make_model.h"
#include "worker/model_presets.h"

namespace rs::cli {
namespace {

void PrintSummary(FILE* f, const ModelPlan& plan) {
  std::map<std::string, std::pair<int, uint64_t>> by_type;
  int64_t params = 0;
  for (const auto& t : plan.tensors) {
    auto& e = by_type[type_name(t.type)];
    ++e.first;
    e.second += t.n_bytes();
    params += t.n_elements();
  }
  std::fprintf(f, "%s/%s %s: %zu tensors, %.3f B parameters, %.3f GB of weights (",
               arch_name(plan.preset.arch), plan.preset.name.c_str(), QuantSchemeName(plan.quant),
               plan.tensors.size(), static_cast<double>(params) / 1e9,
               static_cast<double>(plan.data_bytes()) / 1e9);
  bool first = true;
  for (const auto& [name, e] : by_type) {
    std::fprintf(f, "%s%s x%d %.1f MB", first ? "" : ", ", name.c_str(), e.first,
                 static_cast<double>(e.second) / 1e6);
    first = false;
  }
  std::fprintf(f, ")\n");
}

int ListPresets(QuantScheme q) {
  std::printf("%-10s %-10s %6s %6s %8s %10s  %s\n", "preset", "arch", "layers", "H", "vocab",
              "GB", "description");
  for (const auto& p : AllPresets()) {
    absl::StatusOr<ModelPlan> plan = BuildModelPlan(p, q);
    if (!plan.ok()) {
      std::fprintf(stderr, "rigserve make-model: %s\n", plan.status().ToString().c_str());
      return 1;
    }
    std::printf("%-10s %-10s %6" PRId64 " %6" PRId64 " %8" PRId64 " %10.3f  %s\n",
                p.name.c_str(), arch_name(p.arch), p.n_layer, p.n_embd, p.n_vocab,
                static_cast<double>(plan->data_bytes()) / 1e9, p.description.c_str());
  }
  std::printf("(GB = weight bytes at %s)\n", QuantSchemeName(q));
  return 0;
}

}  // namespace

int make_model_main(int argc, char** argv) {
  Args args("make-model",
            "Writes a random-weight Qwen3.5 model in the real GGUF layout (every metadata key and\n"
            "tensor of spec/qwen35.md section 6, a small byte-level BPE vocabulary with the real\n"
            "special tokens, a ChatML chat template). Deterministic for a given --seed.");
  args.opt("arch", "qwen35 | qwen35moe (may be left out when the preset implies it)")
      .opt("preset", "tiny | mini | bench-moe | 27b | 35b-a3b | 122b-a10b | 397b-a17b")
      .opt("out", "output file (.gguf)")
      .opt("seed", "random seed", "0")
      .opt("quant", QuantSchemeList(), "Q8_0")
      .opt("fill", "exact | blocks | auto: how big tensors are filled (see make_model.h; auto = "
           "exact up to 64 MiB of weights)", "auto")
      .flag("list-presets", "print the presets with their sizes at --quant and exit")
      .flag("quiet", "no progress or summary on stderr");
  if (!args.parse(argc, argv)) return parse_exit(args);

  absl::StatusOr<QuantScheme> quant = ParseQuantScheme(args.get("quant"));
  if (!quant.ok()) return args.usage_error(std::string(quant.status().message()));
  if (args.has("list-presets")) return ListPresets(*quant);

  if (!args.has("preset")) return args.usage_error("--preset is required");
  if (!args.has("out")) return args.usage_error("--out is required");
  uint64_t seed = 0;
  if (!absl::SimpleAtoi(args.get("seed"), &seed))
    return args.usage_error("--seed must be a non-negative integer, got '" + args.get("seed") + "'");

  absl::StatusOr<ModelPreset> preset;
  if (args.has("arch")) {
    std::optional<ModelArch> arch = arch_from_name(args.get("arch"));
    if (!arch) return args.usage_error("--arch must be qwen35 or qwen35moe, got '" +
                                       args.get("arch") + "'");
    preset = FindPreset(*arch, args.get("preset"));
  } else {
    preset = ResolvePresetName(args.get("preset"));
  }
  if (!preset.ok()) return args.usage_error(std::string(preset.status().message()));

  absl::StatusOr<ModelPlan> plan = BuildModelPlan(*preset, *quant);
  if (!plan.ok()) {
    std::fprintf(stderr, "rigserve make-model: %s\n", plan.status().ToString().c_str());
    return 1;
  }
  const bool quiet = args.has("quiet");
  if (!quiet) PrintSummary(stderr, *plan);
  WriteOptions opts;
  opts.seed = seed;
  const std::string fill = args.get("fill");
  if (fill == "exact") {
    opts.fill = FillMode::kExact;
  } else if (fill == "blocks") {
    opts.fill = FillMode::kBlocks;
  } else if (fill != "auto") {
    return args.usage_error("--fill must be exact, blocks or auto, got '" + fill + "'");
  }
  if (!quiet)
    std::fprintf(stderr, "fill: %s\n",
                 ResolveFillMode(*plan, opts.fill) == FillMode::kExact
                     ? "exact (every row drawn and quantised)"
                     : "blocks (tensors >= 256 KiB from pools of quantised random blocks)");
  opts.progress = !quiet && plan->data_bytes() >= (64ull << 20);
  absl::Status s = WriteModelFile(*plan, args.get("out"), opts);
  if (!s.ok()) {
    std::fprintf(stderr, "rigserve make-model: %s\n", s.ToString().c_str());
    return 1;
  }
  if (!quiet) std::fprintf(stderr, "wrote %s\n", args.get("out").c_str());
  return 0;
}

}  // namespace rs::cli
