// GPU benchmark for bench/gpu_check.sh: device bandwidth, the decode matvec per format on the
// real model shapes, and a matvec-only estimate of batch-1 decode tokens/s for 35b-a3b and 27b
// at Q4_K_M. Plain main() (no Google Benchmark) so that it runs on a bare GPU host with only
// the carried libraries.
//
//   gpu_bench_main [--quick]
//
// Weights are pseudo-random bytes on the device (never zeros). Each timing rotates through
// copies of the matrix (or, for MoE, through random expert ids of a full 256-expert tensor) so
// that the working set is far larger than L2; times are device-event times of back-to-back
// launches divided by their count (launch gaps included, no CUDA graph).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/cuda/cuda_glue.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/cuda_sampler.h"
#include "kernels/formats.h"

namespace rs::cuda {
namespace {

#define CHECK_OK(expr)                                                                \
  do {                                                                                \
    const absl::Status st_ = (expr);                                                  \
    if (!st_.ok()) {                                                                  \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr,             \
                   st_.ToString().c_str());                                           \
      std::exit(1);                                                                   \
    }                                                                                 \
  } while (0)

template <class T>
T value_or_die(absl::StatusOr<T> v, const char* what) {
  if (!v.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, v.status().ToString().c_str());
    std::exit(1);
  }
  return std::move(*v);
}

constexpr size_t kArenaBytes = size_t{2} << 30;  // weights for every timing live in here
constexpr int64_t kMaxCols = 17408;

struct Bench {
  DeviceBuffer arena, x, act_ws, y, ids, selw;
  DeviceAct act[9];  // prepared activations per n_tok (index = n_tok), cols = current
  double read_gbs = 0, copy_gbs = 0;
  bool quick = false;
  std::map<std::string, double> cache_us;

  void init() {
    arena = value_or_die(DeviceBuffer::alloc(kArenaBytes), "arena");
    CHECK_OK(fill_random(arena.get(), kArenaBytes, 12345));
    std::mt19937 rng(1);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> hx(8 * kMaxCols);
    for (auto& v : hx) v = nd(rng);
    x = value_or_die(DeviceBuffer::alloc(hx.size() * 4), "x");
    CHECK_OK(copy_to_device(x.get(), hx.data(), hx.size() * 4));
    act_ws = value_or_die(DeviceBuffer::alloc(act_q8_bytes(kMaxCols, 8) + 256), "act");
    y = value_or_die(DeviceBuffer::alloc(size_t{8} * 262144 * 4), "y");
    // Random expert ids (8 distinct of 256 per launch) for 4096 launches.
    std::vector<int32_t> hid;
    for (int r = 0; r < 4096; ++r) {
      std::vector<int32_t> perm(256);
      for (int i = 0; i < 256; ++i) perm[i] = i;
      std::shuffle(perm.begin(), perm.end(), rng);
      hid.insert(hid.end(), perm.begin(), perm.begin() + 8);
    }
    ids = value_or_die(DeviceBuffer::alloc(hid.size() * 4), "ids");
    CHECK_OK(copy_to_device(ids.get(), hid.data(), hid.size() * 4));
    std::vector<float> hw(8, 0.125f);
    selw = value_or_die(DeviceBuffer::alloc(64), "selw");
    CHECK_OK(copy_to_device(selw.get(), hw.data(), 32));
    CHECK_OK(synchronize());
  }

