// Placement planner (coordinator/plan/planner.h): the three required outcomes on
// --synthetic tables, state sizes against spec §5, determinism, refusals with numbers,
// overrides, balance, and the `rigserve plan` command.
#include "coordinator/plan/planner.h"

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include <cstdio>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "coordinator/plan/cli_plan.h"
#include "worker/make_model.h"
#include "worker/synthetic.h"

namespace rs::plan {
namespace {

constexpr uint64_t GiB = 1ull << 30;

// Tables are built once per spec (the real shapes' vocabularies take a moment).
const ModelInput& Model(const std::string& spec) {
  static auto* cache = new std::map<std::string, ModelInput>();
  auto it = cache->find(spec);
  if (it == cache->end()) {
    auto m = ModelFromSynthetic(spec);
    EXPECT_TRUE(m.ok()) << m.status();
    it = cache->emplace(spec, m.ok() ? *m : ModelInput{}).first;
  }
  return it->second;
}

PlanRequest Request(const std::string& spec, const std::string& gpus, const std::string& host,
                    int64_t context, int cpu_workers = 1) {
  PlanRequest r;
  const ModelInput& m = Model(spec);
  r.tensors = m.tensors;
  r.shape = m.shape;
  auto inv = InventoryFromFlags(gpus, host, cpu_workers);
  EXPECT_TRUE(inv.ok()) << inv.status();
  if (inv.ok()) r.workers = *inv;
  r.context = context;
  return r;
}

// Every pool within its capacity; experts map complete and consistent with the pools' counts.
void CheckConsistent(const Plan& p) {
  std::map<std::pair<int, int>, int64_t> count;
  for (const auto& layer : p.experts)
    for (const auto& e : layer) {
      ASSERT_GE(e.worker, 0);
      ++count[{e.worker, e.device}];
    }
  int64_t next = 0;
  for (size_t w = 0; w < p.workers.size(); ++w) {
    const WorkerPlan& wp = p.workers[w];
    EXPECT_EQ(wp.layer_begin, next);
    EXPECT_GT(wp.layer_end, wp.layer_begin);
    next = wp.layer_end;
    for (const auto& d : wp.devices) {
      EXPECT_LE(d.use.total(), d.capacity) << wp.name << " " << d.label;
      EXPECT_EQ(d.n_experts, (count[{static_cast<int>(w), d.device}])) << wp.name << " " << d.label;
    }
  }
  EXPECT_EQ(next, p.shape.n_layer);
  EXPECT_TRUE(p.workers.front().embedding);
  EXPECT_TRUE(p.workers.back().lm_head);
}

TEST(Planner, StateSizesEqualSpecSection5) {
  struct Row {
    const char* spec;
    uint64_t kv_per_token, conv_total, s_total, recurrent_total;
  };
  const Row rows[] = {
      {"27b:Q4_K_M", 65536, 5898240, 150994944, 156893184},
      {"35b-a3b:Q4_K_M", 20480, 2949120, 62914560, 65863680},
      {"122b-a10b:Q4_K_M", 24576, 5308416, 150994944, 156303360},
      {"397b-a17b:Q4_K_M", 30720, 6635520, 188743680, 195379200},
  };
  for (const Row& r : rows) {
    const ModelShape& m = Model(r.spec).shape;
    EXPECT_EQ(KvBytesPerToken(m, KvType::kF16), r.kv_per_token) << r.spec;
    EXPECT_EQ(ConvStateBytesPerLayer(m) * m.n_deltanet_layers(), r.conv_total) << r.spec;
    EXPECT_EQ(RecurrentStateBytesPerLayer(m) * m.n_deltanet_layers(), r.s_total) << r.spec;
    EXPECT_EQ(DeltaNetStateBytesPerSequence(m), r.recurrent_total) << r.spec;
  }
  // q8_0: x34/64 of f16 (27B at 262,144 tokens = 9,126,805,504 B).
  EXPECT_EQ(KvBytesPerToken(Model("27b:Q4_K_M").shape, KvType::kQ8_0) * 262144, 9126805504ull);
  // ctx 4,096 total for the 35B-A3B: 149,749,760 B (spec §5 second table).
  const ModelShape& m35 = Model("35b-a3b:Q4_K_M").shape;
  EXPECT_EQ(KvBytesPerToken(m35, KvType::kF16) * 4096 + DeltaNetStateBytesPerSequence(m35),
            149749760ull);
}

TEST(Planner, PlanReportsTheStateItReserves) {
  PlanRequest r = Request("35b-a3b:Q4_K_M", "24GiB", "", 32768);
  r.slots = 2;
  auto p = MakePlan(r);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->kv_bytes_per_token, 20480u);
  EXPECT_EQ(p->deltanet_state_bytes_per_sequence, 65863680u);
  const DevicePlan& d = p->workers[0].devices[0];
  EXPECT_EQ(d.use.kv, 20480ull * 32768 * 2);
  EXPECT_EQ(d.use.state, 65863680ull * 2);
}

TEST(Planner, ShapeFromTensorTableMatchesPresets) {
  for (const char* spec : {"27b:Q4_K_M", "35b-a3b:Q4_K_M", "122b-a10b:IQ4_XS", "moe-tiny:Q8_0",
                           "dense-tiny:Q8_0", "qwen35moe-mini:Q4_K_M"}) {
    const ModelInput& in = Model(spec);
    auto s = ShapeFromTensorTable(in.tensors, in.shape.n_expert_used);
    ASSERT_TRUE(s.ok()) << spec << ": " << s.status();
    const ModelShape& a = *s;
    const ModelShape& b = in.shape;
    EXPECT_EQ(a.n_layer, b.n_layer) << spec;
    EXPECT_EQ(a.layer_is_attention, b.layer_is_attention) << spec;
    EXPECT_EQ(a.n_embd, b.n_embd) << spec;
    EXPECT_EQ(a.n_vocab, b.n_vocab) << spec;
    EXPECT_EQ(a.n_head, b.n_head) << spec;
    EXPECT_EQ(a.n_head_kv, b.n_head_kv) << spec;
    EXPECT_EQ(a.head_dim, b.head_dim) << spec;
    EXPECT_EQ(a.Hv, b.Hv) << spec;
    EXPECT_EQ(a.dk, b.dk) << spec;
    EXPECT_EQ(a.dv, b.dv) << spec;
    EXPECT_EQ(a.conv_dim, b.conv_dim) << spec;
    EXPECT_EQ(a.conv_kernel, b.conv_kernel) << spec;
    EXPECT_EQ(a.n_expert, b.n_expert) << spec;
    EXPECT_EQ(a.n_ff_exp, b.n_ff_exp) << spec;
    EXPECT_EQ(a.n_ff_shexp, b.n_ff_shexp) << spec;
    EXPECT_EQ(a.n_ff, b.n_ff) << spec;
  }
  std::vector<TensorDesc> bad = {{"token_embd.weight", "F32", {8, 16}, 512},
                                 {"blk.0.attn_norm.weight", "F32", {8}, 32}};
  auto s = ShapeFromTensorTable(bad, 0);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("blk.0.attn_k_norm.weight is missing"), std::string::npos)
      << s.status();
}

