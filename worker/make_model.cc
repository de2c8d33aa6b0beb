#include "worker/make_model.h"

#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "worker/default_chat_template.h"
#include "worker/vocab_gen.h"

namespace rs {
namespace {

// ---- deterministic random numbers -------------------------------------------------------------

uint64_t SplitMix64(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t Fnv1a(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

inline uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

// xoshiro256** (Blackman & Vigna), seeded from splitmix64.
class Rng {
 public:
  Rng(uint64_t seed, uint64_t stream, uint64_t row) {
    uint64_t x = seed;
    uint64_t mix = SplitMix64(x) ^ stream;
    mix = SplitMix64(mix) ^ row;
    for (auto& v : s_) v = SplitMix64(mix);
  }
  uint64_t Next() {
    const uint64_t result = Rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = Rotl(s_[3], 45);
    return result;
  }
  // Uniform in [0, 1) with 53 random bits.
  double Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }
  // Unit-variance approximately normal: (sum of 4 uniforms - 2) * sqrt(3).
  double Normal() {
    return (Uniform() + Uniform() + Uniform() + Uniform() - 2.0) * 1.7320508075688772;
  }

 private:
  uint64_t s_[4];
};

// ---- quantisation policy ----------------------------------------------------------------------

struct SchemeInfo {
  QuantScheme q;
  const char* name;
  uint32_t file_type;
  GgmlType base;
};

constexpr SchemeInfo kSchemes[] = {
    {QuantScheme::kF32, "F32", 0, GgmlType::F32},
    {QuantScheme::kF16, "F16", 1, GgmlType::F16},
    {QuantScheme::kBF16, "BF16", 32, GgmlType::BF16},
    {QuantScheme::kQ8_0, "Q8_0", 7, GgmlType::Q8_0},
    {QuantScheme::kQ4_K, "Q4_K", 14, GgmlType::Q4_K},
    {QuantScheme::kQ5_K, "Q5_K", 16, GgmlType::Q5_K},
    {QuantScheme::kQ6_K, "Q6_K", 18, GgmlType::Q6_K},
    {QuantScheme::kQ4_K_M, "Q4_K_M", 15, GgmlType::Q4_K},
    {QuantScheme::kQ5_K_M, "Q5_K_M", 17, GgmlType::Q5_K},
    {QuantScheme::kIQ4_XS, "IQ4_XS", 30, GgmlType::IQ4_XS},
};

const SchemeInfo& Info(QuantScheme q) {
  for (const auto& s : kSchemes)
    if (s.q == q) return s;
  return kSchemes[0];
}

// llama.cpp's llama-quantize rule for the layers that get more bits in the _M mixes.
bool UseMoreBits(int64_t i, int64_t n) {
  return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

// ---- tensor table -----------------------------------------------------------------------------

class TableBuilder {
 public:
  TableBuilder(const ModelPreset& p, QuantScheme q) : p_(p), q_(q) {}

  // A weight matrix: type from the scheme, N(0, scale).
  void Weight(const std::string& name, std::string_view kind, int64_t layer,
              std::vector<int64_t> ne, float scale) {
    TensorPlan t;
    t.name = name;
    t.type = WeightTypeFor(q_, kind, layer, p_.n_layer, ne[0]);
    t.ne = std::move(ne);
    t.init = WeightInit::kNormal;
    t.scale = scale;
    tensors_.push_back(std::move(t));
  }
  // An F32 tensor whatever the scheme.
  void F32(const std::string& name, std::vector<int64_t> ne, WeightInit init, float scale) {
    TensorPlan t;
    t.name = name;
    t.type = GgmlType::F32;
    t.ne = std::move(ne);
    t.init = init;
    t.scale = scale;
    tensors_.push_back(std::move(t));
  }

  std::vector<TensorPlan> Build() {
    const int64_t H = p_.n_embd, V = p_.n_vocab;
    const float kNormW = 0.1f;
    auto inv_sqrt = [](int64_t n) { return static_cast<float>(1.0 / std::sqrt(double(n))); };
    Weight("token_embd.weight", "token_embd", -1, {H, V}, 1.0f);
    F32("output_norm.weight", {H}, WeightInit::kOnePlusNormal, kNormW);
    Weight("output.weight", "output", -1, {H, V}, 2.0f * inv_sqrt(H));
    for (int64_t i = 0; i < p_.n_layer; ++i) {
      const std::string b = absl::StrCat("blk.", i, ".");
      F32(b + "attn_norm.weight", {H}, WeightInit::kOnePlusNormal, kNormW);
      if (p_.is_attention_layer(i)) {
        const int64_t hd = p_.head_dim, nh = p_.n_head, nkv = p_.n_head_kv;
        Weight(b + "attn_q.weight", "attn_q", i, {H, 2 * nh * hd}, inv_sqrt(H));
        Weight(b + "attn_k.weight", "attn_k", i, {H, nkv * hd}, inv_sqrt(H));
        Weight(b + "attn_v.weight", "attn_v", i, {H, nkv * hd}, inv_sqrt(H));
        Weight(b + "attn_output.weight", "attn_output", i, {nh * hd, H}, inv_sqrt(nh * hd));
        F32(b + "attn_q_norm.weight", {hd}, WeightInit::kOnePlusNormal, kNormW);
        F32(b + "attn_k_norm.weight", {hd}, WeightInit::kOnePlusNormal, kNormW);
      } else {
        const int64_t hv = p_.ssm_v_heads, vd = p_.value_dim(), cd = p_.conv_dim();
        Weight(b + "attn_qkv.weight", "attn_qkv", i, {H, cd}, inv_sqrt(H));
        Weight(b + "attn_gate.weight", "attn_gate", i, {H, vd}, inv_sqrt(H));
        Weight(b + "ssm_beta.weight", "ssm_beta", i, {H, hv}, inv_sqrt(H));
        Weight(b + "ssm_alpha.weight", "ssm_alpha", i, {H, hv}, inv_sqrt(H));
        F32(b + "ssm_conv1d.weight", {p_.conv_kernel, cd}, WeightInit::kNormal, 0.5f);
        F32(b + "ssm_dt.bias", {hv}, WeightInit::kDtBias, 0);
        F32(b + "ssm_a", {hv}, WeightInit::kSsmA, 0);
        F32(b + "ssm_norm.weight", {p_.ssm_head_dim}, WeightInit::kOnePlusNormal, kNormW);
        Weight(b + "ssm_out.weight", "ssm_out", i, {vd, H}, inv_sqrt(vd));
      }
      F32(b + "post_attention_norm.weight", {H}, WeightInit::kOnePlusNormal, kNormW);
      if (p_.is_moe()) {
        const int64_t E = p_.n_expert, I = p_.n_ff_exp, Is = p_.n_ff_shexp;
        F32(b + "ffn_gate_inp.weight", {H, E}, WeightInit::kNormal, inv_sqrt(H));
        Weight(b + "ffn_gate_exps.weight", "ffn_gate_exps", i, {H, I, E}, inv_sqrt(H));
        Weight(b + "ffn_up_exps.weight", "ffn_up_exps", i, {H, I, E}, inv_sqrt(H));
        Weight(b + "ffn_down_exps.weight", "ffn_down_exps", i, {I, H, E}, inv_sqrt(I));
        F32(b + "ffn_gate_inp_shexp.weight", {H}, WeightInit::kNormal, inv_sqrt(H));
        Weight(b + "ffn_gate_shexp.weight", "ffn_gate_shexp", i, {H, Is}, inv_sqrt(H));
        Weight(b + "ffn_up_shexp.weight", "ffn_up_shexp", i, {H, Is}, inv_sqrt(H));
        Weight(b + "ffn_down_shexp.weight", "ffn_down_shexp", i, {Is, H}, inv_sqrt(Is));
      } else {
        const int64_t F = p_.n_ff;
        Weight(b + "ffn_gate.weight", "ffn_gate", i, {H, F}, inv_sqrt(H));
        Weight(b + "ffn_up.weight", "ffn_up", i, {H, F}, inv_sqrt(H));
        Weight(b + "ffn_down.weight", "ffn_down", i, {F, H}, inv_sqrt(F));
      }
    }
    return std::move(tensors_);
  }

 private:
  const ModelPreset& p_;
  QuantScheme q_;
  std::vector<TensorPlan> tensors_;
};

std::vector<gguf::KeyValue> BuildMetadata(const ModelPreset& p, QuantScheme q,
                                          const GeneratedVocab& vocab) {
  using gguf::Value;
  std::vector<gguf::KeyValue> kv;
  const std::string a = arch_name(p.arch);
  auto add = [&](std::string key, Value v) { kv.push_back({std::move(key), std::move(v)}); };
  auto u32 = [](int64_t v) { return Value::U32(static_cast<uint32_t>(v)); };
  add("general.architecture", Value::Str(a));
  add("general.name", Value::Str(absl::StrCat("rigserve random ", a, " ", p.name, " ",
                                              QuantSchemeName(q))));
  add(a + ".context_length", u32(p.context_length));
  add(a + ".embedding_length", u32(p.n_embd));
  add(a + ".block_count", u32(p.n_layer));
  if (!p.is_moe()) add(a + ".feed_forward_length", u32(p.n_ff));
  add(a + ".attention.head_count", u32(p.n_head));
  add(a + ".attention.head_count_kv", u32(p.n_head_kv));
  add(a + ".attention.key_length", u32(p.head_dim));
  add(a + ".attention.value_length", u32(p.head_dim));
  add(a + ".rope.freq_base", Value::F32(static_cast<float>(p.rope_base)));
  add(a + ".rope.dimension_count", u32(p.rope_dims));
  add(a + ".rope.dimension_sections",
      Value::I32Array({p.rope_sections[0], p.rope_sections[1], p.rope_sections[2],
                       p.rope_sections[3]}));
  add(a + ".attention.layer_norm_rms_epsilon", Value::F32(static_cast<float>(p.rms_eps)));
  add(a + ".ssm.conv_kernel", u32(p.conv_kernel));
  add(a + ".ssm.state_size", u32(p.ssm_head_dim));
  add(a + ".ssm.group_count", u32(p.ssm_k_heads));
  add(a + ".ssm.time_step_rank", u32(p.ssm_v_heads));
  add(a + ".ssm.inner_size", u32(p.value_dim()));
  add(a + ".full_attention_interval", u32(p.full_attention_interval));
  if (p.is_moe()) {
    add(a + ".expert_count", u32(p.n_expert));
    add(a + ".expert_used_count", u32(p.n_expert_used));
    add(a + ".expert_feed_forward_length", u32(p.n_ff_exp));
    add(a + ".expert_shared_feed_forward_length", u32(p.n_ff_shexp));
  }
  add("tokenizer.ggml.model", Value::Str("gpt2"));
  add("tokenizer.ggml.pre", Value::Str("qwen35"));
  add("tokenizer.ggml.tokens", Value::StrArray(vocab.tokens));
  add("tokenizer.ggml.token_type", Value::I32Array(vocab.types));
  add("tokenizer.ggml.merges", Value::StrArray(vocab.merges));
  add("tokenizer.ggml.bos_token_id", u32(vocab.bos_id));
  add("tokenizer.ggml.eos_token_id", u32(vocab.eos_id));
  add("tokenizer.ggml.padding_token_id", u32(vocab.pad_id));
  add("tokenizer.ggml.add_bos_token", Value::Bool(false));
  add("tokenizer.chat_template", Value::Str(kDefaultChatTemplate));
  add("general.quantization_version", u32(2));
  add("general.file_type", u32(FileTypeOf(q)));
  return kv;
}

// ---- progress ---------------------------------------------------------------------------------

class Progress {
 public:
  Progress(bool enabled, uint64_t total) : enabled_(enabled), total_(total), tty_(isatty(2)) {
    start_ = last_ = std::chrono::steady_clock::now();
  }
  void Add(uint64_t bytes, const std::string& name) {
    done_ += bytes;
    if (!enabled_) return;
    const auto now = std::chrono::steady_clock::now();
    const double since = std::chrono::duration<double>(now - last_).count();
    if (since < (tty_ ? 0.5 : 5.0) && done_ < total_) return;
    last_ = now;
    Print(name, now);
  }
  void Finish() {
    if (!enabled_) return;
    Print("done", std::chrono::steady_clock::now());
    if (tty_) std::fputc('\n', stderr);
  }

 private:
  void Print(const std::string& what, std::chrono::steady_clock::time_point now) {
    const double secs = std::chrono::duration<double>(now - start_).count();
    const double pct = total_ ? 100.0 * static_cast<double>(done_) / static_cast<double>(total_)
                              : 100.0;
    const double rate = secs > 0 ? static_cast<double>(done_) / secs / 1e6 : 0.0;
    std::fprintf(stderr, "%smake-model: %.2f / %.2f GB (%5.1f%%), %.0f MB/s, %s%s",
                 tty_ ? "\r" : "", static_cast<double>(done_) / 1e9,
                 static_cast<double>(total_) / 1e9, pct, rate, what.c_str(),
                 tty_ ? "\033[K" : "\n");
    std::fflush(stderr);
  }

  bool enabled_;
  uint64_t total_;
  uint64_t done_ = 0;
  bool tty_;
  std::chrono::steady_clock::time_point start_, last_;
};

std::string DirOf(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

// ---- public API -------------------------------------------------------------------------------

absl::StatusOr<QuantScheme> ParseQuantScheme(std::string_view name) {
  const std::string up = absl::AsciiStrToUpper(std::string(name));
  for (const auto& s : kSchemes)
    if (up == s.name) return s.q;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown --quant '", std::string(name), "' (one of ", QuantSchemeList(), ")"));
}

const char* QuantSchemeName(QuantScheme q) { return Info(q).name; }
uint32_t FileTypeOf(QuantScheme q) { return Info(q).file_type; }

std::string QuantSchemeList() {
  std::string out;
  for (const auto& s : kSchemes) absl::StrAppend(&out, out.empty() ? "" : "|", s.name);
  return out;
}

int64_t TensorPlan::n_elements() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

uint64_t TensorPlan::n_bytes() const {
  return static_cast<uint64_t>(n_rows()) * row_bytes(type, ne.empty() ? 0 : ne[0]);
}

uint64_t ModelPlan::data_bytes() const {
  uint64_t n = 0;
  for (const auto& t : tensors) n += t.n_bytes();
  return n;
}

GgmlType WeightTypeFor(QuantScheme q, std::string_view kind, int64_t layer, int64_t n_layer,
                       int64_t ne0) {
  GgmlType t = Info(q).base;
  if (q == QuantScheme::kQ4_K_M || q == QuantScheme::kQ5_K_M) {
    const bool v_like = kind == "attn_v" || kind == "attn_qkv";
    const bool down = kind == "ffn_down" || kind == "ffn_down_exps" || kind == "ffn_down_shexp";
    if (kind == "output" || ((v_like || down) && layer >= 0 && UseMoreBits(layer, n_layer)))
      t = GgmlType::Q6_K;
  }
  const TypeInfo* info = type_info(t);
  if (ne0 % info->block_size != 0) t = ne0 % 32 == 0 ? GgmlType::Q8_0 : GgmlType::F16;
  return t;
}

absl::StatusOr<ModelPlan> BuildModelPlan(const ModelPreset& preset, QuantScheme quant) {
  if (absl::Status s = ValidatePreset(preset); !s.ok()) return s;
  // As many merges as fit next to the bytes and the specials (kDefaultMerges at most).
  const int64_t room = preset.n_vocab - 256 - static_cast<int64_t>(Qwen35SpecialTokens().size());
  absl::StatusOr<GeneratedVocab> vocab =
      GenerateVocab(preset.n_vocab, static_cast<int>(std::clamp<int64_t>(room, 0, kDefaultMerges)));
  if (!vocab.ok()) return vocab.status();
  ModelPlan plan;
  plan.preset = preset;
  plan.quant = quant;
  plan.metadata = BuildMetadata(preset, quant, *vocab);
  plan.tensors = TableBuilder(preset, quant).Build();
  return plan;
}

void GenerateRowF32(const TensorPlan& t, uint64_t seed, int64_t row, float* out) {
  Rng rng(seed, Fnv1a(t.name), static_cast<uint64_t>(row));
  const int64_t n = t.ne.empty() ? 0 : t.ne[0];
  switch (t.init) {
    case WeightInit::kNormal:
      for (int64_t j = 0; j < n; ++j) out[j] = static_cast<float>(rng.Normal() * t.scale);
      break;
    case WeightInit::kOnePlusNormal:
      for (int64_t j = 0; j < n; ++j) out[j] = static_cast<float>(1.0 + rng.Normal() * t.scale);
      break;
    case WeightInit::kSsmA:
      for (int64_t j = 0; j < n; ++j)
        out[j] = static_cast<float>(-std::exp(rng.Uniform() * std::log(16.0)));
      break;
    case WeightInit::kDtBias:
      for (int64_t j = 0; j < n; ++j) {
        const double lo = std::log(1e-3), hi = std::log(1e-1);
        const double dt = std::exp(lo + rng.Uniform() * (hi - lo));
        out[j] = static_cast<float>(dt + std::log(-std::expm1(-dt)));  // softplus^-1(dt)
      }
      break;
  }
}

void GenerateRows(const TensorPlan& t, uint64_t seed, int64_t row0, int64_t n_rows,
                  uint8_t* dst) {
  const int64_t n = t.ne.empty() ? 0 : t.ne[0];
  const size_t rb = row_bytes(t.type, n);
  const bool parallel = n_rows * n >= (1 << 16);
#pragma omp parallel if (parallel)
  {
    std::vector<float> buf(static_cast<size_t>(n));
#pragma omp for schedule(dynamic, 8)
    for (int64_t r = 0; r < n_rows; ++r) {
      float* x = buf.data();
      uint8_t* out = dst + static_cast<size_t>(r) * rb;
      GenerateRowF32(t, seed, row0 + r, x);
      quantize_row_ref(t.type, x, out, n);  // F32/F16/BF16 included (plain conversion)
    }
  }
}

void GenerateTensor(const TensorPlan& t, uint64_t seed, uint8_t* dst) {
  GenerateRows(t, seed, 0, t.n_rows(), dst);
}

namespace {

constexpr int64_t kPoolUnits = 4096;

// Elements per pick: one block of a quantised type, 64 values of a float type.
int64_t PickUnit(GgmlType t) {
  const TypeInfo* ti = type_info(t);
  return ti->block_size > 1 ? ti->block_size : 64;
}

// kPoolUnits units of t's type drawn like t's weights: the rows of a pseudo-tensor named after
// (type, init, scale), so tensors sharing those share the pool.
std::shared_ptr<const std::vector<uint8_t>> MakeBlockPool(const TensorPlan& t, uint64_t seed) {
  TensorPlan pool;
  pool.name = absl::StrCat("block-pool/", type_name(t.type), "/", static_cast<int>(t.init), "/",
                           absl::StrFormat("%a", t.scale));
  pool.type = t.type;
  pool.init = t.init;
  pool.scale = t.scale;
  const int64_t per_row = 16;  // units per pool row
  pool.ne = {PickUnit(t.type) * per_row, kPoolUnits / per_row};
  auto bytes = std::make_shared<std::vector<uint8_t>>(pool.n_bytes());
  GenerateTensor(pool, seed, bytes->data());
  return bytes;
}

std::shared_ptr<const std::vector<uint8_t>> CachedBlockPool(const TensorPlan& t, uint64_t seed) {
  static std::mutex mu;
  static auto* cache = new std::map<std::string, std::shared_ptr<const std::vector<uint8_t>>>;
  const std::string key = absl::StrCat(seed, "/", static_cast<int>(t.type), "/",
                                       static_cast<int>(t.init), "/",
                                       absl::StrFormat("%a", t.scale));
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache->find(key);
  if (it != cache->end()) return it->second;
  if (cache->size() >= 32) cache->clear();
  auto pool = MakeBlockPool(t, seed);
  cache->emplace(key, pool);
  return pool;
}

}  // namespace

void GenerateTensorFromBlockPool(const TensorPlan& t, uint64_t seed, uint8_t* dst) {
  const int64_t unit = PickUnit(t.type);
  if (t.ne.empty() || t.ne[0] % unit != 0) {  // a float row not a multiple of 64: exact
    GenerateTensor(t, seed, dst);
    return;
  }
  const std::shared_ptr<const std::vector<uint8_t>> pool = CachedBlockPool(t, seed);
  const size_t bs = row_bytes(t.type, unit);
  const int64_t units_per_row = t.ne[0] / unit;
  const int64_t rows = t.n_rows();
  const uint64_t stream = Fnv1a(t.name) ^ 0x5bd1e9955bd1e995ull;
  const uint8_t* src = pool->data();
#pragma omp parallel for schedule(dynamic, 64) if (rows * units_per_row >= 4096)
  for (int64_t r = 0; r < rows; ++r) {
    Rng rng(seed, stream, static_cast<uint64_t>(r));
    uint8_t* out = dst + static_cast<size_t>(r * units_per_row) * bs;
    for (int64_t b = 0; b < units_per_row; ++b) {
      const uint64_t pick = rng.Next() % kPoolUnits;
      std::memcpy(out + static_cast<size_t>(b) * bs, src + pick * bs, bs);
    }
  }
}

FillMode ResolveFillMode(const ModelPlan& plan, FillMode requested) {
  if (requested != FillMode::kAuto) return requested;
  return plan.data_bytes() <= (64ull << 20) ? FillMode::kExact : FillMode::kBlocks;
}

absl::Status WriteModelFile(const ModelPlan& plan, const std::string& path,
                            const WriteOptions& opts) {
  gguf::Writer w;
  for (const auto& kv : plan.metadata) w.add_kv(kv.key, kv.value);
  const uint64_t total = plan.data_bytes();
  Progress progress(opts.progress, total);
  const FillMode mode = ResolveFillMode(plan, opts.fill);
  for (const auto& t : plan.tensors) {
    const TensorPlan* tp = &t;
    const uint64_t seed = opts.seed;
    const bool blocks = mode == FillMode::kBlocks && t.init == WeightInit::kNormal &&
                        t.n_bytes() >= opts.block_fill_threshold;
    absl::Status s = w.add_tensor(
        t.name, t.type, t.ne,
        [tp, seed, blocks, &progress](uint8_t* dst, uint64_t size) -> absl::Status {
          if (size != tp->n_bytes())
            return absl::InternalError(absl::StrCat("writer asks ", size, " bytes for ", tp->name,
                                                    ", its shape needs ", tp->n_bytes()));
          if (blocks) {
            GenerateTensorFromBlockPool(*tp, seed, dst);
          } else {
            GenerateTensor(*tp, seed, dst);
          }
          progress.Add(size, tp->name);
          return absl::OkStatus();
        });
    if (!s.ok()) return s;
  }
  // Free space: the data section plus a generous bound on the header (tokens, merges).
  uint64_t header = 1 << 20;
  for (const auto& kv : plan.metadata) {
    header += kv.key.size() + 16 + kv.value.s.size();
    for (const auto& e : kv.value.array) header += 16 + e.s.size();
  }
  const uint64_t need = total + header + 64 * plan.tensors.size();
  struct statvfs fs;
  if (statvfs(DirOf(path).c_str(), &fs) == 0) {
    const uint64_t avail = static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize;
    if (avail < need)
      return absl::ResourceExhaustedError(absl::StrFormat(
          "%s needs about %.2f GB but %s has %.2f GB free", path, static_cast<double>(need) / 1e9,
          DirOf(path), static_cast<double>(avail) / 1e9));
  }
  absl::Status s = w.write(path);
  if (!s.ok()) return s;
  progress.Finish();
  return absl::OkStatus();
}

}  // namespace rs
