#include "coordinator/plan/cli_plan.h"

#include <cstdio>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "kernels/formats.h"
#include "worker/args.h"
#include "worker/gguf.h"
#include "worker/make_model.h"
#include "worker/model_config.h"
#include "worker/synthetic.h"

namespace rs::plan {

absl::StatusOr<ModelInput> ModelFromSynthetic(std::string_view spec) {
  absl::StatusOr<ModelPlan> mp = PlanFromSyntheticSpec(spec);
  if (!mp.ok()) return mp.status();
  ModelInput in;
  for (const auto& t : mp->tensors)
    in.tensors.push_back({t.name, type_name(t.type), t.ne, t.n_bytes()});
  const ModelPreset& p = mp->preset;
  ModelShape& m = in.shape;
  m.n_layer = p.n_layer;
  for (int64_t i = 0; i < p.n_layer; ++i) m.layer_is_attention.push_back(p.is_attention_layer(i));
  m.n_embd = p.n_embd;
  m.n_vocab = p.n_vocab;
  m.n_head = p.n_head;
  m.n_head_kv = p.n_head_kv;
  m.head_dim = p.head_dim;
  m.Hv = p.ssm_v_heads;
  m.dk = m.dv = p.ssm_head_dim;
  m.conv_dim = p.conv_dim();
  m.conv_kernel = p.conv_kernel;
  m.n_expert = p.n_expert;
  m.n_expert_used = p.n_expert_used;
  m.n_ff_exp = p.n_ff_exp;
  m.n_ff_shexp = p.n_ff_shexp;
  m.n_ff = p.n_ff;
  return in;
}

absl::StatusOr<ModelInput> ModelFromFile(const std::string& path) {
  auto f = gguf::File::Open(path);
  if (!f.ok()) return f.status();
  auto c = ReadModelConfig(**f);
  if (!c.ok()) return c.status();
  ModelInput in;
  for (const auto& t : (*f)->tensors())
    in.tensors.push_back({t.name, type_name(t.type), t.ne, t.size});
  ModelShape& m = in.shape;
  m.n_layer = c->n_layer;
  for (LayerKind k : c->layers) m.layer_is_attention.push_back(k == LayerKind::kAttention);
  m.n_embd = c->n_embd;
  m.n_vocab = c->n_vocab;
  m.n_head = c->n_head;
  m.n_head_kv = c->n_head_kv;
  m.head_dim = c->head_dim;
  m.Hv = c->Hv;
  m.dk = c->dk;
  m.dv = c->dv;
  m.conv_dim = c->conv_dim();
  m.conv_kernel = c->conv_kernel;
  m.n_expert = c->n_expert;
  m.n_expert_used = c->n_expert_used;
  m.n_ff_exp = c->n_ff_exp;
  m.n_ff_shexp = c->n_ff_shexp;
  m.n_ff = c->n_ff;
  return in;
}

absl::StatusOr<std::vector<WorkerInventory>> InventoryFromFlags(std::string_view gpus_in,
                                                                std::string_view host_ram_in,
                                                                int cpu_workers) {
  const absl::string_view gpus(gpus_in.data(), gpus_in.size());
  const absl::string_view host_ram(host_ram_in.data(), host_ram_in.size());
  std::vector<WorkerInventory> ws;
  if (!gpus.empty()) {
    int idx = 0;  // one host: the GPUs are numbered across the workers
    for (absl::string_view item : absl::StrSplit(gpus, ',')) {
      WorkerInventory w;
      for (absl::string_view g : absl::StrSplit(item, '+')) {
        auto b = ParseBytes(std::string_view(g.data(), g.size()));
        if (!b.ok()) return absl::InvalidArgumentError(absl::StrCat("--gpus: ", b.status().message()));
        w.devices.push_back({DeviceKind::kCuda, idx++, *b});
      }
      ws.push_back(std::move(w));
    }
  } else {
    if (cpu_workers <= 0)
      return absl::InvalidArgumentError(
          absl::StrCat("--workers ", cpu_workers, ": need at least one worker"));
    if (host_ram.empty())
      return absl::InvalidArgumentError("CPU workers (no --gpus) need --host-ram");
    ws.resize(cpu_workers);
    for (auto& w : ws) w.devices.push_back({DeviceKind::kCpu, 0, 0});
  }
  for (size_t i = 0; i < ws.size(); ++i) ws[i].name = absl::StrCat("w", i);
  if (!host_ram.empty()) {
    std::vector<absl::string_view> items = absl::StrSplit(host_ram, ',');
    if (items.size() == 1) {
      auto b = ParseBytes(std::string_view(items[0].data(), items[0].size()));
      if (!b.ok()) return absl::InvalidArgumentError(absl::StrCat("--host-ram: ", b.status().message()));
      for (auto& w : ws) w.host_ram_bytes = *b / ws.size();
    } else if (items.size() == ws.size()) {
      for (size_t i = 0; i < ws.size(); ++i) {
        auto b = ParseBytes(std::string_view(items[i].data(), items[i].size()));
        if (!b.ok()) return absl::InvalidArgumentError(absl::StrCat("--host-ram: ", b.status().message()));
        ws[i].host_ram_bytes = *b;
      }
    } else {
      return absl::InvalidArgumentError(absl::StrCat("--host-ram has ", items.size(),
                                                     " sizes for ", ws.size(),
                                                     " workers (give one, or one per worker)"));
    }
  }
  return ws;
}

}  // namespace rs::plan