// Required outcome 1: 122B-A10B IQ4_XS on 3 x 24 GiB fits on the GPUs alone at 8K context.
TEST(Planner, Outcome122bIq4xsOn3x24GiBFitsOnGpus) {
  auto p = MakePlan(Request("122b-a10b:IQ4_XS", "24GiB,24GiB,24GiB", "", 8192));
  ASSERT_TRUE(p.ok()) << p.status();
  CheckConsistent(*p);
  EXPECT_TRUE(p->fits_on_gpus());
  EXPECT_EQ(p->experts_spilled, 0);
  for (const auto& wp : p->workers) {
    EXPECT_EQ(wp.experts_on_cpu, 0) << wp.name;
    EXPECT_GT(wp.experts_on_gpu, 0) << wp.name;
  }
  // Every layer's experts are spread over all three workers.
  for (size_t l = 0; l < p->experts.size(); ++l) {
    std::vector<int> per(3, 0);
    for (const auto& e : p->experts[l]) ++per[e.worker];
    for (int w = 0; w < 3; ++w) EXPECT_GT(per[w], 50) << "layer " << l << " worker " << w;
  }
  EXPECT_NE(PlanTable(*p).find("fits on GPUs alone"), std::string::npos);
  // Each worker's workspace holds the group's dispatch buffers: 512 tokens x ((3 + 1) x (H + 2k)
  // + 2kH) floats (H 3072, k 8, 3 workers: 126 MB), on top of the activations (and the first
  // stage has no logits).
  const ModelShape& m = p->shape;
  EXPECT_EQ(DispatchWorkspaceBytes(m, 512, 3), 512ull * (4 * (3072 + 16) + 2 * 8 * 3072) * 4);
  EXPECT_EQ(DispatchWorkspaceBytes(m, 512, 1), 0u);
  EXPECT_EQ(DispatchWorkspaceBytes(m, 512, 20), 512ull * (9 * (3072 + 16) + 2 * 8 * 3072) * 4);
  EXPECT_EQ(p->workers[0].devices[0].use.workspace,
            WorkspaceBytes(m, 512, 1, false) + DispatchWorkspaceBytes(m, 512, 3) +
                ExpertWorkspaceBytes(m, 512));
}