  void bandwidth() {
    const size_t n = size_t{1} << 30;
    DeviceBuffer a = value_or_die(DeviceBuffer::alloc(n), "bw a");
    DeviceBuffer b = value_or_die(DeviceBuffer::alloc(n), "bw b");
    DeviceBuffer sink = value_or_die(DeviceBuffer::alloc(4096 * 4), "sink");
    CHECK_OK(fill_random(a.get(), n, 7));
    EventTimer t;
    const int reps = 10;
    CHECK_OK(copy_device(b.get(), a.get(), n));
    CHECK_OK(t.start());
    for (int i = 0; i < reps; ++i) CHECK_OK(copy_device(b.get(), a.get(), n));
    CHECK_OK(t.stop());
    double ms = value_or_die(t.elapsed_ms(), "copy");
    copy_gbs = 2.0 * n * reps / (ms * 1e-3) / 1e9;
    CHECK_OK(read_sweep(a.get(), n, sink.as<float>()));
    CHECK_OK(t.start());
    for (int i = 0; i < reps; ++i) CHECK_OK(read_sweep(i % 2 ? a.get() : b.get(), n, sink.as<float>()));
    CHECK_OK(t.stop());
    ms = value_or_die(t.elapsed_ms(), "sweep");
    read_gbs = double(n) * reps / (ms * 1e-3) / 1e9;
    std::printf("bandwidth: cudaMemcpy D2D %.0f GB/s (read+write), read-only kernel %.0f GB/s\n",
                copy_gbs, read_gbs);
  }

  void prepare_act(GgmlType t, int64_t cols, int n_tok) {
    DeviceAct& a = act[n_tok];
    a = DeviceAct{x.as<float>(), cols, nullptr, nullptr, cols, n_tok};
    if (matvec_uses_q8(t))
      CHECK_OK(quantize_act(x.as<float>(), cols, n_tok, cols, act_ws.get(), act_ws.size(), &a));
  }

  // Mean microseconds of one matvec launch of a rows x cols `t` matrix (`moe`: 0 plain, 1 up
  // over 8 selected of 256 experts of `rows` rows, 2 down likewise, weighted sum).
  double time_matvec(GgmlType t, int64_t rows, int64_t cols, int n_tok, int moe) {
    const std::string key = std::string(type_name(t)) + "/" + std::to_string(rows) + "/" +
                            std::to_string(cols) + "/" + std::to_string(n_tok) + "/" +
                            std::to_string(moe);
    if (auto it = cache_us.find(key); it != cache_us.end()) return it->second;
    const size_t rb = row_bytes(t, cols);
    const int64_t n_mat_rows = moe ? rows * 256 : rows;
    const size_t mat_bytes = (rb * n_mat_rows + 255) / 256 * 256;
    if (mat_bytes > kArenaBytes) {
      std::fprintf(stderr, "matrix %s of %zu bytes exceeds the arena\n", key.c_str(), mat_bytes);
      std::exit(1);
    }
    const int64_t copies = std::max<int64_t>(1, std::min<int64_t>(kArenaBytes / mat_bytes, 4096));
    prepare_act(t, cols, moe == 2 ? 8 : n_tok);
    DeviceAct& a = act[moe == 2 ? 8 : n_tok];
    auto launch = [&](int64_t i) {
      WeightView w;
      w.type = t;
      w.data = arena.as<uint8_t>() + (i % copies) * mat_bytes;
      w.cols = cols;
      w.rows = n_mat_rows;
      w.row_stride = rb;
      const int32_t* id = ids.as<int32_t>() + 8 * (i % 4096);
      if (moe == 0) CHECK_OK(matvec(w, a, y.as<float>(), rows));
      if (moe == 1) CHECK_OK(moe_matvec_up(w, rows, id, 8, a, y.as<float>()));
      if (moe == 2)
        CHECK_OK(moe_matvec_down(w, rows, id, selw.as<float>(), 8, a, y.as<float>(), false));
    };
    for (int i = 0; i < 3; ++i) launch(i);
    EventTimer tm;
    CHECK_OK(tm.start());
    launch(3);
    CHECK_OK(tm.stop());
    const double est_ms = value_or_die(tm.elapsed_ms(), "est");
    const int reps = static_cast<int>(std::clamp(20.0 / std::max(est_ms, 1e-3), 10.0, quick ? 100.0 : 400.0));
    CHECK_OK(tm.start());
    for (int i = 0; i < reps; ++i) launch(4 + i);
    CHECK_OK(tm.stop());
    const double us = value_or_die(tm.elapsed_ms(), "time") * 1e3 / reps;
    cache_us[key] = us;
    return us;
  }

