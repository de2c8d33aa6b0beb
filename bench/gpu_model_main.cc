// The whole model on the GPU (--backend cuda), for bench/gpu_check.sh: batch-1 decode tokens/s at
// a given context with the achieved fraction of the measured read bandwidth, prefill tokens/s
// (512 and 8K prompts), and aggregate decode throughput with 8 and 32 concurrent sequences.
// Weights are --synthetic models (valid random blocks; timing only, the numerics are
// meaningless). Plain main() so that it runs on a bare GPU host with the carried libraries.
//
//   gpu_model_main [--models 35b-a3b:Q4_K_M,27b:Q4_K_M] [--ctx 4096] [--decode 32]
//                  [--no-8k] [--batches 8,32]
//
// Times are wall-clock around Model::Forward / ForwardGreedy, which return once the results are
// on the host. Decode is greedy with the argmax on the GPU (only the ids come back), measured
// with the decode step replayed as a CUDA graph and with every kernel launched.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "kernels/cuda/cuda_ops.h"
#include "worker/model.h"
#include "worker/synthetic.h"

namespace rs {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

[[noreturn]] void Die(const std::string& what, const absl::Status& st) {
  std::fprintf(stderr, "gpu_model_main: %s: %s\n", what.c_str(), st.ToString().c_str());
  std::exit(1);
}

double ReadBandwidth() {
  const size_t n = size_t{1} << 30;
  auto a = cuda::DeviceBuffer::alloc(n);
  auto b = cuda::DeviceBuffer::alloc(n);
  auto sink = cuda::DeviceBuffer::alloc(4096 * 4);
  if (!a.ok() || !b.ok() || !sink.ok()) Die("bandwidth buffers", a.status());
  (void)cuda::fill_random(a->get(), n, 1);
  (void)cuda::fill_random(b->get(), n, 2);
  cuda::EventTimer t;
  (void)cuda::read_sweep(a->get(), n, sink->as<float>());
  (void)t.start();
  const int reps = 10;
  for (int i = 0; i < reps; ++i) (void)cuda::read_sweep(i % 2 ? a->get() : b->get(), n, sink->as<float>());
  (void)t.stop();
  auto ms = t.elapsed_ms();
  if (!ms.ok()) Die("bandwidth timer", ms.status());
  return double(n) * reps / (*ms * 1e-3) / 1e9;
}

std::vector<int32_t> Ids(int64_t n, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> v(n);
  for (auto& t : v) t = static_cast<int32_t>(rng() % std::min<int64_t>(vocab, 100000));
  return v;
}

struct Row {
  std::string model;
  double weights_gb = 0, mb_per_tok = 0, load_s = 0;
  double prefill512 = 0, prefill_ctx = 0, prefill8k = 0, decode = 0, decode_nograph = 0, frac = 0;
  double decode_dn_fused = 0, decode_unfused_moe = 0, decode_gqa = 0, decode_sampled = 0;
  double decode_ffn_up = 0;  // dense models: with cuda::ffn_up (0: MoE)
  double dev_ms = 0;  // the decode step's kernels' device time (launch profile)
  double decode_pdl = 0;  // with programmatic dependent launch (0: the device has none)
  std::vector<std::pair<int, double>> batch;
};

// Prints a launch profile's rows (the `top` largest), by model part and entry point.
void PrintProfile(const Model::CudaProfile& prof, size_t top) {
  std::printf("    %-34s %6s %10s %6s\n", "part/entry point", "calls", "us/step", "%");
  for (size_t i = 0; i < prof.rows.size() && i < top; ++i) {
    const auto& pr = prof.rows[i];
    std::printf("    %-34s %6lld %10.1f %5.1f%%\n", pr.name.c_str(),
                static_cast<long long>(pr.calls), 1e3 * pr.ms,
                100 * pr.ms / std::max(prof.total_ms, 1e-9));
  }
}

// Feeds `ids` in one Forward (the model splits it into device sub-steps); returns seconds.
double Prefill(Model& m, SeqState* s, const std::vector<int32_t>& ids) {
  std::vector<float> logits;
  StepItem it{s, ids.data(), static_cast<int64_t>(ids.size()), false};
  const double t0 = Now();
  if (auto st = m.Forward({&it, 1}, &logits); !st.ok()) Die("prefill", st);
  return Now() - t0;
}

Row Run(const std::string& spec, int64_t ctx, int n_decode, bool do8k,
        const std::vector<int>& batches, double bw) {
  Row r;
  r.model = spec;
  double t0 = Now();
  auto f = MakeSyntheticModel(spec, 1);
  if (!f.ok()) Die("synthetic " + spec, f.status());
  ModelOptions o;
  o.backend = Backend::kCuda;
  o.cuda_ctx = ctx + 2 * (n_decode + 3) + 16;  // prefill + two timed decode runs
  auto m = Model::Load(std::shared_ptr<const gguf::File>(std::move(*f)), o);
  if (!m.ok()) Die("load " + spec, m.status());
  r.load_s = Now() - t0;
  Model& model = **m;
  const int64_t V = model.config().n_vocab;
  r.mb_per_tok = model.active_weight_bytes_per_token() / 1e6;
  std::printf("[%s] loaded in %.1f s; %.1f MB of weights read per decoded token\n", spec.c_str(),
              r.load_s, r.mb_per_tok);
  std::fflush(stdout);

  {  // warm-up + prefill 512
    auto s = model.NewSequence(600);
    Prefill(model, s.get(), Ids(64, V, 9));
    s->reset();
    const double sec = Prefill(model, s.get(), Ids(512, V, 3));
    r.prefill512 = 512 / sec;
    // Where a 512-token prefill's device time goes (each launch timed, as for decode below).
    s->reset();
    const std::vector<int32_t> ids = Ids(512, V, 3);
    auto prof = model.ProfileCuda([&]() -> absl::Status {
      std::vector<float> logits;
      StepItem it{s.get(), ids.data(), 512, false};
      return model.Forward({&it, 1}, &logits);
    });
    if (!prof.ok()) Die("prefill profile", prof.status());
    std::printf("[%s] prefill 512 profile: %lld launches, %.3f ms of device time, host queued "
                "them in %.3f ms; wall clock %.3f ms%s\n",
                spec.c_str(), static_cast<long long>(prof->launches), prof->total_ms,
                prof->host_queue_ms, 1e3 * sec,
                prof->host_bound ? " (host-bound: times include waits for the host)" : "");
    PrintProfile(*prof, 12);
  }
  auto s = model.NewSequence(ctx + 4 * (n_decode + 3) + 16);
  {
    const double sec = Prefill(model, s.get(), Ids(ctx, V, 4));
    r.prefill_ctx = ctx / sec;
  }
  {  // batch-1 greedy decode at `ctx` tokens of context: CUDA graphs off, then on
    std::vector<int32_t> ids;
    int32_t tok = 1;
    // One greedy decode step; timed(step): tok/s over n_decode steps after 3 of warm-up (and
    // graph capture).
    auto greedy = [&] {
      StepItem it{s.get(), &tok, 1, false};
      if (auto st = model.ForwardGreedy({&it, 1}, &ids); !st.ok()) Die("decode", st);
      tok = ids[0];
    };
    auto timed = [&](auto&& step) {
      for (int i = 0; i < 3; ++i) step();
      const double t1 = Now();
      for (int i = 0; i < n_decode; ++i) step();
      return n_decode / (Now() - t1);
    };
    model.set_cuda_graphs(false);
    r.decode_nograph = timed(greedy);
    model.set_cuda_graphs(true);
    r.decode = timed(greedy);
    r.frac = r.mb_per_tok * 1e6 * r.decode / (bw * 1e9);
    // The same with graphs but each DeltaNet layer as the one fused kernel (the separate kernels
    // are the default), and with a sampled (not greedy) token: top-k 40, top-p 0.95, penalties,
    // on the device.
    model.set_cuda_fused_deltanet(true);
    r.decode_dn_fused = timed(greedy);
    model.set_cuda_fused_deltanet(false);
    // Dense models: the FFN's gate/up/SwiGLU in one launch (cuda::ffn_up; off by default).
    if (model.config().n_expert == 0) {
      model.set_cuda_fused_ffn_up(true);
      r.decode_ffn_up = timed(greedy);
      model.set_cuda_fused_ffn_up(false);
    }
    // The experts as per-token matvecs plus the separate shared expert, and the norms (SwiGLU,
    // attention gate) without their q8 output (the fused MoE kernels' and those kernels' gain).
    model.set_cuda_fused_moe_decode(false);
    r.decode_unfused_moe = timed(greedy);
    model.set_cuda_fused_moe_decode(true);
    // Split-K attention's first pass per KV head (off by default until this number says).
    model.set_cuda_gqa_attention(true);
    r.decode_gqa = timed(greedy);
    model.set_cuda_gqa_attention(false);
    // Programmatic dependent launch (sm_90+; off by default until this number says).
    if (cuda::programmatic_launch_supported()) {
      model.set_cuda_programmatic_launch(true);
      r.decode_pdl = timed(greedy);
      model.set_cuda_programmatic_launch(false);
    }
    SamplerParams sp;
    sp.temperature = 0.8f;
    sp.top_k = 40;
    sp.top_p = 0.95f;
    sp.presence_penalty = 0.5f;
    sp.frequency_penalty = 0.3f;
    sp.seed = 7;
    TokenCounts counts;
    uint64_t step_no = 0;
    std::vector<SampleResult> sampled;
    r.decode_sampled = timed([&] {
      StepItem it{s.get(), &tok, 1, false};
      const SampleRequest req{&sp, &counts, step_no++};
      if (auto st = model.ForwardSample({&it, 1}, {&req, 1}, &sampled); !st.ok()) Die("sample", st);
      tok = sampled[0].token;
      counts.AddOutput(tok);
    });
    // Where one batch-1 decode step's device time goes: every launch timed on the device with
    // the work queued behind a hold (Model::ProfileCuda), by model part and entry point. The
    // sum against the graph-replayed step's time shows what the gaps between kernels cost.
    auto prof = model.ProfileCuda([&]() -> absl::Status {
      StepItem it{s.get(), &tok, 1, false};
      absl::Status st = model.ForwardGreedy({&it, 1}, &ids);
      if (st.ok()) tok = ids[0];
      return st;
    });
    if (!prof.ok()) Die("profile", prof.status());
    r.dev_ms = prof->total_ms;
    std::printf("[%s] decode step profile (batch 1, context %lld): %lld launches, %.3f ms of "
                "device time (%.2f us a launch), host queued them in %.3f ms; graph-replayed "
                "step %.3f ms%s\n",
                spec.c_str(), static_cast<long long>(ctx), static_cast<long long>(prof->launches),
                prof->total_ms, 1e3 * prof->total_ms / std::max<int64_t>(prof->launches, 1),
                prof->host_queue_ms, 1e3 / r.decode,
                prof->host_bound ? " (host-bound: times include waits for the host)" : "");
    PrintProfile(*prof, 16);
  }
  s.reset();
  std::printf("[%s] prefill 512: %.0f tok/s; prefill %lld: %.0f tok/s; decode at %lld: %.1f tok/s "
              "with CUDA graphs (%.0f GB/s, %.1f%% of %.0f GB/s), %.1f tok/s without\n",
              spec.c_str(), r.prefill512, static_cast<long long>(ctx), r.prefill_ctx,
              static_cast<long long>(ctx), r.decode, r.mb_per_tok * r.decode / 1e3, 100 * r.frac,
              bw, r.decode_nograph);
  std::printf("[%s] decode at %lld with graphs: DeltaNet fused %.1f tok/s; MoE + norm-q8 unfused "
              "%.1f tok/s; FFN up fused %.1f tok/s; attention per KV head %.1f tok/s; "
              "programmatic dependent launch %.1f tok/s; sampled on the GPU (top-k 40, top-p "
              "0.95, penalties) %.1f tok/s\n",
              spec.c_str(), static_cast<long long>(ctx), r.decode_dn_fused, r.decode_unfused_moe,
              r.decode_ffn_up, r.decode_gqa, r.decode_pdl, r.decode_sampled);
  std::fflush(stdout);
  if (do8k) {
    auto s8 = model.NewSequence(8192);
    const double sec = Prefill(model, s8.get(), Ids(8192, V, 5));
    r.prefill8k = 8192 / sec;
    std::printf("[%s] prefill 8192: %.0f tok/s\n", spec.c_str(), r.prefill8k);
    std::fflush(stdout);
  }
  for (int nb : batches) {
    std::vector<std::unique_ptr<SeqState>> seqs;
    for (int i = 0; i < nb; ++i) {
      seqs.push_back(model.NewSequence(512));
      Prefill(model, seqs.back().get(), Ids(128, V, 100 + i));
    }
    std::vector<int32_t> toks(nb, 1), ids;
    const int steps = 16;
    double t1 = 0;
    for (int step = -2; step < steps; ++step) {
      if (step == 0) t1 = Now();
      std::vector<StepItem> items;
      for (int i = 0; i < nb; ++i) items.push_back(StepItem{seqs[i].get(), &toks[i], 1, false});
      if (auto st = model.ForwardGreedy(items, &ids); !st.ok()) Die("batch decode", st);
      for (int i = 0; i < nb; ++i) toks[i] = ids[i];
    }
    const double tps = nb * steps / (Now() - t1);
    r.batch.push_back({nb, tps});
    std::printf("[%s] %d concurrent sequences: %.0f tok/s aggregate\n", spec.c_str(), nb, tps);
    if (nb >= 16) {  // the same with the routed experts grouped by expert (decode default: off)
      model.set_cuda_grouped_moe_decode(true);
      double t2 = 0;
      for (int step = -2; step < steps; ++step) {
        if (step == 0) t2 = Now();
        std::vector<StepItem> items;
        for (int i = 0; i < nb; ++i) items.push_back(StepItem{seqs[i].get(), &toks[i], 1, false});
        if (auto st = model.ForwardGreedy(items, &ids); !st.ok()) Die("batch decode", st);
        for (int i = 0; i < nb; ++i) toks[i] = ids[i];
      }
      model.set_cuda_grouped_moe_decode(false);
      std::printf("[%s] %d concurrent sequences, experts grouped: %.0f tok/s aggregate\n",
                  spec.c_str(), nb, nb * steps / (Now() - t2));
    }
    std::fflush(stdout);
  }
  return r;
}

}  // namespace
}  // namespace rs