// Required outcome 2: 122B-A10B Q4_K_M on 2 x 24 GiB + 96 GiB host RAM spills experts.
TEST(Planner, Outcome122bQ4kmOn2x24GiBSpillsToHostRam) {
  auto p = MakePlan(Request("122b-a10b:Q4_K_M", "24GiB,24GiB", "96GiB", 4096));
  ASSERT_TRUE(p.ok()) << p.status();
  CheckConsistent(*p);
  EXPECT_FALSE(p->fits_on_gpus());
  EXPECT_GT(p->experts_spilled, 0);
  EXPECT_GT(p->spilled_bytes, 10 * GiB);
  int64_t on_gpu = 0;
  for (const auto& wp : p->workers) {
    EXPECT_GT(wp.experts_on_cpu, 0) << wp.name;  // spill spread over both hosts
    EXPECT_GT(wp.experts_on_gpu, 0) << wp.name;
    on_gpu += wp.experts_on_gpu;
    EXPECT_EQ(wp.devices.back().device, -1);
    EXPECT_EQ(wp.devices.back().capacity, 48 * GiB);  // 96 GiB shared by two workers
    // GPU first: the GPU is full to within one expert of its capacity.
    const DevicePlan& g = wp.devices.front();
    EXPECT_LT(g.capacity - g.use.total(), 2 * p->expert_bytes[0]) << wp.name;
  }
  EXPECT_EQ(on_gpu + p->experts_spilled, 48 * 256);
  // The spilled experts are the high-numbered ones of every layer (expert-major fill).
  for (const auto& layer : p->experts) {
    EXPECT_GE(layer.front().device, 0);
    EXPECT_EQ(layer.back().device, -1);
  }
  EXPECT_NE(PlanTable(*p).find("spilled to host RAM"), std::string::npos);
  // What LoadRequest carries to the workers: each expert's owner and device, matching the plan
  // (a GPU worker keeps its device experts on the GPU and runs the -1 ones on its CPU).
  const auto owners = ExpertOwners(*p);
  const auto devices = ExpertDevices(*p);
  ASSERT_EQ(devices.size(), p->experts.size());
  int64_t host = 0;
  for (size_t l = 0; l < devices.size(); ++l) {
    ASSERT_EQ(devices[l].size(), p->experts[l].size());
    for (size_t e = 0; e < devices[l].size(); ++e) {
      EXPECT_EQ(devices[l][e], p->experts[l][e].device);
      EXPECT_EQ(owners[l][e], p->experts[l][e].worker);
      host += devices[l][e] < 0;
    }
  }
  EXPECT_EQ(host, p->experts_spilled);
}