  double time_quantize(int64_t cols, int n_tok) {
    const std::string key = "quant/" + std::to_string(cols) + "/" + std::to_string(n_tok);
    if (auto it = cache_us.find(key); it != cache_us.end()) return it->second;
    DeviceAct a;
    for (int i = 0; i < 3; ++i)
      CHECK_OK(quantize_act(x.as<float>(), cols, n_tok, cols, act_ws.get(), act_ws.size(), &a));
    EventTimer tm;
    CHECK_OK(tm.start());
    for (int i = 0; i < 100; ++i)
      CHECK_OK(quantize_act(x.as<float>(), cols, n_tok, cols, act_ws.get(), act_ws.size(), &a));
    CHECK_OK(tm.stop());
    const double us = value_or_die(tm.elapsed_ms(), "quant") * 10.0;
    cache_us[key] = us;
    return us;
  }
};

// Bytes a matvec reads from its weights (MoE: the 8 selected experts).
double weight_bytes(GgmlType t, int64_t rows, int64_t cols, int moe) {
  return double(row_bytes(t, cols)) * rows * (moe ? 8 : 1);
}

// llama.cpp's Q4_K_M rule for "more bits" layers (first and last eighth, every third between).
bool more_bits(int64_t i, int64_t n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

struct Mat {
  const char* name;
  GgmlType t;
  int64_t rows, cols;
  int moe;
};

struct Estimate {
  double us = 0, bytes = 0;
};

// One token of decode: every matvec of every layer, Q4_K_M types (make_model's WeightTypeFor):
// Q4_K, with Q6_K for output and, in the more-bits layers, attn_qkv / attn_v / every ffn_down.
// Router and shared-expert gate are F32. Plus one activation quantisation per distinct input.
Estimate estimate(Bench& b, bool moe_model) {
  const int64_t H = moe_model ? 2048 : 5120, L = moe_model ? 40 : 64;
  const int64_t conv = moe_model ? 8192 : 10240, vdim = moe_model ? 4096 : 6144;
  const int64_t Hv = moe_model ? 32 : 48, qout = moe_model ? 8192 : 12288;
  const int64_t kvout = moe_model ? 512 : 1024, oin = moe_model ? 4096 : 6144;
  const GgmlType q4 = GgmlType::Q4_K, q6 = GgmlType::Q6_K;
  Estimate e;
  auto add = [&](const Mat& m) {
    e.us += b.time_matvec(m.t, m.rows, m.cols, 1, m.moe);
    e.bytes += weight_bytes(m.t, m.rows, m.cols, m.moe);
  };
  for (int64_t i = 0; i < L; ++i) {
    const bool mb = more_bits(i, L);
    const GgmlType dn = mb ? q6 : q4;
    if ((i + 1) % 4 != 0) {  // Gated DeltaNet
      add({"attn_qkv", mb ? q6 : q4, conv, H, 0});
      add({"attn_gate", q4, vdim, H, 0});
      add({"ssm_beta", q4, Hv, H, 0});
      add({"ssm_alpha", q4, Hv, H, 0});
      add({"ssm_out", q4, H, vdim, 0});
      e.us += b.time_quantize(H, 1) + b.time_quantize(vdim, 1);
    } else {
      add({"attn_q", q4, qout, H, 0});
      add({"attn_k", q4, kvout, H, 0});
      add({"attn_v", mb ? q6 : q4, kvout, H, 0});
      add({"attn_output", q4, H, oin, 0});
      e.us += b.time_quantize(H, 1) + b.time_quantize(oin, 1);
    }
    if (moe_model) {
      add({"ffn_gate_inp", GgmlType::F32, 256, H, 0});
      add({"ffn_gate_exps", q4, 512, H, 1});
      add({"ffn_up_exps", q4, 512, H, 1});
      add({"ffn_down_exps", dn, H, 512, 2});
      add({"ffn_gate_shexp", q4, 512, H, 0});
      add({"ffn_up_shexp", q4, 512, H, 0});
      add({"ffn_down_shexp", dn, H, 512, 0});
      e.us += b.time_quantize(H, 1) + b.time_quantize(512, 8) + b.time_quantize(512, 1);
    } else {
      add({"ffn_gate", q4, 17408, H, 0});
      add({"ffn_up", q4, 17408, H, 0});
      add({"ffn_down", dn, H, 17408, 0});
      e.us += b.time_quantize(H, 1) + b.time_quantize(17408, 1);
    }
  }
  add({"output", q6, 248320, H, 0});
  return e;
}

// Microseconds per layer of the non-matvec decode kernels at batch 1 (a soft measurement: any
// error gives -1 and the table says n/a). DeltaNet: conv1d+SiLU, 2 L2 norms, delta rule, gated
// norm. Attention: RoPE, attention over a 4K F16 cache (split-K), plus 2 RMSNorms per layer.
struct Mixer {
  double deltanet_us = -1, attention_us = -1;
  double deltanet_fused_us = -1;  // the same layer's DeltaNet as the fused decode kernel
};

Mixer time_mixers(bool moe_model) {
  const int64_t H = moe_model ? 2048 : 5120, Hk = 16, Hv = moe_model ? 32 : 48, dk = 128;
  const int64_t conv = 2 * Hk * dk + Hv * dk, nh = moe_model ? 16 : 24, nkv = moe_model ? 2 : 4;
  const int64_t hd = 256, n_past = 4095;
  Mixer m;
  auto buf = [](size_t bytes) { return DeviceBuffer::alloc(bytes); };
  auto ok = [](const absl::Status& st) {
    if (!st.ok()) std::fprintf(stderr, "mixer timing: %s\n", st.ToString().c_str());
    return st.ok();
  };
  auto fb = buf(size_t{64} << 20), state = buf(size_t(Hv * dk * dk) * 4 + 4096);
  auto kc = buf(size_t(n_past + 1) * nkv * hd * 2), vc = buf(size_t(n_past + 1) * nkv * hd * 2);
  auto ws = buf(attention_workspace_bytes(1, nh, hd, n_past) + 256), pos = buf(64);
  if (!fb.ok() || !state.ok() || !kc.ok() || !vc.ok() || !ws.ok() || !pos.ok()) return m;
  for (DeviceBuffer* d : {&*fb, &*state, &*kc, &*vc})
    if (!ok(fill_random(d->get(), d->size(), 99))) return m;
  // Bounded inputs: random bytes as floats can be NaN; use small normal-ish values instead.
  std::vector<float> hf(size_t{16} << 20);
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 0.3f);
  for (auto& v : hf) v = nd(rng);
  if (!ok(copy_to_device(fb->get(), hf.data(), hf.size() * 4))) return m;
  std::vector<float> hs(Hv * dk * dk, 0.01f);
  if (!ok(copy_to_device(state->get(), hs.data(), hs.size() * 4))) return m;
  std::vector<uint16_t> hkv(size_t(n_past + 1) * nkv * hd, 0x2E66);  // f16 ~0.1
  if (!ok(copy_to_device(kc->get(), hkv.data(), hkv.size() * 2)) ||
      !ok(copy_to_device(vc->get(), hkv.data(), hkv.size() * 2)))
    return m;
  const int64_t p_host = n_past;
  if (!ok(copy_to_device(pos->get(), &p_host, 8))) return m;
  float* f = fb->as<float>();
  float* u = f;                     // conv inputs [conv]
  float* cw = f + (1 << 20);        // conv weights [conv][4]
  float* cs = f + (2 << 20);        // conv state [3][conv]
  float* co = f + (3 << 20);        // conv output
  float* g = f + (4 << 20);         // gates, beta (<= 0 log decay: |normal| negated below)
  float* out = f + (5 << 20);
  float* w = f + (6 << 20);
  float* z = f + (7 << 20);
  std::vector<float> hg(2 * Hv);
  for (auto& v : hg) v = -std::fabs(nd(rng));
  for (int64_t i = Hv; i < 2 * Hv; ++i) hg[i] = 0.5f;
  if (!ok(copy_to_device(g, hg.data(), hg.size() * 4))) return m;
  const DeltaNetDims d{1, Hk, Hv, dk, dk};
  auto deltanet = [&]() {
    return ok(rms_norm(u, w, 1, H, 1e-6f, out)) &&
           ok(conv1d_silu(u, 1, conv, cw, 4, cs, co)) &&
           ok(l2_norm(co, Hk, dk, 1e-6f)) && ok(l2_norm(co + Hk * dk, Hk, dk, 1e-6f)) &&
           ok(delta_rule(d, co, co + Hk * dk, co + 2 * Hk * dk, g, g + Hv, state->as<float>(),
                         out)) &&
           ok(rms_norm_gated(out, w, z, Hv, dk, 1e-6f, out)) && ok(rms_norm(u, w, 1, H, 1e-6f, out));
  };
  const KvView kv_k{GgmlType::F16, kc->get(), nkv, hd, size_t(nkv * hd * 2)};
  const KvView kv_v{GgmlType::F16, vc->get(), nkv, hd, size_t(nkv * hd * 2)};
  auto attn = [&]() {
    return ok(rms_norm(u, w, 1, H, 1e-6f, out)) &&
           ok(rope_neox(co, 1, nh + nkv, hd, 64, pos->as<int64_t>(), 1e7f)) &&
           ok(attention(co, 1, nh, hd, kv_k, kv_v, n_past, 0.0625f, out, ws->get(), ws->size())) &&
           ok(rms_norm(u, w, 1, H, 1e-6f, out));
  };
  auto time = [&](auto&& fn) -> double {
    for (int i = 0; i < 3; ++i)
      if (!fn()) return -1;
    EventTimer tm;
    if (!ok(tm.start())) return -1;
    for (int i = 0; i < 50; ++i)
      if (!fn()) return -1;
    if (!ok(tm.stop())) return -1;
    auto ms = tm.elapsed_ms();
    return ms.ok() ? *ms * 1e3 / 50 : -1;
  };
  m.deltanet_us = time(deltanet);
  m.attention_us = time(attn);
  // The fused decode kernel (one launch: conv, norms, gates, state update, readout, gated norm).
  const size_t conv_bytes = size_t(3 * conv) * 4;
  auto dstate = buf(conv_bytes + size_t(Hv * dk * dk) * 4), dbase = buf(64), dcnt = buf(Hk * 4);
  if (dstate.ok() && dbase.ok() && dcnt.ok() && ok(fill_bytes(dstate->get(), 0, dstate->size())) &&
      ok(fill_bytes(dcnt->get(), 0, dcnt->size())) &&
      ok(copy_to_device(static_cast<uint8_t*>(dstate->get()) + conv_bytes, hs.data(),
                        hs.size() * 4))) {
    uint8_t* base = static_cast<uint8_t*>(dstate->get());
    if (ok(copy_to_device(dbase->get(), &base, sizeof base))) {
      dn::DecodeArgs a;
      a.Hk = Hk;
      a.Hv = Hv;
      a.dk = dk;
      a.dv = dk;
      a.K = 4;
      a.u = u;
      a.z = z;
      a.b = g + Hv;
      a.al = g;
      a.conv_w = cw;
      a.ssm_a = g;
      a.dt_bias = g + Hv;
      a.norm_w = w;
      a.q_scale = 1.0f / std::sqrt(float(dk));
      a.seq_base = dbase->as<uint8_t*>();
      a.ssm_off = conv_bytes;
      a.y = out;
      a.counters = dcnt->as<int>();
      m.deltanet_fused_us = time([&] {
        return ok(rms_norm(u, w, 1, H, 1e-6f, out)) && ok(dn_decode(a, 1)) &&
               ok(rms_norm(u, w, 1, H, 1e-6f, out));
      });
    }
  }
  return m;
}

