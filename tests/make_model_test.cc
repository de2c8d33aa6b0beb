// make-model, the presets, the generated vocabulary and --synthetic (worker/make_model.h,
// worker/model_presets.h, worker/vocab_gen.h, worker/synthetic.h), checked against the tables of
// spec/qwen35.md §1, §6.3, §6.4, §7 and against the independently written golden models.
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/formats.h"
#include "worker/cli.h"
#include "worker/gguf.h"
#include "worker/make_model.h"
#include "worker/model.h"
#include "worker/model_presets.h"
#include "worker/synthetic.h"
#include "worker/vocab_gen.h"

namespace rs {

// Test names and failure messages print the scheme's name.
void PrintTo(QuantScheme q, std::ostream* os) { *os << QuantSchemeName(q); }

namespace {

using gguf::ValueType;

std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  std::string base = dir ? dir : "/tmp";
  return base + "/rs_make_model_" + std::to_string(getpid()) + "_" + name;
}

struct TempFile {
  explicit TempFile(const std::string& name) : path(TempPath(name)) {}
  ~TempFile() { std::remove(path.c_str()); }
  std::string path;
};

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

ModelPreset Preset(ModelArch a, const std::string& name) {
  absl::StatusOr<ModelPreset> p = FindPreset(a, name);
  EXPECT_TRUE(p.ok()) << p.status();
  return *p;
}

// A smaller MoE than `tiny` for the sweeps (every K-quant still applies: H = I = Is = 256).
ModelPreset Micro() {
  ModelPreset p = Preset(ModelArch::kMoe, "tiny");
  p.name = "micro";
  p.n_layer = 4;
  p.n_expert = 2;
  p.n_expert_used = 1;
  p.n_ff_exp = 256;
  p.n_ff_shexp = 256;
  p.n_vocab = 384;
  return p;
}

std::unique_ptr<gguf::File> WriteAndOpen(const ModelPreset& p, QuantScheme q, uint64_t seed,
                                         const std::string& path) {
  absl::StatusOr<ModelPlan> plan = BuildModelPlan(p, q);
  EXPECT_TRUE(plan.ok()) << plan.status();
  if (!plan.ok()) return nullptr;
  WriteOptions opts;
  opts.seed = seed;
  absl::Status s = WriteModelFile(*plan, path, opts);
  EXPECT_TRUE(s.ok()) << s;
  absl::StatusOr<std::unique_ptr<gguf::File>> f = gguf::File::Open(path);
  EXPECT_TRUE(f.ok()) << f.status();
  return f.ok() ? std::move(*f) : nullptr;
}

int64_t Uint(const gguf::File& f, const std::string& key) {
  absl::StatusOr<uint64_t> v = f.get_uint(key);
  EXPECT_TRUE(v.ok()) << key << ": " << v.status();
  return v.ok() ? static_cast<int64_t>(*v) : -1;
}

// ---- presets ----------------------------------------------------------------------------------

TEST(PresetTest, AllValid) {
  for (const auto& p : AllPresets()) EXPECT_TRUE(ValidatePreset(p).ok()) << p.name;
}

TEST(PresetTest, RealShapesMatchSpecTable) {
  // spec §1.1: H, layers, nh, nkv, Hv, F or (E, k, I, Is).
  struct Row {
    const char* name;
    ModelArch arch;
    int64_t h, layers, nh, nkv, hv, f, e, k, i, is;
  };
  const Row rows[] = {
      {"27b", ModelArch::kDense, 5120, 64, 24, 4, 48, 17408, 0, 0, 0, 0},
      {"35b-a3b", ModelArch::kMoe, 2048, 40, 16, 2, 32, 0, 256, 8, 512, 512},
      {"122b-a10b", ModelArch::kMoe, 3072, 48, 32, 2, 64, 0, 256, 8, 1024, 1024},
      {"397b-a17b", ModelArch::kMoe, 4096, 60, 32, 2, 64, 0, 512, 10, 1024, 1024},
  };
  for (const Row& r : rows) {
    SCOPED_TRACE(r.name);
    ModelPreset p = Preset(r.arch, r.name);
    EXPECT_EQ(p.n_embd, r.h);
    EXPECT_EQ(p.n_layer, r.layers);
    EXPECT_EQ(p.n_head, r.nh);
    EXPECT_EQ(p.n_head_kv, r.nkv);
    EXPECT_EQ(p.head_dim, 256);
    EXPECT_EQ(p.rope_dims, 64);
    EXPECT_EQ(p.rope_sections, (std::array<int32_t, 4>{11, 11, 10, 0}));
    EXPECT_EQ(p.ssm_k_heads, 16);
    EXPECT_EQ(p.ssm_v_heads, r.hv);
    EXPECT_EQ(p.ssm_head_dim, 128);
    EXPECT_EQ(p.conv_kernel, 4);
    EXPECT_EQ(p.n_vocab, 248320);
    EXPECT_EQ(p.context_length, 262144);
    EXPECT_DOUBLE_EQ(p.rope_base, 1e7);
    EXPECT_DOUBLE_EQ(p.rms_eps, 1e-6);
    EXPECT_EQ(p.n_ff, r.f);
    EXPECT_EQ(p.n_expert, r.e);
    EXPECT_EQ(p.n_expert_used, r.k);
    EXPECT_EQ(p.n_ff_exp, r.i);
    EXPECT_EQ(p.n_ff_shexp, r.is);
  }
}

TEST(PresetTest, NameResolution) {
  EXPECT_EQ(ResolvePresetName("35b-a3b")->arch, ModelArch::kMoe);
  EXPECT_EQ(ResolvePresetName("27b")->arch, ModelArch::kDense);
  EXPECT_EQ(ResolvePresetName("bench-moe")->arch, ModelArch::kMoe);
  EXPECT_EQ(ResolvePresetName("dense-tiny")->arch, ModelArch::kDense);
  EXPECT_EQ(ResolvePresetName("moe-tiny")->arch, ModelArch::kMoe);
  EXPECT_EQ(ResolvePresetName("qwen35-mini")->arch, ModelArch::kDense);
  EXPECT_EQ(ResolvePresetName("qwen35moe-mini")->arch, ModelArch::kMoe);
  EXPECT_EQ(ResolvePresetName("moe-tiny")->name, "tiny");
  absl::StatusOr<ModelPreset> amb = ResolvePresetName("tiny");
  EXPECT_EQ(amb.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(amb.status().message().find("moe-tiny"), std::string::npos) << amb.status();
  EXPECT_EQ(ResolvePresetName("42b").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ResolvePresetName("dense-35b-a3b").status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(FindPreset(ModelArch::kDense, "bench-moe").ok());
}

TEST(PresetTest, BenchMoeIsSizedLikeTheLlamaCppComparison) {
  // Issue 3: "800 MB Q4_K_M Qwen3.5-MoE (E1024, 16 layers, 48 experts top-8)", decoding at
  // 57 tok/s while reading ~11 GB/s, i.e. ~190 MB of weights per token.
  ModelPreset p = Preset(ModelArch::kMoe, "bench-moe");
  EXPECT_EQ(p.n_embd, 1024);
  EXPECT_EQ(p.n_layer, 16);
  EXPECT_EQ(p.n_expert, 48);
  EXPECT_EQ(p.n_expert_used, 8);
  absl::StatusOr<ModelPlan> plan = BuildModelPlan(p, QuantScheme::kQ4_K_M);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const double total = static_cast<double>(plan->data_bytes());
  double per_token = 0;  // every weight but token_embd; experts scaled by k/E
  for (const auto& t : plan->tensors) {
    if (t.name == "token_embd.weight") continue;
    const bool routed = t.name.find("_exps.") != std::string::npos;
    per_token += static_cast<double>(t.n_bytes()) *
                 (routed ? static_cast<double>(p.n_expert_used) / p.n_expert : 1.0);
  }
  EXPECT_GT(total, 720e6);
  EXPECT_LT(total, 880e6);
  EXPECT_GT(per_token, 150e6);
  EXPECT_LT(per_token, 240e6);
  std::printf("bench-moe Q4_K_M: %.1f MB total, %.1f MB read per token\n", total / 1e6,
              per_token / 1e6);
}

// ---- vocabulary -------------------------------------------------------------------------------

TEST(VocabTest, ByteAlphabetMatchesGpt2) {
  EXPECT_EQ(ByteToUnicode('!'), "!");
  EXPECT_EQ(ByteToUnicode(' '), "\xC4\xA0");   // U+0120 Ġ
  EXPECT_EQ(ByteToUnicode('\n'), "\xC4\x8A");  // U+010A Ċ
  EXPECT_EQ(ByteToUnicode(0), "\xC4\x80");     // U+0100
  EXPECT_EQ(ByteToUnicode(0xAD), "\xC5\x83");  // U+0143, the last remapped byte
  const auto& order = ByteTokenOrder();
  ASSERT_EQ(order.size(), 256u);
  EXPECT_EQ(std::set<uint8_t>(order.begin(), order.end()).size(), 256u);
  // Real Qwen ids (spec §7): '\n' = 198, '<' = 27, '|' = 91.
  EXPECT_EQ(order[198], '\n');
  EXPECT_EQ(order[27], '<');
  EXPECT_EQ(order[91], '|');
  std::set<std::string> spelled;
  for (int b = 0; b < 256; ++b) spelled.insert(ByteToUnicode(static_cast<uint8_t>(b)));
  EXPECT_EQ(spelled.size(), 256u);
}

TEST(VocabTest, PreSplitFollowsTheQwenRegexOnAscii) {
  const std::vector<std::string> want = {"Hello", " world", "'s", " ", "1", "2", "3",
                                         "  ",    " x",     "\n\n", "foo", "();\n",
                                         "  ",    " {",     " it", "'ll"};
  EXPECT_EQ(PreSplitAscii("Hello world's 123   x\n\nfoo();\n   { it'll"), want);
}

TEST(VocabTest, ConsistentLayout) {
  absl::StatusOr<GeneratedVocab> v = GenerateVocab(640);
  ASSERT_TRUE(v.ok()) << v.status();
  ASSERT_EQ(v->tokens.size(), 640u);
  ASSERT_EQ(v->types.size(), 640u);
  EXPECT_EQ(v->merges.size(), static_cast<size_t>(kDefaultMerges));
  std::map<std::string, int> id;
  for (size_t i = 0; i < v->tokens.size(); ++i) {
    EXPECT_TRUE(id.emplace(v->tokens[i], static_cast<int>(i)).second)
        << "duplicate token " << v->tokens[i];
  }
  for (int i = 0; i < 256; ++i) {
    EXPECT_EQ(v->tokens[i], ByteToUnicode(ByteTokenOrder()[i]));
    EXPECT_EQ(v->types[i], kTokenNormal);
  }
  // Every merge "a b": a, b and ab are tokens, ab after a and b... and a, b were available by
  // the time of the merge (earlier merges or bytes).
  std::set<std::string> available;
  for (int i = 0; i < 256; ++i) available.insert(v->tokens[i]);
  for (size_t r = 0; r < v->merges.size(); ++r) {
    const std::string& m = v->merges[r];
    const size_t sp = m.find(' ');
    ASSERT_NE(sp, std::string::npos) << m;
    ASSERT_EQ(m.find(' ', sp + 1), std::string::npos) << m;
    const std::string a = m.substr(0, sp), b = m.substr(sp + 1);
    EXPECT_TRUE(available.count(a)) << "merge " << r << " left '" << a << "' not yet a token";
    EXPECT_TRUE(available.count(b)) << "merge " << r << " right '" << b << "' not yet a token";
    ASSERT_TRUE(id.count(a + b)) << "merge result '" << a + b << "' is not a token";
    EXPECT_EQ(v->types[id[a + b]], kTokenNormal);
    EXPECT_LT(id[a + b], v->first_special);
    available.insert(a + b);
  }
  const auto& specials = Qwen35SpecialTokens();
  ASSERT_EQ(specials.size(), 26u);
  EXPECT_EQ(specials.front(), "<|endoftext|>");
  EXPECT_EQ(specials.back(), "</think>");
  for (size_t i = 0; i < specials.size(); ++i) {
    EXPECT_EQ(v->tokens[v->first_special + i], specials[i]);
    EXPECT_EQ(v->types[v->first_special + i], kTokenControl);
  }
  // Offsets as in the real file (248044 + k).
  EXPECT_EQ(v->bos_id, v->first_special + 0);   // <|endoftext|>  248044
  EXPECT_EQ(v->eos_id, v->first_special + 2);   // <|im_end|>     248046
  EXPECT_EQ(v->pad_id, v->first_special + 11);  // <|vision_pad|> 248055
  EXPECT_EQ(v->tokens[v->first_special + 24], "<think>");
  EXPECT_EQ(v->tokens[v->first_special + 14], "<tool_call>");
  for (size_t i = v->first_special + specials.size(); i < v->tokens.size(); ++i) {
    EXPECT_EQ(v->tokens[i], "[PAD" + std::to_string(i) + "]");
    EXPECT_EQ(v->types[i], kTokenUnused);
  }
  // The merges compress English: BPE by rank over " the server is ready" uses fewer tokens than
  // bytes.
  std::vector<std::string> syms;
  for (unsigned char c : std::string(" the server is ready")) syms.push_back(ByteToUnicode(c));
  const size_t bytes = syms.size();
  std::map<std::pair<std::string, std::string>, size_t> rank;
  for (size_t r = 0; r < v->merges.size(); ++r) {
    const size_t sp = v->merges[r].find(' ');
    rank[{v->merges[r].substr(0, sp), v->merges[r].substr(sp + 1)}] = r;
  }
  for (;;) {
    size_t best = SIZE_MAX, at = 0;
    for (size_t i = 0; i + 1 < syms.size(); ++i) {
      auto it = rank.find({syms[i], syms[i + 1]});
      if (it != rank.end() && it->second < best) best = it->second, at = i;
    }
    if (best == SIZE_MAX) break;
    syms[at] += syms[at + 1];
    syms.erase(syms.begin() + static_cast<long>(at) + 1);
  }
  for (const auto& s : syms) EXPECT_TRUE(id.count(s)) << s;
  EXPECT_LE(syms.size() * 2, bytes);
}

TEST(VocabTest, DeterministicAndTooSmallRejected) {
  EXPECT_EQ(GenerateVocab(700)->merges, GenerateVocab(640)->merges);
  absl::StatusOr<GeneratedVocab> small = GenerateVocab(300);
  EXPECT_EQ(small.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(small.status().message().find("300"), std::string::npos) << small.status();
}

// ---- the tensor table against spec §6.4 -------------------------------------------------------

// Expected tensors (name -> shape) for a preset, written out from spec §6.4 independently of
// make_model.cc.
std::map<std::string, std::vector<int64_t>> SpecTable(const ModelPreset& p) {
  std::map<std::string, std::vector<int64_t>> t;
  const int64_t H = p.n_embd, V = p.n_vocab;
  t["token_embd.weight"] = {H, V};
  t["output_norm.weight"] = {H};
  t["output.weight"] = {H, V};
  for (int64_t i = 0; i < p.n_layer; ++i) {
    const std::string b = "blk." + std::to_string(i) + ".";
    t[b + "attn_norm.weight"] = {H};
    t[b + "post_attention_norm.weight"] = {H};
    if ((i + 1) % 4 == 0) {
      t[b + "attn_q.weight"] = {H, 2 * p.n_head * p.head_dim};
      t[b + "attn_k.weight"] = {H, p.n_head_kv * p.head_dim};
      t[b + "attn_v.weight"] = {H, p.n_head_kv * p.head_dim};
      t[b + "attn_output.weight"] = {p.n_head * p.head_dim, H};
      t[b + "attn_q_norm.weight"] = {p.head_dim};
      t[b + "attn_k_norm.weight"] = {p.head_dim};
    } else {
      const int64_t kd = p.ssm_k_heads * p.ssm_head_dim, vd = p.ssm_v_heads * p.ssm_head_dim;
      t[b + "attn_qkv.weight"] = {H, 2 * kd + vd};
      t[b + "attn_gate.weight"] = {H, vd};
      t[b + "ssm_beta.weight"] = {H, p.ssm_v_heads};
      t[b + "ssm_alpha.weight"] = {H, p.ssm_v_heads};
      t[b + "ssm_conv1d.weight"] = {4, 2 * kd + vd};
      t[b + "ssm_dt.bias"] = {p.ssm_v_heads};
      t[b + "ssm_a"] = {p.ssm_v_heads};
      t[b + "ssm_norm.weight"] = {p.ssm_head_dim};
      t[b + "ssm_out.weight"] = {vd, H};
    }
    if (p.is_moe()) {
      t[b + "ffn_gate_inp.weight"] = {H, p.n_expert};
      t[b + "ffn_gate_exps.weight"] = {H, p.n_ff_exp, p.n_expert};
      t[b + "ffn_up_exps.weight"] = {H, p.n_ff_exp, p.n_expert};
      t[b + "ffn_down_exps.weight"] = {p.n_ff_exp, H, p.n_expert};
      t[b + "ffn_gate_inp_shexp.weight"] = {H};
      t[b + "ffn_gate_shexp.weight"] = {H, p.n_ff_shexp};
      t[b + "ffn_up_shexp.weight"] = {H, p.n_ff_shexp};
      t[b + "ffn_down_shexp.weight"] = {p.n_ff_shexp, H};
    } else {
      t[b + "ffn_gate.weight"] = {H, p.n_ff};
      t[b + "ffn_up.weight"] = {H, p.n_ff};
      t[b + "ffn_down.weight"] = {p.n_ff, H};
    }
  }
  return t;
}

bool MustBeF32(const std::string& name) {
  auto ends = [&](const std::string& s) {
    return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
  };
  return ends("norm.weight") || ends("ssm_a") || ends("ssm_dt.bias") ||
         ends("ssm_conv1d.weight") || ends("ffn_gate_inp.weight") ||
         ends("ffn_gate_inp_shexp.weight");
}

void CheckAgainstSpec(const gguf::File& f, const ModelPreset& p, QuantScheme q) {
  const std::string a = arch_name(p.arch);
  // §6.3 keys with their types.
  std::vector<std::pair<std::string, ValueType>> keys = {
      {"general.architecture", ValueType::STRING},
      {"general.name", ValueType::STRING},
      {"general.file_type", ValueType::U32},
      {"general.quantization_version", ValueType::U32},
      {a + ".block_count", ValueType::U32},
      {a + ".context_length", ValueType::U32},
      {a + ".embedding_length", ValueType::U32},
      {a + ".attention.head_count", ValueType::U32},
      {a + ".attention.head_count_kv", ValueType::U32},
      {a + ".attention.key_length", ValueType::U32},
      {a + ".attention.value_length", ValueType::U32},
      {a + ".attention.layer_norm_rms_epsilon", ValueType::F32},
      {a + ".rope.freq_base", ValueType::F32},
      {a + ".rope.dimension_count", ValueType::U32},
      {a + ".rope.dimension_sections", ValueType::ARRAY},
      {a + ".full_attention_interval", ValueType::U32},
      {a + ".ssm.conv_kernel", ValueType::U32},
      {a + ".ssm.state_size", ValueType::U32},
      {a + ".ssm.group_count", ValueType::U32},
      {a + ".ssm.time_step_rank", ValueType::U32},
      {a + ".ssm.inner_size", ValueType::U32},
      {"tokenizer.ggml.model", ValueType::STRING},
      {"tokenizer.ggml.pre", ValueType::STRING},
      {"tokenizer.ggml.tokens", ValueType::ARRAY},
      {"tokenizer.ggml.token_type", ValueType::ARRAY},
      {"tokenizer.ggml.merges", ValueType::ARRAY},
      {"tokenizer.ggml.bos_token_id", ValueType::U32},
      {"tokenizer.ggml.eos_token_id", ValueType::U32},
      {"tokenizer.ggml.padding_token_id", ValueType::U32},
      {"tokenizer.ggml.add_bos_token", ValueType::BOOL},
      {"tokenizer.chat_template", ValueType::STRING},
  };
  if (p.is_moe()) {
    for (const char* k : {".expert_count", ".expert_used_count", ".expert_feed_forward_length",
                          ".expert_shared_feed_forward_length"})
      keys.push_back({a + k, ValueType::U32});
    EXPECT_EQ(f.find(a + ".feed_forward_length"), nullptr);
  } else {
    keys.push_back({a + ".feed_forward_length", ValueType::U32});
  }
  for (const auto& [key, type] : keys) {
    const gguf::Value* v = f.find(key);
    ASSERT_NE(v, nullptr) << "missing key " << key;
    EXPECT_EQ(v->type, type) << key;
  }
  EXPECT_EQ(f.metadata().size(), keys.size());
  EXPECT_EQ(*f.get_string("general.architecture"), a);
  EXPECT_EQ(Uint(f, "general.file_type"), FileTypeOf(q));
  EXPECT_EQ(Uint(f, a + ".block_count"), p.n_layer);
  EXPECT_EQ(Uint(f, a + ".embedding_length"), p.n_embd);
  EXPECT_EQ(Uint(f, a + ".attention.head_count"), p.n_head);
  EXPECT_EQ(Uint(f, a + ".attention.head_count_kv"), p.n_head_kv);
  EXPECT_EQ(Uint(f, a + ".attention.key_length"), p.head_dim);
  EXPECT_EQ(Uint(f, a + ".attention.value_length"), p.head_dim);
  EXPECT_EQ(Uint(f, a + ".rope.dimension_count"), p.rope_dims);
  EXPECT_EQ(Uint(f, a + ".full_attention_interval"), 4);
  EXPECT_EQ(Uint(f, a + ".ssm.conv_kernel"), 4);
  EXPECT_EQ(Uint(f, a + ".ssm.state_size"), p.ssm_head_dim);
  EXPECT_EQ(Uint(f, a + ".ssm.group_count"), p.ssm_k_heads);
  EXPECT_EQ(Uint(f, a + ".ssm.time_step_rank"), p.ssm_v_heads);
  EXPECT_EQ(Uint(f, a + ".ssm.inner_size"), p.ssm_v_heads * p.ssm_head_dim);
  EXPECT_FLOAT_EQ(static_cast<float>(*f.get_float(a + ".rope.freq_base")), 1e7f);
  EXPECT_FLOAT_EQ(static_cast<float>(*f.get_float(a + ".attention.layer_norm_rms_epsilon")),
                  1e-6f);
  const gguf::Value* sec = f.find(a + ".rope.dimension_sections");
  ASSERT_EQ(sec->elem_type, ValueType::I32);
  ASSERT_EQ(sec->array.size(), 4u);
  EXPECT_EQ(2 * (sec->array[0].i + sec->array[1].i + sec->array[2].i), p.rope_dims);
  if (p.is_moe()) {
    EXPECT_EQ(Uint(f, a + ".expert_count"), p.n_expert);
    EXPECT_EQ(Uint(f, a + ".expert_used_count"), p.n_expert_used);
    EXPECT_EQ(Uint(f, a + ".expert_feed_forward_length"), p.n_ff_exp);
    EXPECT_EQ(Uint(f, a + ".expert_shared_feed_forward_length"), p.n_ff_shexp);
  } else {
    EXPECT_EQ(Uint(f, a + ".feed_forward_length"), p.n_ff);
  }
  // §7 tokenizer keys.
  EXPECT_EQ(*f.get_string("tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(*f.get_string("tokenizer.ggml.pre"), "qwen35");
  EXPECT_EQ(*f.get_bool("tokenizer.ggml.add_bos_token"), false);
  const gguf::Value* tokens = f.find("tokenizer.ggml.tokens");
  const gguf::Value* types = f.find("tokenizer.ggml.token_type");
  ASSERT_EQ(tokens->elem_type, ValueType::STRING);
  ASSERT_EQ(types->elem_type, ValueType::I32);
  ASSERT_EQ(static_cast<int64_t>(tokens->array.size()), p.n_vocab);
  ASSERT_EQ(static_cast<int64_t>(types->array.size()), p.n_vocab);
  EXPECT_EQ(f.find("tokenizer.ggml.merges")->elem_type, ValueType::STRING);
  const int64_t eos = Uint(f, "tokenizer.ggml.eos_token_id");
  const int64_t bos = Uint(f, "tokenizer.ggml.bos_token_id");
  const int64_t pad = Uint(f, "tokenizer.ggml.padding_token_id");
  EXPECT_EQ(tokens->array[eos].s, "<|im_end|>");
  EXPECT_EQ(tokens->array[bos].s, "<|endoftext|>");
  EXPECT_EQ(tokens->array[pad].s, "<|vision_pad|>");
  EXPECT_EQ(types->array[eos].i, kTokenControl);
  EXPECT_NE(f.get_string("tokenizer.chat_template")->find("<|im_start|>"), std::string::npos);

  // §6.4 tensors: exactly the spec's names and shapes; F32 where the policy says so.
  const auto want = SpecTable(p);
  EXPECT_EQ(f.tensors().size(), want.size());
  for (const auto& t : f.tensors()) {
    auto it = want.find(t.name);
    ASSERT_NE(it, want.end()) << "unexpected tensor " << t.name;
    EXPECT_EQ(t.ne, it->second) << t.name;
    if (MustBeF32(t.name)) {
      EXPECT_EQ(t.type, GgmlType::F32) << t.name;
    } else if (q != QuantScheme::kF32) {
      EXPECT_NE(t.type, GgmlType::F32) << t.name;
    }
  }
  for (const auto& [name, ne] : want) EXPECT_NE(f.find_tensor(name), nullptr) << name;
}

TEST(MakeModelTest, TinyDenseMatchesSpec) {
  TempFile tmp("tiny_dense.gguf");
  ModelPreset p = Preset(ModelArch::kDense, "tiny");
  auto f = WriteAndOpen(p, QuantScheme::kQ4_K_M, 1, tmp.path);
  ASSERT_NE(f, nullptr);
  CheckAgainstSpec(*f, p, QuantScheme::kQ4_K_M);
  // 3:1 schedule: layers 3 and 7 attention, the rest DeltaNet.
  for (int i = 0; i < 8; ++i) {
    const std::string b = "blk." + std::to_string(i) + ".";
    EXPECT_EQ(f->find_tensor(b + "attn_q.weight") != nullptr, i == 3 || i == 7) << i;
    EXPECT_EQ(f->find_tensor(b + "ssm_a") != nullptr, i != 3 && i != 7) << i;
  }
  // Q4_K_M mix (llama.cpp use_more_bits over 8 layers: 0, 3, 6, 7).
  EXPECT_EQ(f->find_tensor("output.weight")->type, GgmlType::Q6_K);
  EXPECT_EQ(f->find_tensor("token_embd.weight")->type, GgmlType::Q4_K);
  EXPECT_EQ(f->find_tensor("blk.0.ffn_down.weight")->type, GgmlType::Q6_K);
  EXPECT_EQ(f->find_tensor("blk.1.ffn_down.weight")->type, GgmlType::Q4_K);
  EXPECT_EQ(f->find_tensor("blk.3.attn_v.weight")->type, GgmlType::Q6_K);
  EXPECT_EQ(f->find_tensor("blk.7.attn_v.weight")->type, GgmlType::Q6_K);
  EXPECT_EQ(f->find_tensor("blk.6.attn_qkv.weight")->type, GgmlType::Q6_K);
  EXPECT_EQ(f->find_tensor("blk.5.attn_qkv.weight")->type, GgmlType::Q4_K);
  // ne0 = nh*hd = 128 is not a multiple of 256: Q8_0 fallback.
  EXPECT_EQ(f->find_tensor("blk.3.attn_output.weight")->type, GgmlType::Q8_0);
}

TEST(MakeModelTest, TinyMoeMatchesSpec) {
  TempFile tmp("tiny_moe.gguf");
  ModelPreset p = Preset(ModelArch::kMoe, "tiny");
  auto f = WriteAndOpen(p, QuantScheme::kQ8_0, 1, tmp.path);
  ASSERT_NE(f, nullptr);
  CheckAgainstSpec(*f, p, QuantScheme::kQ8_0);
  EXPECT_EQ(f->find_tensor("blk.0.ffn_gate_exps.weight")->type, GgmlType::Q8_0);
  EXPECT_EQ(f->find_tensor("blk.0.ffn_gate_inp.weight")->type, GgmlType::F32);
}


// The golden models were written by an independent GGUF writer (llama.cpp's converter and
// llama-quantize); a preset with their hyperparameters must give the same table, types included.
ModelPreset PresetFromGolden(const gguf::File& f) {
  ModelPreset p;
  const std::string a = *f.get_string("general.architecture");
  p.name = "golden";
  p.arch = *arch_from_name(a);
  p.n_layer = Uint(f, a + ".block_count");
  p.n_embd = Uint(f, a + ".embedding_length");
  p.n_head = Uint(f, a + ".attention.head_count");
  p.n_head_kv = Uint(f, a + ".attention.head_count_kv");
  p.head_dim = Uint(f, a + ".attention.key_length");
  p.rope_dims = Uint(f, a + ".rope.dimension_count");
  const gguf::Value* sec = f.find(a + ".rope.dimension_sections");
  for (int i = 0; i < 4; ++i) p.rope_sections[i] = static_cast<int32_t>(sec->array[i].i);
  p.context_length = Uint(f, a + ".context_length");
  p.ssm_k_heads = Uint(f, a + ".ssm.group_count");
  p.ssm_v_heads = Uint(f, a + ".ssm.time_step_rank");
  p.ssm_head_dim = Uint(f, a + ".ssm.state_size");
  if (p.is_moe()) {
    p.n_expert = Uint(f, a + ".expert_count");
    p.n_expert_used = Uint(f, a + ".expert_used_count");
    p.n_ff_exp = Uint(f, a + ".expert_feed_forward_length");
    p.n_ff_shexp = Uint(f, a + ".expert_shared_feed_forward_length");
  } else {
    p.n_ff = Uint(f, a + ".feed_forward_length");
  }
  p.n_vocab = static_cast<int64_t>(f.find("tokenizer.ggml.tokens")->array.size());
  return p;
}

void CompareWithGolden(const std::string& golden, QuantScheme q) {
  const std::string path = std::string(RS_SHARED_DIR) + "/golden/" + golden + "/model.gguf";
  absl::StatusOr<std::unique_ptr<gguf::File>> g = gguf::File::Open(path);
  if (!g.ok()) GTEST_SKIP() << "golden model not readable: " << g.status();
  ModelPreset p = PresetFromGolden(**g);
  absl::StatusOr<ModelPlan> plan = BuildModelPlan(p, q);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->tensors.size(), (*g)->tensors().size());
  for (const auto& t : plan->tensors) {
    const gguf::TensorInfo* gt = (*g)->find_tensor(t.name);
    ASSERT_NE(gt, nullptr) << t.name << " not in " << golden;
    EXPECT_EQ(t.ne, gt->ne) << t.name;
    EXPECT_EQ(type_name(t.type), std::string(type_name(gt->type))) << t.name;
  }
  // Every key of the golden file is one we write, with the same type (general.name aside).
  for (const auto& kv : (*g)->metadata()) {
    const gguf::KeyValue* ours = nullptr;
    for (const auto& o : plan->metadata)
      if (o.key == kv.key) ours = &o;
    ASSERT_NE(ours, nullptr) << "golden key " << kv.key << " not written by make-model";
    EXPECT_EQ(ours->value.type, kv.value.type) << kv.key;
    if (kv.value.type == ValueType::ARRAY)
      EXPECT_EQ(ours->value.elem_type, kv.value.elem_type) << kv.key;
  }
}

TEST(MakeModelTest, TableMatchesGoldenQ4KM) { CompareWithGolden("dense-tiny-q4km", QuantScheme::kQ4_K_M); }
TEST(MakeModelTest, TableMatchesGoldenMoeF32) { CompareWithGolden("moe-mini-f32", QuantScheme::kF32); }

TEST(MakeModelTest, DeterministicFromSeed) {
  TempFile a("det_a.gguf"), b("det_b.gguf"), c("det_c.gguf");
  ModelPreset p = Micro();
  absl::StatusOr<ModelPlan> plan = BuildModelPlan(p, QuantScheme::kQ8_0);
  ASSERT_TRUE(plan.ok());
  ASSERT_TRUE(WriteModelFile(*plan, a.path, {.seed = 7}).ok());
  ASSERT_TRUE(WriteModelFile(*plan, b.path, {.seed = 7}).ok());
  ASSERT_TRUE(WriteModelFile(*plan, c.path, {.seed = 8}).ok());
  const std::string da = ReadAll(a.path), db = ReadAll(b.path), dc = ReadAll(c.path);
  ASSERT_GT(da.size(), 500000u);
  EXPECT_TRUE(da == db);
  ASSERT_EQ(da.size(), dc.size());  // same table, different weights
  EXPECT_FALSE(da == dc);
  // Different seeds differ in (nearly) every weight tensor, not just somewhere.
  auto fa = gguf::File::Open(a.path);
  auto fc = gguf::File::Open(c.path);
  ASSERT_TRUE(fa.ok() && fc.ok());
  for (const auto& t : (*fa)->tensors()) {
    const gguf::TensorInfo* tc = (*fc)->find_tensor(t.name);
    EXPECT_NE(std::memcmp((*fa)->tensor_data(t), (*fc)->tensor_data(*tc), t.size), 0) << t.name;
  }
}

// Statistics of a tensor's dequantised values.
struct Stats {
  double mean = 0, rms = 0, min = 0, max = 0;
  bool finite = true;
};

Stats Dequantised(const gguf::File& f, const gguf::TensorInfo& t) {
  const int64_t ne0 = t.ne[0];
  const int64_t rows = t.n_elements() / ne0;
  const size_t rb = row_bytes(t.type, ne0);
  std::vector<float> buf(static_cast<size_t>(ne0));
  Stats s;
  s.min = 1e30;
  s.max = -1e30;
  double sum = 0, sq = 0;
  for (int64_t r = 0; r < rows; ++r) {
    dequantize_row_ref(t.type, f.tensor_data(t) + r * rb, buf.data(), ne0);
    for (float x : buf) {
      if (!std::isfinite(x)) s.finite = false;
      sum += x;
      sq += double(x) * x;
      s.min = std::min<double>(s.min, x);
      s.max = std::max<double>(s.max, x);
    }
  }
  const double n = static_cast<double>(rows * ne0);
  s.mean = sum / n;
  s.rms = std::sqrt(sq / n);
  return s;
}

class QuantSweepTest : public ::testing::TestWithParam<QuantScheme> {};

TEST_P(QuantSweepTest, ReadableAndFiniteWithTheRightScale) {
  const QuantScheme q = GetParam();
  ModelPreset p = Micro();
  absl::StatusOr<ModelPlan> f32plan = BuildModelPlan(p, QuantScheme::kF32);
  ASSERT_TRUE(f32plan.ok());
  SCOPED_TRACE(QuantSchemeName(q));
  EXPECT_EQ(*ParseQuantScheme(QuantSchemeName(q)), q);
  TempFile tmp(std::string("q_") + QuantSchemeName(q) + ".gguf");
  auto f = WriteAndOpen(p, q, 3, tmp.path);
  ASSERT_NE(f, nullptr);
  CheckAgainstSpec(*f, p, q);
  std::map<std::string, int> types;
  for (const auto& t : f->tensors()) {
    ++types[type_name(t.type)];
    const Stats s = Dequantised(*f, t);
    ASSERT_TRUE(s.finite) << t.name;
    const TensorPlan* tp = nullptr;
    for (const auto& x : f32plan->tensors)
      if (x.name == t.name) tp = &x;
    ASSERT_NE(tp, nullptr);
    switch (tp->init) {
      case WeightInit::kNormal:  // unit-ish scale kept through quantisation
        EXPECT_NEAR(s.rms, tp->scale, 0.15 * tp->scale) << t.name;
        EXPECT_NEAR(s.mean, 0, 0.1 * tp->scale) << t.name;
        break;
      case WeightInit::kOnePlusNormal:
        EXPECT_NEAR(s.mean, 1.0, 0.05) << t.name;
        EXPECT_GT(s.min, 0.5) << t.name;
        break;
      case WeightInit::kSsmA:
        EXPECT_LE(s.max, -1.0 + 1e-5) << t.name;
        EXPECT_GE(s.min, -16.0 - 1e-4) << t.name;
        break;
      case WeightInit::kDtBias:  // softplus^-1 of dt in [1e-3, 1e-1]
        EXPECT_GE(s.min, std::log(std::expm1(1e-3)) - 1e-3) << t.name;
        EXPECT_LE(s.max, std::log(std::expm1(1e-1)) + 1e-3) << t.name;
        break;
    }
  }
  std::string summary;
  for (const auto& [name, n] : types) summary += name + ":" + std::to_string(n) + " ";
  std::printf("%-7s %s\n", QuantSchemeName(q), summary.c_str());
  // The scheme's own type is used (by a matrix with ne0 = 256 in a plain layer).
  EXPECT_GT(types[type_name(WeightTypeFor(q, "ffn_up_exps", 1, 4, 256))], 0);
  if (q == QuantScheme::kIQ4_XS) EXPECT_GT(types["IQ4_XS"], 0);
  if (q == QuantScheme::kQ5_K_M) {
    EXPECT_GT(types["Q5_K"], 0);
    EXPECT_GT(types["Q6_K"], 0);
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllSchemes, QuantSweepTest,
    ::testing::Values(QuantScheme::kF32, QuantScheme::kF16, QuantScheme::kBF16,
                      QuantScheme::kQ8_0, QuantScheme::kQ4_K, QuantScheme::kQ5_K,
                      QuantScheme::kQ6_K, QuantScheme::kQ4_K_M, QuantScheme::kQ5_K_M,
                      QuantScheme::kIQ4_XS),
    [](const ::testing::TestParamInfo<QuantScheme>& info) {
      return std::string(QuantSchemeName(info.param));
    });

TEST(MakeModelTest, RowValuesAreDeterministicPerNameAndRow) {
  TensorPlan t;
  t.name = "blk.0.ffn_up.weight";
  t.type = GgmlType::F32;
  t.ne = {256, 4};
  t.scale = 0.5f;
  std::vector<float> a(256), b(256), c(256);
  GenerateRowF32(t, 1, 2, a.data());
  GenerateRowF32(t, 1, 2, b.data());
  GenerateRowF32(t, 1, 3, c.data());
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  t.name = "blk.1.ffn_up.weight";
  GenerateRowF32(t, 1, 2, c.data());
  EXPECT_NE(a, c);
  // Whole-tensor generation equals the row generator (rows in parallel, order irrelevant).
  std::vector<uint8_t> all(t.n_bytes());
  GenerateTensor(t, 1, all.data());
  t.name = "blk.0.ffn_up.weight";
  GenerateTensor(t, 1, all.data());
  EXPECT_EQ(std::memcmp(all.data() + 2 * 256 * 4, a.data(), 256 * 4), 0);
}

TEST(MakeModelTest, BlockFillGivesValidBlocksOfTheRightScale) {
  ModelPreset p = Micro();
  absl::StatusOr<ModelPlan> plan = BuildModelPlan(p, QuantScheme::kQ4_K_M);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(ResolveFillMode(*plan, FillMode::kAuto), FillMode::kExact);
  TempFile a("blocks_a.gguf"), b("blocks_b.gguf"), e("blocks_exact.gguf");
  WriteOptions opts{.seed = 4, .fill = FillMode::kBlocks, .block_fill_threshold = 64 << 10};
  ASSERT_TRUE(WriteModelFile(*plan, a.path, opts).ok());
  ASSERT_TRUE(WriteModelFile(*plan, b.path, opts).ok());
  ASSERT_TRUE(WriteModelFile(*plan, e.path, {.seed = 4}).ok());
  EXPECT_TRUE(ReadAll(a.path) == ReadAll(b.path));  // deterministic too
  auto fa = gguf::File::Open(a.path);
  auto fe = gguf::File::Open(e.path);
  ASSERT_TRUE(fa.ok() && fe.ok());
  int filled = 0;
  for (const auto& t : (*fa)->tensors()) {
    const gguf::TensorInfo* te = (*fe)->find_tensor(t.name);
    const bool same = std::memcmp((*fa)->tensor_data(t), (*fe)->tensor_data(*te), t.size) == 0;
    if (t.size < opts.block_fill_threshold || t.type == GgmlType::F32) {
      EXPECT_TRUE(same) << t.name;
      continue;
    }
    ++filled;
    EXPECT_FALSE(same) << t.name;
    const Stats sa = Dequantised(**fa, t), se = Dequantised(**fe, *te);
    EXPECT_TRUE(sa.finite) << t.name;
    EXPECT_NEAR(sa.rms, se.rms, 0.05 * se.rms) << t.name;
  }
  EXPECT_GT(filled, 3);
  // The real shapes resolve to block fill.
  absl::StatusOr<ModelPlan> big = BuildModelPlan(Preset(ModelArch::kMoe, "35b-a3b"),
                                                 QuantScheme::kQ4_K_M);
  EXPECT_EQ(ResolveFillMode(*big, FillMode::kAuto), FillMode::kBlocks);
}

// The weights are drawn so that a forward pass stays finite and the logits are not flat.
void CheckForward(ModelArch arch) {
  TempFile tmp(std::string("fwd_") + arch_name(arch) + ".gguf");
  ModelPreset p = Preset(arch, "tiny");
  auto f = WriteAndOpen(p, QuantScheme::kQ8_0, 11, tmp.path);
  ASSERT_NE(f, nullptr);
  std::shared_ptr<const gguf::File> file(std::move(f));
  absl::StatusOr<std::unique_ptr<Model>> model = Model::Load(file, ModelOptions{});
  ASSERT_TRUE(model.ok()) << model.status();
  std::unique_ptr<SeqState> seq = (*model)->NewSequence(64);
  std::vector<int32_t> tokens;
  for (int i = 0; i < 24; ++i) tokens.push_back((i * 37 + 5) % 600);
  StepItem item{seq.get(), tokens.data(), static_cast<int64_t>(tokens.size()), true};
  std::vector<float> logits;
  ASSERT_TRUE((*model)->Forward({&item, 1}, &logits).ok());
  const int64_t V = p.n_vocab;
  ASSERT_EQ(static_cast<int64_t>(logits.size()), V * static_cast<int64_t>(tokens.size()));
  std::set<int> argmaxes;
  double sd_sum = 0, top_sum = 0;
  for (size_t t = 0; t < tokens.size(); ++t) {
    const float* l = logits.data() + t * V;
    double sum = 0, sq = 0, mx = -1e30;
    int arg = 0;
    for (int64_t v = 0; v < V; ++v) {
      ASSERT_TRUE(std::isfinite(l[v])) << "position " << t << " token " << v;
      sum += l[v];
      sq += double(l[v]) * l[v];
      if (l[v] > mx) mx = l[v], arg = static_cast<int>(v);
    }
    const double mean = sum / V, sd = std::sqrt(sq / V - mean * mean);
    double z = 0;
    for (int64_t v = 0; v < V; ++v) z += std::exp(l[v] - mx);
    const double top_p = 1.0 / z;
    EXPECT_GT(sd, 1.0) << "flat logits at position " << t;
    EXPECT_LT(sd, 10.0) << "position " << t;
    EXPECT_GT(top_p, 5.0 / V) << "position " << t;
    argmaxes.insert(arg);
    sd_sum += sd;
    top_sum += top_p;
  }
  std::printf("%s tiny: logit sd %.2f, top-1 probability %.3f (mean over %zu positions), %zu "
              "distinct argmaxes\n",
              arch_name(arch), sd_sum / tokens.size(), top_sum / tokens.size(), tokens.size(),
              argmaxes.size());
  EXPECT_GE(argmaxes.size(), 4u);  // the prediction depends on the input
}

TEST(MakeModelTest, ForwardOnTinyDenseIsFiniteAndNotFlat) { CheckForward(ModelArch::kDense); }
TEST(MakeModelTest, ForwardOnTinyMoeIsFiniteAndNotFlat) { CheckForward(ModelArch::kMoe); }

// ---- --synthetic ------------------------------------------------------------------------------

int64_t RssBytes() {
  std::ifstream in("/proc/self/statm");
  int64_t size = 0, resident = 0;
  in >> size >> resident;
  return resident * sysconf(_SC_PAGESIZE);
}

TEST(SyntheticTest, RealShapeTableEqualsMakeModelsAndStaysSmall) {
  const int64_t rss0 = RssBytes();
  absl::StatusOr<std::unique_ptr<gguf::File>> f = MakeSyntheticModel("35b-a3b:Q4_K_M", 5);
  ASSERT_TRUE(f.ok()) << f.status();
  const int64_t rss1 = RssBytes();
  absl::StatusOr<ModelPlan> plan =
      BuildModelPlan(Preset(ModelArch::kMoe, "35b-a3b"), QuantScheme::kQ4_K_M);
  ASSERT_TRUE(plan.ok());
  // Spec §6.4: 733 tensors for 35B-A3B without MTP.
  ASSERT_EQ((*f)->tensors().size(), 733u);
  ASSERT_EQ((*f)->tensors().size(), plan->tensors.size());
  for (size_t i = 0; i < plan->tensors.size(); ++i) {
    const auto& a = (*f)->tensors()[i];
    const auto& b = plan->tensors[i];
    EXPECT_EQ(a.name, b.name);
    EXPECT_EQ(a.type, b.type) << a.name;
    EXPECT_EQ(a.ne, b.ne) << a.name;
    EXPECT_EQ(a.size, b.n_bytes()) << a.name;
  }
  ASSERT_EQ((*f)->metadata().size(), plan->metadata.size());
  for (size_t i = 0; i < plan->metadata.size(); ++i)
    EXPECT_EQ((*f)->metadata()[i].key, plan->metadata[i].key);
  CheckAgainstSpec(**f, plan->preset, QuantScheme::kQ4_K_M);
  const double gb = static_cast<double>(plan->data_bytes()) / 1e9;
  EXPECT_GT(gb, 18.0);
  EXPECT_LT(gb, 24.0);
  EXPECT_GE((*f)->data_size(), plan->data_bytes());

  // Every tensor's first and last block dequantise to finite values of the right scale.
  for (const auto& t : (*f)->tensors()) {
    const TypeInfo* ti = type_info(t.type);
    const uint8_t* p = (*f)->tensor_data(t);
    float first[256], last[256];
    dequantize_row_ref(t.type, p, first, ti->block_size);
    dequantize_row_ref(t.type, p + t.size - ti->type_size, last, ti->block_size);
    for (int64_t j = 0; j < ti->block_size; ++j) {
      ASSERT_TRUE(std::isfinite(first[j]) && std::isfinite(last[j])) << t.name;
      ASSERT_LT(std::fabs(first[j]), 20.0f) << t.name;
    }
  }
  const int64_t rss2 = RssBytes();
  std::printf("35b-a3b:Q4_K_M synthetic: %.2f GB of weights; RSS +%.0f MB building, +%.0f MB "
              "after sampling every tensor\n",
              gb, (rss1 - rss0) / 1e6, (rss2 - rss0) / 1e6);
  EXPECT_LT(rss1 - rss0, int64_t{1} << 30);
  EXPECT_LT(rss2 - rss0, int64_t{1} << 30);
}

TEST(SyntheticTest, SmallTensorsAreMakeModelsBytesAndPoolsAreValidBlocks) {
  ModelPreset p = Micro();
  absl::StatusOr<ModelPlan> plan = BuildModelPlan(p, QuantScheme::kQ4_K_M);
  ASSERT_TRUE(plan.ok());
  SyntheticOptions opts;
  opts.exact_model_bytes = 0;      // pools even in this small model
  opts.pool_threshold = 32 << 10;
  opts.pool_bytes = 1 << 20;
  opts.pool_unique_bytes = 32 << 10;
  absl::StatusOr<std::unique_ptr<gguf::File>> f = MakeSyntheticModel(*plan, 9, opts);
  ASSERT_TRUE(f.ok()) << f.status();
  TempFile tmp("synth_ref.gguf");
  ASSERT_TRUE(WriteModelFile(*plan, tmp.path, {.seed = 9}).ok());
  auto ref = gguf::File::Open(tmp.path);
  ASSERT_TRUE(ref.ok());
  int pooled = 0, exact = 0;
  for (const auto& t : (*f)->tensors()) {
    const gguf::TensorInfo* r = (*ref)->find_tensor(t.name);
    ASSERT_NE(r, nullptr);
    ASSERT_EQ(t.size, r->size);
    if (t.size < opts.pool_threshold) {
      EXPECT_EQ(std::memcmp((*f)->tensor_data(t), (*ref)->tensor_data(*r), t.size), 0) << t.name;
      ++exact;
    } else {
      ++pooled;
      EXPECT_EQ(t.offset % 4096, 0u) << t.name;
      const Stats s = Dequantised(**f, t);
      EXPECT_TRUE(s.finite) << t.name;
      EXPECT_GT(s.rms, 0.5 * Dequantised(**ref, *r).rms) << t.name;
      EXPECT_LT(s.rms, 2.0 * Dequantised(**ref, *r).rms) << t.name;
    }
  }
  EXPECT_GT(pooled, 10);
  EXPECT_GT(exact, 10);
}

TEST(SyntheticTest, TinyIsByteIdenticalToMakeModel) {
  absl::StatusOr<std::unique_ptr<gguf::File>> f = MakeSyntheticModel("dense-tiny:Q4_K_M", 21);
  ASSERT_TRUE(f.ok()) << f.status();
  TempFile tmp("synth_tiny.gguf");
  auto ref = WriteAndOpen(Preset(ModelArch::kDense, "tiny"), QuantScheme::kQ4_K_M, 21, tmp.path);
  ASSERT_NE(ref, nullptr);
  ASSERT_EQ((*f)->tensors().size(), ref->tensors().size());
  for (const auto& t : (*f)->tensors()) {
    const gguf::TensorInfo* r = ref->find_tensor(t.name);
    ASSERT_NE(r, nullptr) << t.name;
    ASSERT_EQ(t.size, r->size) << t.name;
    EXPECT_EQ(std::memcmp((*f)->tensor_data(t), ref->tensor_data(*r), t.size), 0) << t.name;
  }
}

TEST(SyntheticTest, SpecParsing) {
  EXPECT_TRUE(PlanFromSyntheticSpec("moe-tiny:Q8_0").ok());
  EXPECT_EQ(PlanFromSyntheticSpec("qwen35-tiny")->quant, QuantScheme::kQ4_K_M);
  EXPECT_EQ(PlanFromSyntheticSpec("27b:bf16")->quant, QuantScheme::kBF16);
  EXPECT_EQ(PlanFromSyntheticSpec("27b:Q4_K_M")->preset.arch, ModelArch::kDense);
  absl::StatusOr<ModelPlan> bad = PlanFromSyntheticSpec("35b-a3b:Q3_K");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("Q3_K"), std::string::npos) << bad.status();
  EXPECT_FALSE(PlanFromSyntheticSpec("tiny:Q8_0").ok());
  // The other real shapes build too (address space only).
  for (const char* spec : {"27b:Q8_0", "122b-a10b:Q8_0", "397b-a17b:Q4_K_M"}) {
    absl::StatusOr<std::unique_ptr<gguf::File>> f = MakeSyntheticModel(spec, 1);
    ASSERT_TRUE(f.ok()) << spec << ": " << f.status();
    EXPECT_EQ((*f)->find_tensor("token_embd.weight")->ne[1], 248320) << spec;
  }
}

// ---- the CLI ----------------------------------------------------------------------------------

int RunCli(std::vector<std::string> argv) {
  std::vector<char*> ptrs;
  for (auto& a : argv) ptrs.push_back(a.data());
  return cli::make_model_main(static_cast<int>(ptrs.size()), ptrs.data());
}

TEST(MakeModelCliTest, WritesTheFileAndRejectsBadArguments) {
  TempFile tmp("cli.gguf");
  ASSERT_EQ(RunCli({"make-model", "--arch", "qwen35", "--preset", "tiny", "--out", tmp.path,
                    "--seed", "3", "--quant", "Q8_0", "--quiet"}),
            0);
  auto f = gguf::File::Open(tmp.path);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(*(*f)->get_string("general.architecture"), "qwen35");
  EXPECT_EQ(Uint(**f, "general.file_type"), 7);
  // Same bytes as the library call with the same seed.
  TempFile lib("cli_lib.gguf");
  ASSERT_NE(WriteAndOpen(Preset(ModelArch::kDense, "tiny"), QuantScheme::kQ8_0, 3, lib.path),
            nullptr);
  EXPECT_TRUE(ReadAll(tmp.path) == ReadAll(lib.path));
  // The arch is implied by an arch-specific preset.
  TempFile tmp2("cli2.gguf");
  EXPECT_EQ(RunCli({"make-model", "--preset", "moe-tiny", "--out", tmp2.path, "--quiet",
                    "--quant", "F16"}),
            0);
  EXPECT_EQ(RunCli({"make-model", "--arch", "qwen35", "--preset", "35b-a3b", "--out", tmp2.path}),
            2);
  EXPECT_EQ(RunCli({"make-model", "--arch", "qwen36", "--preset", "tiny", "--out", tmp2.path}), 2);
  EXPECT_EQ(RunCli({"make-model", "--arch", "qwen35", "--preset", "tiny", "--out", tmp2.path,
                    "--quant", "Q2_K"}),
            2);
  EXPECT_EQ(RunCli({"make-model", "--arch", "qwen35", "--preset", "tiny"}), 2);
  EXPECT_EQ(RunCli({"make-model", "--arch", "qwen35", "--preset", "tiny", "--out", tmp2.path,
                    "--seed", "x"}),
            2);
  EXPECT_EQ(RunCli({"make-model", "--preset", "tiny", "--out", "/nonexistent-dir/x.gguf",
                    "--arch", "qwen35", "--quiet"}),
            1);
}

}  // namespace
}  // namespace rs