// Required outcome 3: 35B-A3B Q4_K_M on 1 x 24 GiB at 32K context.
TEST(Planner, Outcome35bQ4kmOn1x24GiBFitsAt32K) {
  auto p = MakePlan(Request("35b-a3b:Q4_K_M", "24GiB", "", 32768));
  ASSERT_TRUE(p.ok()) << p.status();
  CheckConsistent(*p);
  EXPECT_TRUE(p->fits_on_gpus());
  ASSERT_EQ(p->workers.size(), 1u);
  EXPECT_EQ(p->workers[0].layer_begin, 0);
  EXPECT_EQ(p->workers[0].layer_end, 40);
  EXPECT_EQ(p->workers[0].experts_on_gpu, 40 * 256);
}

TEST(Planner, Deterministic) {
  const PlanRequest r = Request("122b-a10b:Q4_K_M", "24GiB,24GiB", "96GiB", 4096);
  auto a = MakePlan(r);
  auto b = MakePlan(r);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(PlanJson(*a), PlanJson(*b));
  EXPECT_EQ(PlanTable(*a), PlanTable(*b));
}

TEST(Planner, RefusesExpertsThatFitNowhereWithNumbers) {
  auto p = MakePlan(Request("122b-a10b:Q4_K_M", "24GiB,24GiB", "", 4096));
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), absl::StatusCode::kResourceExhausted);
  const std::string msg(p.status().message());
  EXPECT_NE(msg.find("routed experts do not fit"), std::string::npos) << msg;
  EXPECT_NE(msg.find("of 12288 experts"), std::string::npos) << msg;
  EXPECT_NE(msg.find("w0 cuda:0"), std::string::npos) << msg;
  EXPECT_NE(msg.find("of 24.00 GiB used"), std::string::npos) << msg;
  EXPECT_NE(msg.find("--host-ram"), std::string::npos) << msg;
}

TEST(Planner, RefusesLayersThatDoNotFitWithNumbers) {
  // The dense 27B at Q8_0 (about 27 GiB) on one 16 GiB GPU.
  auto p = MakePlan(Request("27b:Q8_0", "16GiB", "", 4096));
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), absl::StatusCode::kResourceExhausted);
  const std::string msg(p.status().message());
  EXPECT_NE(msg.find("w0 cuda:0 needs"), std::string::npos) << msg;
  EXPECT_NE(msg.find("but has 16.00 GiB = 17179869184 B"), std::string::npos) << msg;
  EXPECT_NE(msg.find("weights "), std::string::npos) << msg;
  EXPECT_NE(msg.find("KV 256.0 MiB"), std::string::npos) << msg;  // 65,536 B x 4096
  EXPECT_NE(msg.find("short by"), std::string::npos) << msg;
  // A long context is refused on the KV cache: 35B-A3B at 262,144 x 4 slots (20 GiB of KV).
  PlanRequest r = Request("35b-a3b:Q4_K_M", "24GiB", "", 262144);
  r.slots = 4;
  auto q = MakePlan(r);
  ASSERT_FALSE(q.ok());
  EXPECT_NE(q.status().message().find("KV 20.00 GiB"), std::string::npos) << q.status();
}