int main(int argc, char** argv) {
  using namespace rs;
  std::string models = "35b-a3b:Q4_K_M,27b:Q4_K_M";
  int64_t ctx = 4096;
  int n_decode = 32;
  bool do8k = true;
  std::vector<int> batches = {8, 32};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "gpu_model_main: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--models") models = next();
    else if (a == "--ctx") ctx = std::atoll(next().c_str());
    else if (a == "--decode") n_decode = std::atoi(next().c_str());
    else if (a == "--no-8k") do8k = false;
    else if (a == "--batches") {
      batches.clear();
      for (auto p : absl::StrSplit(next(), ',')) batches.push_back(std::atoi(std::string(p).c_str()));
    } else if (a == "-h" || a == "--help") {
      std::printf("gpu_model_main [--models SPEC,...] [--ctx N] [--decode N] [--no-8k] "
                  "[--batches 8,32]\n");
      return 0;
    } else {
      std::fprintf(stderr, "gpu_model_main: unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  std::string why;
  if (!cuda::cuda_available(&why)) {
    std::printf("gpu_model_main: no CUDA device (%s); nothing measured\n", why.c_str());
    return 0;
  }
  const double bw = ReadBandwidth();
  std::printf("read bandwidth (read-only kernel): %.0f GB/s\n", bw);
  std::vector<Row> rows;
  for (auto spec : absl::StrSplit(models, ',')) rows.push_back(Run(std::string(spec), ctx, n_decode, do8k, batches, bw));
  std::printf("\n==== model on GPU (wall clock; greedy decode, argmax on the GPU) ====\n");
  // no-graph / dn-fused / moe-unfused / ffn-up / attn-gqa: decode tok/s without CUDA graphs,
  // with each DeltaNet layer as one fused kernel, with the per-token experts and separate
  // quantisers, with the dense FFN's fused up kernel (0: MoE), with split-K attention's first
  // pass per KV head; the defaults are the other way. dev-ms: the decode step's kernels' own
  // device time (launch profile), against 1000 / decode for the whole step. pdl: decode with
  // programmatic dependent launch (0 where the device has none).
  std::printf("%-16s %8s %9s %9s %9s %10s %7s %7s %10s %10s %11s %8s %9s %8s %s\n", "model",
              "MB/tok", "pf512", "pf-ctx", "pf8k", "decode", "%BW", "dev-ms", "no-graph",
              "dn-fused", "moe-unfused", "ffn-up", "attn-gqa", "pdl", "batch tok/s");
  for (const Row& r : rows) {
    std::string b;
    for (auto [n, t] : r.batch) b += std::to_string(n) + ":" + std::to_string(static_cast<int>(t)) + " ";
    std::printf("%-16s %8.0f %9.0f %9.0f %9.0f %10.1f %6.1f%% %7.3f %10.1f %10.1f %11.1f %8.1f "
                "%9.1f %8.1f %s\n",
                r.model.c_str(), r.mb_per_tok, r.prefill512, r.prefill_ctx, r.prefill8k, r.decode,
                100 * r.frac, r.dev_ms, r.decode_nograph, r.decode_dn_fused, r.decode_unfused_moe,
                r.decode_ffn_up, r.decode_gqa, r.decode_pdl, b.c_str());
  }
  return 0;
}