namespace rs::cli {

int plan_main(int argc, char** argv) {
  Args args("plan",
            "Prints the placement plan: per worker its contiguous layer range (balanced by bytes\n"
            "of the non-expert part and its state), per layer per routed expert the worker and\n"
            "device holding it (GPU first, host RAM run by the worker's CPU when VRAM is short),\n"
            "memory per device by category, and what spilled. A plan that cannot fit is refused\n"
            "with the bytes needed and available per device (exit status 1).\n\n"
            "Sizes accept B, KiB, MiB, GiB, TiB (binary), KB, MB, GB, TB (decimal); K/M/G/T are\n"
            "binary. --gpus 24GiB,24GiB,24GiB is three workers with one GPU each; 24GiB+24GiB\n"
            "is one worker with two GPUs. --host-ram is one size (the host's RAM, shared equally\n"
            "by the workers) or one size per worker. Without --gpus: --workers N CPU workers.\n\n"
            "--json prints one document: model, context, slots, kv_type, kv_bytes_per_token,\n"
            "deltanet_state_bytes_per_sequence, fits_on_gpus, experts_spilled, spilled_bytes,\n"
            "workers [{name, layer_begin, layer_end (exclusive), embedding, lm_head, stage_cost,\n"
            "experts_on_gpu, experts_on_cpu, pools [{device (-1 = host), label, primary,\n"
            "capacity, weights, experts, kv, state, workspace, margin, total, n_experts}]}],\n"
            "expert_bytes_per_layer, experts [{layer, worker [E], device [E]}], skipped_tensors.\n"
            "Exit status: 0 plan made, 1 refused or unreadable model, 2 usage error.");
  args.opt("model", "GGUF file to plan for")
      .opt("synthetic", "PRESET:QUANT instead of a file, e.g. 122b-a10b:IQ4_XS")
      .opt("gpus", "GPU memory per worker, comma-separated (24GiB,24GiB)")
      .opt("host-ram", "host RAM: one size (shared) or one per worker")
      .opt("workers", "number of CPU workers (without --gpus)", "1")
      .opt("context", "context length per sequence (tokens)", "4096")
      .opt("slots", "sequence-state slots (concurrent sequences)", "1")
      .opt("kv-type", "KV cache type: f16 or q8_0", "f16")
      .opt("batch-tokens", "tokens of a micro-batch (workspace estimate)", "512")
      .opt("margin", "safety margin per device, fraction of its memory", "0.03")
      .opt("layers", "layer ranges per worker, e.g. 0-15,16-31,32-47")
      .opt("experts", "expert pins LAYERS:EXPERTS=WORKER[/cpu|/gpu|/cuda:N];... e.g. *:0-63=1")
      .flag("json", "print the plan as JSON");
  if (!args.parse(argc, argv)) return args.help_requested() ? 0 : 2;
  auto usage = [](const std::string& msg) {
    std::fprintf(stderr, "rigserve plan: %s\n", msg.c_str());
    return 2;
  };
  if (args.has("model") == args.has("synthetic"))
    return usage("give exactly one of --model FILE and --synthetic PRESET:QUANT");

  plan::PlanRequest req;
  int64_t workers = 0;
  double margin = 0;
  if (!absl::SimpleAtoi(args.get("context"), &req.context) || req.context <= 0)
    return usage("--context must be a positive integer");
  if (!absl::SimpleAtoi(args.get("slots"), &req.slots) || req.slots <= 0)
    return usage("--slots must be a positive integer");
  if (!absl::SimpleAtoi(args.get("batch-tokens"), &req.batch_tokens) || req.batch_tokens <= 0)
    return usage("--batch-tokens must be a positive integer");
  if (!absl::SimpleAtoi(args.get("workers"), &workers) || workers <= 0 || workers > 1024)
    return usage("--workers must be a positive integer");
  if (!absl::SimpleAtod(args.get("margin"), &margin) || margin < 0 || margin >= 1)
    return usage("--margin must be a fraction in [0, 1)");
  req.margin_fraction = margin;
  auto kv = plan::ParseKvType(args.get("kv-type"));
  if (!kv.ok()) return usage(std::string(kv.status().message()));
  req.kv_type = *kv;
  auto inv = plan::InventoryFromFlags(args.get("gpus"), args.get("host-ram"),
                                      static_cast<int>(workers));
  if (!inv.ok()) return usage(std::string(inv.status().message()));
  req.workers = std::move(*inv);
  if (args.has("layers")) {
    auto r = plan::ParseLayerRanges(args.get("layers"));
    if (!r.ok()) return usage(std::string(r.status().message()));
    req.layer_ranges = std::move(*r);
  }
  if (args.has("experts")) {
    auto pins = plan::ParseExpertPins(args.get("experts"));
    if (!pins.ok()) return usage(std::string(pins.status().message()));
    req.expert_pins = std::move(*pins);
  }

  auto model = args.has("model") ? plan::ModelFromFile(args.get("model"))
                                 : plan::ModelFromSynthetic(args.get("synthetic"));
  if (!model.ok()) {
    std::fprintf(stderr, "rigserve plan: %s\n", std::string(model.status().message()).c_str());
    return 1;
  }
  req.tensors = std::move(model->tensors);
  req.shape = std::move(model->shape);
  auto p = plan::MakePlan(req);
  if (!p.ok()) {
    std::fprintf(stderr, "rigserve plan: %s\n", std::string(p.status().message()).c_str());
    return 1;
  }
  const std::string out = args.has("json") ? plan::PlanJson(*p) : plan::PlanTable(*p);
  std::fwrite(out.data(), 1, out.size(), stdout);
  return 0;
}

}  // namespace rs::cli