TEST(Planner, LayerRangeOverrideHonoured) {
  PlanRequest r = Request("122b-a10b:IQ4_XS", "24GiB,24GiB,24GiB", "", 8192);
  auto ranges = ParseLayerRanges("0-15,16-31,32-47");
  ASSERT_TRUE(ranges.ok());
  r.layer_ranges = *ranges;
  auto p = MakePlan(r);
  ASSERT_TRUE(p.ok()) << p.status();
  CheckConsistent(*p);
  EXPECT_EQ(p->workers[0].layer_end, 16);
  EXPECT_EQ(p->workers[1].layer_begin, 16);
  EXPECT_EQ(p->workers[1].layer_end, 32);
  EXPECT_EQ(p->workers[2].layer_end, 48);
  // An uneven split is honoured too.
  r.layer_ranges = *ParseLayerRanges("0-9,10-39,40-47");
  p = MakePlan(r);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->workers[1].layer_begin, 10);
  EXPECT_EQ(p->workers[1].layer_end, 40);
  // Gaps, overlaps, wrong counts and short coverage are refused.
  for (const char* bad : {"0-15,17-31,32-47", "0-16,16-31,32-47", "0-23,24-47", "0-15,16-31,32-46"}) {
    r.layer_ranges = *ParseLayerRanges(bad);
    auto q = MakePlan(r);
    EXPECT_FALSE(q.ok()) << bad;
    EXPECT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_FALSE(ParseLayerRanges("0-15,x").ok());
  EXPECT_FALSE(ParseLayerRanges("15-0").ok());
}

TEST(Planner, ExpertPinsHonoured) {
  PlanRequest r = Request("122b-a10b:Q4_K_M", "24GiB,24GiB", "96GiB", 4096);
  auto pins = ParseExpertPins("*:0-63=1; 5:200-255=0/cpu");
  ASSERT_TRUE(pins.ok()) << pins.status();
  r.expert_pins = *pins;
  auto p = MakePlan(r);
  ASSERT_TRUE(p.ok()) << p.status();
  CheckConsistent(*p);
  for (size_t l = 0; l < p->experts.size(); ++l)
    for (int e = 0; e < 64; ++e) {
      EXPECT_EQ(p->experts[l][e].worker, 1) << l << " " << e;
      EXPECT_EQ(p->experts[l][e].device, 0) << l << " " << e;  // GPU first within the worker
    }
  for (int e = 200; e < 256; ++e) {
    EXPECT_EQ(p->experts[5][e].worker, 0);
    EXPECT_EQ(p->experts[5][e].device, -1);
  }
  // A pin that cannot be honoured is refused, naming the worker and the room left.
  r.expert_pins = *ParseExpertPins("*:*=0/gpu");
  auto q = MakePlan(r);
  ASSERT_FALSE(q.ok());
  EXPECT_NE(q.status().message().find("does not fit on worker w0"), std::string::npos)
      << q.status();
  r.expert_pins = *ParseExpertPins("0:0=5");
  EXPECT_FALSE(MakePlan(r).ok());
  r.expert_pins = *ParseExpertPins("0:300=0");
  EXPECT_FALSE(MakePlan(r).ok());
  EXPECT_FALSE(ParseExpertPins("0:0").ok());
  EXPECT_FALSE(ParseExpertPins("0:0=1/tpu").ok());
}

TEST(Planner, LayersBalancedByBytes) {
  for (const char* gpus : {"24GiB,24GiB,24GiB", "24GiB,24GiB,24GiB,24GiB"}) {
    auto p = MakePlan(Request("122b-a10b:IQ4_XS", gpus, "", 8192));
    ASSERT_TRUE(p.ok()) << p.status();
    uint64_t lo = UINT64_MAX, hi = 0;
    for (const auto& wp : p->workers) {
      lo = std::min(lo, wp.stage_cost);
      hi = std::max(hi, wp.stage_cost);
    }
    // Within one layer's worth: an attention layer plus its KV is under 6% of a stage here.
    EXPECT_LT(static_cast<double>(hi - lo) / hi, 0.08) << gpus << "\n" << PlanTable(*p);
  }
  // A worker with twice the memory gets about twice the bytes.
  auto p = MakePlan(Request("122b-a10b:IQ4_XS", "48GiB,24GiB", "", 8192));
  ASSERT_TRUE(p.ok()) << p.status();
  const double ratio = static_cast<double>(p->workers[0].stage_cost) / p->workers[1].stage_cost;
  EXPECT_GT(ratio, 1.75);
  EXPECT_LT(ratio, 2.3);
}