// Sampling on the GPU over the real vocabulary (248320), per call (host packing, uploads, the
// kernel and the ids back), for 1 and 32 rows.
void time_sampler() {
  const int64_t V = 248320;
  std::vector<float> h(size_t{32} * V);
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  for (auto& v : h) v = nd(rng);
  auto d = DeviceBuffer::alloc(h.size() * 4);
  if (!d.ok()) return;
  SamplerParams topk, topp, greedy;
  topk.temperature = 0.8f;
  topk.top_k = 40;
  topk.top_p = 0.95f;
  topk.presence_penalty = 0.5f;
  topp.temperature = 1.0f;
  topp.top_p = 0.9f;
  greedy.temperature = 0.0f;
  TokenCounts counts;
  std::vector<int32_t> hist(300);
  for (auto& t : hist) t = static_cast<int32_t>(rng() % V);
  counts.AddPrompt(hist);
  DeviceSampler sampler;
  std::printf("\nsampling on the GPU, vocabulary %lld (us per call: pack, upload, kernel, ids back)\n",
              static_cast<long long>(V));
  for (const auto& [name, p] : {std::pair<const char*, const SamplerParams*>{"top-k 40 + top-p 0.95 + presence", &topk},
                                {"top-p 0.9 alone", &topp}, {"greedy", &greedy}})
    for (int rows : {1, 32}) {
      std::vector<SampleRequest> reqs(rows, SampleRequest{p, &counts, 0});
      std::vector<int32_t> ids(rows);
      double best = 1e30;
      for (int rep = 0; rep < 5; ++rep) {
        if (!copy_to_device(d->get(), h.data(), size_t(rows) * V * 4).ok()) return;
        if (!synchronize().ok()) return;
        const auto t0 = std::chrono::steady_clock::now();
        const absl::Status st = sampler.Sample(d->as<float>(), V, V, reqs, ids.data(), nullptr);
        const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
        if (!st.ok()) {
          std::printf("sampler: %s\n", st.ToString().c_str());
          return;
        }
        best = std::min(best, us);
      }
      std::printf("  %-36s %2d rows: %8.1f us\n", name, rows, best);
    }
}