TEST(Planner, CpuWorkersHoldEverythingInHostRam) {
  auto p = MakePlan(Request("moe-tiny:Q8_0", "", "1GiB", 256, /*cpu_workers=*/2));
  ASSERT_TRUE(p.ok()) << p.status();
  CheckConsistent(*p);
  ASSERT_EQ(p->workers.size(), 2u);
  for (const auto& wp : p->workers) {
    ASSERT_EQ(wp.devices.size(), 1u);
    EXPECT_EQ(wp.devices[0].label, "cpu");
    EXPECT_EQ(wp.devices[0].capacity, 512ull << 20);
    EXPECT_EQ(wp.experts_on_gpu, 0);
    EXPECT_GT(wp.experts_on_cpu, 0);
  }
  EXPECT_EQ(p->experts_spilled, 0);  // CPU workers: nothing "spilled"
  EXPECT_EQ(p->workers[0].layer_end, 4);  // tiny: 8 equal-ish layers
  // Dense model: no experts at all.
  auto d = MakePlan(Request("dense-tiny:Q8_0", "", "1GiB,1GiB,1GiB", 256, 3));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_TRUE(d->experts.empty());
  EXPECT_EQ(d->workers.size(), 3u);
  // More workers than layers, or no memory, is refused.
  EXPECT_FALSE(MakePlan(Request("moe-tiny:Q8_0", "", "1GiB", 256, 9)).ok());
  EXPECT_FALSE(InventoryFromFlags("", "", 2).ok());
  EXPECT_FALSE(InventoryFromFlags("24GiB,24GiB", "1GiB,2GiB,3GiB", 1).ok());
}

TEST(Planner, MultiGpuWorkerAndPerWorkerHostRam) {
  auto inv = InventoryFromFlags("24GiB+24GiB,24GiB", "64GiB,32GiB", 1);
  ASSERT_TRUE(inv.ok()) << inv.status();
  ASSERT_EQ(inv->size(), 2u);
  EXPECT_EQ((*inv)[0].devices.size(), 2u);
  EXPECT_EQ((*inv)[0].host_ram_bytes, 64 * GiB);
  EXPECT_EQ((*inv)[1].host_ram_bytes, 32 * GiB);
  PlanRequest r = Request("122b-a10b:IQ4_XS", "24GiB+24GiB,24GiB", "", 8192);
  auto p = MakePlan(r);
  ASSERT_TRUE(p.ok()) << p.status();
  CheckConsistent(*p);
  EXPECT_TRUE(p->fits_on_gpus());
  EXPECT_GT(p->workers[0].devices[1].n_experts, 0);  // the second GPU holds experts
  EXPECT_EQ(p->workers[0].devices[1].use.weights, 0u);
}

TEST(Planner, ParseBytes) {
  EXPECT_EQ(*ParseBytes("24GiB"), 24 * GiB);
  EXPECT_EQ(*ParseBytes("24 GB"), 24000000000ull);
  EXPECT_EQ(*ParseBytes("1.5GiB"), 3 * GiB / 2);
  EXPECT_EQ(*ParseBytes("512MiB"), 512ull << 20);
  EXPECT_EQ(*ParseBytes("512mb"), 512000000ull);
  EXPECT_EQ(*ParseBytes("64g"), 64 * GiB);
  EXPECT_EQ(*ParseBytes("1000"), 1000u);
  EXPECT_FALSE(ParseBytes("GiB").ok());
  EXPECT_FALSE(ParseBytes("24 parsecs").ok());
  EXPECT_FALSE(ParseBytes("-1GiB").ok());
  EXPECT_EQ(FormatBytes(24 * GiB), "24.00 GiB");
  EXPECT_EQ(FormatBytes(812), "812 B");
  EXPECT_FALSE(ParseKvType("q4_0").ok());
  EXPECT_EQ(*ParseKvType("Q8_0"), KvType::kQ8_0);
}

TEST(Planner, KvQ8HalvesTheCache) {
  PlanRequest r = Request("35b-a3b:Q4_K_M", "24GiB", "", 32768);
  r.kv_type = KvType::kQ8_0;
  auto p = MakePlan(r);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->kv_bytes_per_token, 20480u * 34 / 64);
  EXPECT_EQ(p->workers[0].devices[0].use.kv, 20480ull * 34 / 64 * 32768);
}

TEST(Planner, GgufFileGivesTheSyntheticTable) {
  auto mp = PlanFromSyntheticSpec("moe-tiny:Q8_0");
  ASSERT_TRUE(mp.ok()) << mp.status();
  const std::string path =
      absl::StrCat(testing::TempDir(), "/planner_test_moe_tiny_", getpid(), ".gguf");
  ASSERT_TRUE(WriteModelFile(*mp, path, {.seed = 3}).ok());
  auto f = ModelFromFile(path);
  std::remove(path.c_str());
  ASSERT_TRUE(f.ok()) << f.status();
  const ModelInput& s = Model("moe-tiny:Q8_0");
  ASSERT_EQ(f->tensors.size(), s.tensors.size());
  for (size_t i = 0; i < s.tensors.size(); ++i) {
    EXPECT_EQ(f->tensors[i].name, s.tensors[i].name);
    EXPECT_EQ(f->tensors[i].type, s.tensors[i].type);
    EXPECT_EQ(f->tensors[i].shape, s.tensors[i].shape);
    EXPECT_EQ(f->tensors[i].bytes, s.tensors[i].bytes);
  }
  EXPECT_EQ(f->shape.layer_is_attention, s.shape.layer_is_attention);
  EXPECT_EQ(DeltaNetStateBytesPerSequence(f->shape), DeltaNetStateBytesPerSequence(s.shape));
  EXPECT_EQ(KvBytesPerToken(f->shape, KvType::kF16), KvBytesPerToken(s.shape, KvType::kF16));
  EXPECT_EQ(f->shape.n_expert_used, s.shape.n_expert_used);
  EXPECT_FALSE(ModelFromFile(path).ok());  // removed: the reader's error comes back
}

TEST(Planner, MtpBlockIsNotServed) {
  ModelInput in = Model("moe-tiny:Q8_0");
  const int64_t L = in.shape.n_layer;
  in.tensors.push_back({absl::StrCat("blk.", L, ".nextn.eh_proj"), "F32", {512, 256}, 524288});
  in.tensors.push_back({absl::StrCat("blk.", L, ".attn_norm.weight"), "F32", {256}, 1024});
  auto shape = ShapeFromTensorTable(in.tensors, in.shape.n_expert_used);
  ASSERT_TRUE(shape.ok()) << shape.status();
  EXPECT_EQ(shape->n_layer, L);
  PlanRequest r;
  r.tensors = in.tensors;
  r.shape = *shape;
  r.workers = *InventoryFromFlags("", "1GiB", 2);
  r.context = 256;
  auto p = MakePlan(r);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->skipped_tensors.size(), 2u);
  EXPECT_NE(PlanTable(*p).find("not served: 2 tensors"), std::string::npos);
  // The owners as LoadRequest carries them.
  const std::vector<int32_t> owners = LayerOwners(*p);
  ASSERT_EQ(static_cast<int64_t>(owners.size()), L);
  EXPECT_EQ(owners.front(), 0);
  EXPECT_EQ(owners.back(), 1);
  const auto experts = ExpertOwners(*p);
  ASSERT_EQ(static_cast<int64_t>(experts.size()), L);
  for (const auto& layer : experts) {
    ASSERT_EQ(static_cast<int64_t>(layer.size()), in.shape.n_expert);
    EXPECT_NE(std::count(layer.begin(), layer.end(), 0), 0);
    EXPECT_NE(std::count(layer.begin(), layer.end(), 1), 0);
  }
}