int run(int argc, char** argv) {
  Bench b;
  for (int i = 1; i < argc; ++i)
    if (std::strcmp(argv[i], "--quick") == 0) b.quick = true;
  std::string why;
  if (!cuda_available(&why)) {
    std::printf("gpu_bench: no CUDA device (%s); nothing measured\n", why.c_str());
    return 0;
  }
  const DeviceInfo di = value_or_die(device_info(0), "device_info");
  std::printf("device: %s, sm_%d%d, %d SMs, %.1f GiB (%.1f GiB free), L2 %.0f MiB\n",
              di.name.c_str(), di.cc_major, di.cc_minor, di.sm_count, di.total_mem / 1073741824.0,
              di.free_mem / 1073741824.0, di.l2_bytes / 1048576.0);
  b.init();
  b.bandwidth();
  const double bw = std::max(b.read_gbs, b.copy_gbs);

  // Per-format matvec on representative decode shapes.
  const GgmlType fmts[] = {GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::Q8_0,
                           GgmlType::IQ4_XS, GgmlType::Q4_0, GgmlType::F16, GgmlType::BF16,
                           GgmlType::F32};
  struct Shape {
    const char* name;
    int64_t rows, cols;
    int n_tok, moe;
  };
  const Shape shapes[] = {
      {"35b experts gate/up 8x512x2048 (1 launch)", 512, 2048, 1, 1},
      {"35b experts down 8x2048x512 (1 launch, weighted sum)", 2048, 512, 1, 2},
      {"35b attn_qkv 8192x2048", 8192, 2048, 1, 0},
      {"27b ffn_up 17408x5120", 17408, 5120, 1, 0},
      {"27b ffn_up 17408x5120, 8 tokens", 17408, 5120, 8, 0},
  };
  std::printf("\nmatvec (%% of the best measured bandwidth, %.0f GB/s)\n", bw);
  std::printf("%-8s %-54s %9s %8s %6s\n", "format", "shape", "us", "GB/s", "%bw");
  for (GgmlType t : fmts)
    for (const Shape& s : shapes) {
      if (b.quick && s.n_tok > 1 && t != GgmlType::Q4_K) continue;
      const double us = b.time_matvec(t, s.rows, s.cols, s.n_tok, s.moe);
      const double gbs = weight_bytes(t, s.rows, s.cols, s.moe) / (us * 1e-6) / 1e9;
      std::printf("%-8s %-54s %9.2f %8.0f %5.1f%%\n", type_name(t), s.name, us, gbs,
                  100.0 * gbs / bw);
    }
  // The LM head alone.
  {
    const double us = b.time_matvec(GgmlType::Q6_K, 248320, 2048, 1, 0);
    const double gbs = weight_bytes(GgmlType::Q6_K, 248320, 2048, 0) / (us * 1e-6) / 1e9;
    std::printf("%-8s %-54s %9.2f %8.0f %5.1f%%\n", "Q6_K", "output 248320x2048", us, gbs,
                100.0 * gbs / bw);
  }

  const Estimate e35 = estimate(b, true), e27 = estimate(b, false);
  const Mixer m35 = time_mixers(true), m27 = time_mixers(false);
  std::printf("\nmixer kernels per layer (batch 1, 4K context): 35b DeltaNet %.1f us, attention "
              "%.1f us; 27b DeltaNet %.1f us, attention %.1f us\n",
              m35.deltanet_us, m35.attention_us, m27.deltanet_us, m27.attention_us);
  std::printf("DeltaNet as the fused decode kernel: 35b %.1f us, 27b %.1f us per layer\n",
              m35.deltanet_fused_us, m27.deltanet_fused_us);
  time_sampler();
  auto with_mixers = [](const Estimate& e, const Mixer& m, int64_t layers) {
    if (m.deltanet_us < 0 || m.attention_us < 0) return -1.0;
    return e.us + (layers * 3 / 4) * m.deltanet_us + (layers / 4) * m.attention_us;
  };
  const double w35 = with_mixers(e35, m35, 40), w27 = with_mixers(e27, m27, 64);
  std::printf("\n==== rigserve GPU check: %s (sm_%d%d) ====\n", di.name.c_str(), di.cc_major,
              di.cc_minor);
  std::printf("%-34s %12s\n", "D2D copy bandwidth (r+w)", (std::to_string(int(b.copy_gbs)) + " GB/s").c_str());
  std::printf("%-34s %12s\n", "read-only kernel bandwidth", (std::to_string(int(b.read_gbs)) + " GB/s").c_str());
  std::printf("%-34s %10s %10s %9s %7s %11s %12s\n", "decode batch 1 (matvec-only estimate)",
              "MB/token", "us/token", "tok/s", "%bw", "roofline", "+mixers tok/s");
  for (const auto& [name, e, wm] :
       {std::tuple<const char*, Estimate, double>{"35b-a3b Q4_K_M", e35, w35},
        {"27b Q4_K_M", e27, w27}}) {
    const double gbs = e.bytes / (e.us * 1e-6) / 1e9;
    std::printf("%-34s %10.0f %10.0f %9.0f %6.1f%% %7.0f tok/s %12.0f\n", name, e.bytes / 1e6,
                e.us, 1e6 / e.us, 100.0 * gbs / bw, bw * 1e9 / e.bytes, wm > 0 ? 1e6 / wm : -1.0);
  }
  std::printf("(matvec-only estimate: sum of the measured matvec + activation-quantise times of\n"
              " one token's active weights, launched back to back without a CUDA graph; no\n"
              " attention, DeltaNet, norms or sampling: not a full model run. '+mixers' adds the\n"
              " measured per-layer DeltaNet / attention kernels at 4K context; still no sampling,\n"
              " residual adds or routing glue)\n");
  return 0;
}

}  // namespace
}  // namespace rs::cuda

int main(int argc, char** argv) { return rs::cuda::run(argc, argv); }