// The command: table, --json, and a refusal's exit status.
int RunPlan(std::vector<std::string> args, std::string* out, std::string* err) {
  args.insert(args.begin(), "plan");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  testing::internal::CaptureStdout();
  testing::internal::CaptureStderr();
  const int rc = rs::cli::plan_main(static_cast<int>(argv.size()), argv.data());
  std::fflush(stdout);
  std::fflush(stderr);
  *out = testing::internal::GetCapturedStdout();
  *err = testing::internal::GetCapturedStderr();
  return rc;
}

TEST(PlanCli, TableJsonAndRefusal) {
  std::string out, err;
  ASSERT_EQ(RunPlan({"--synthetic", "122b-a10b:IQ4_XS", "--gpus", "24GiB,24GiB,24GiB",
                     "--context", "8192"},
                    &out, &err),
            0)
      << err;
  EXPECT_NE(out.find("fits on GPUs alone"), std::string::npos) << out;
  EXPECT_NE(out.find("cuda:0"), std::string::npos) << out;
  EXPECT_NE(out.find("w2"), std::string::npos) << out;
  ASSERT_EQ(RunPlan({"--synthetic", "122b-a10b:Q4_K_M", "--gpus", "24GiB,24GiB", "--host-ram",
                     "96GiB", "--json", "--layers", "0-23,24-47"},
                    &out, &err),
            0)
      << err;
  EXPECT_EQ(out.front(), '{');
  EXPECT_NE(out.find("\"fits_on_gpus\": false"), std::string::npos);
  EXPECT_NE(out.find("\"layer_begin\": 24, \"layer_end\": 48"), std::string::npos);
  EXPECT_NE(out.find("\"experts_spilled\": "), std::string::npos);
  ASSERT_EQ(RunPlan({"--synthetic", "122b-a10b:Q4_K_M", "--gpus", "24GiB,24GiB", "--host-ram",
                     "96GiB"},
                    &out, &err),
            0)
      << err;
  EXPECT_NE(out.find("spilled to host RAM: "), std::string::npos) << out;
  ASSERT_EQ(RunPlan({"--synthetic", "35b-a3b:Q4_K_M", "--gpus", "24GiB", "--context", "32768"},
                    &out, &err),
            0)
      << err;
  EXPECT_NE(out.find("fits on GPUs alone"), std::string::npos) << out;
  EXPECT_NE(out.find("KV f16 20.0 KiB/token (640.0 MiB)"), std::string::npos) << out;
  EXPECT_EQ(RunPlan({"--synthetic", "122b-a10b:Q4_K_M", "--gpus", "24GiB,24GiB"}, &out, &err), 1);
  EXPECT_NE(err.find("plan refused"), std::string::npos) << err;
  EXPECT_EQ(RunPlan({"--synthetic", "35b-a3b:Q4_K_M", "--gpus", "24 parsecs"}, &out, &err), 2);
  EXPECT_EQ(RunPlan({"--gpus", "24GiB"}, &out, &err), 2);
  EXPECT_EQ(RunPlan({"--synthetic", "moe-tiny:Q8_0", "--workers", "2", "--host-ram", "2GiB",
                     "--kv-type", "q8_0"},
                    &out, &err),
            0)
      << err;
  EXPECT_NE(out.find("KV q8_0"), std::string::npos) << out;
}

}  // namespace
}  // namespace rs::plan
