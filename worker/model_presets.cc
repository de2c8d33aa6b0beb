#include "worker/model_presets.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace rs {
namespace {

ModelPreset Base(std::string name, ModelArch arch) {
  ModelPreset p;
  p.name = std::move(name);
  p.arch = arch;
  return p;
}

// Small attention / DeltaNet geometry shared by tiny (both arches).
void TinyGeometry(ModelPreset& p) {
  p.n_layer = 8;  // layers 3 and 7 are full attention
  p.n_embd = 256;
  p.n_head = 2;
  p.n_head_kv = 1;
  p.head_dim = 64;
  p.rope_dims = 16;
  p.rope_sections = {3, 3, 2, 0};
  p.context_length = 32768;
  p.ssm_k_heads = 2;
  p.ssm_v_heads = 4;  // R = 2
  p.ssm_head_dim = 32;
  p.n_vocab = 640;
}

// Geometry of mini and bench-moe: H 1024, 16 layers.
void MiniGeometry(ModelPreset& p) {
  p.n_layer = 16;
  p.n_embd = 1024;
  p.n_head = 8;
  p.n_head_kv = 2;
  p.head_dim = 128;
  p.rope_dims = 32;
  p.rope_sections = {6, 5, 5, 0};
  p.context_length = 32768;
  p.ssm_k_heads = 8;
  p.ssm_v_heads = 16;  // R = 2
  p.ssm_head_dim = 64;
  p.n_vocab = 8192;
}

// The real models (spec §1.1): hd 256, rope 64 [11,11,10,0], Hk 16, dk = dv = 128.
void RealGeometry(ModelPreset& p, int64_t layers, int64_t h, int64_t nh, int64_t nkv,
                  int64_t hv) {
  p.n_layer = layers;
  p.n_embd = h;
  p.n_head = nh;
  p.n_head_kv = nkv;
  p.head_dim = 256;
  p.rope_dims = 64;
  p.rope_sections = {11, 11, 10, 0};
  p.context_length = 262144;
  p.ssm_k_heads = 16;
  p.ssm_v_heads = hv;
  p.ssm_head_dim = 128;
  p.n_vocab = 248320;
}

std::vector<ModelPreset> BuildPresets() {
  std::vector<ModelPreset> v;
  {
    ModelPreset p = Base("tiny", ModelArch::kDense);
    TinyGeometry(p);
    p.n_ff = 512;
    p.description = "tests: 8 layers (3:1), H 256, hd 64, rope 16, Hk 2 / Hv 4";
    v.push_back(p);
  }
  {
    ModelPreset p = Base("tiny", ModelArch::kMoe);
    TinyGeometry(p);
    p.n_expert = 16;
    p.n_expert_used = 4;
    p.n_ff_exp = 64;
    p.n_ff_shexp = 128;
    p.description = "tests: as dense tiny, 16 experts top-4, I 64, shared 128";
    v.push_back(p);
  }
  {
    ModelPreset p = Base("mini", ModelArch::kDense);
    MiniGeometry(p);
    p.n_ff = 1536;
    p.description = "CPU benchmarks: H 1024, 16 layers, F 1536";
    v.push_back(p);
  }
  {
    ModelPreset p = Base("mini", ModelArch::kMoe);
    MiniGeometry(p);
    p.n_expert = 16;
    p.n_expert_used = 4;
    p.n_ff_exp = 256;
    p.n_ff_shexp = 256;
    p.description = "CPU benchmarks: H 1024, 16 layers, 16 experts top-4, I 256";
    v.push_back(p);
  }
  {
    ModelPreset p = Base("bench-moe", ModelArch::kMoe);
    MiniGeometry(p);
    p.n_expert = 48;
    p.n_expert_used = 8;
    p.n_ff_exp = 512;
    p.n_ff_shexp = 512;
    p.n_vocab = 32768;
    p.description = "llama.cpp comparison (issue 3): H 1024, 16 layers, 48 experts top-8";
    v.push_back(p);
  }
  {
    ModelPreset p = Base("27b", ModelArch::kDense);
    RealGeometry(p, 64, 5120, 24, 4, 48);
    p.n_ff = 17408;
    p.description = "Qwen3.5-27B shapes";
    v.push_back(p);
  }
  {
    ModelPreset p = Base("35b-a3b", ModelArch::kMoe);
    RealGeometry(p, 40, 2048, 16, 2, 32);
    p.n_expert = 256;
    p.n_expert_used = 8;
    p.n_ff_exp = 512;
    p.n_ff_shexp = 512;
    p.description = "Qwen3.5-35B-A3B shapes";
    v.push_back(p);
  }
  {
    ModelPreset p = Base("122b-a10b", ModelArch::kMoe);
    RealGeometry(p, 48, 3072, 32, 2, 64);
    p.n_expert = 256;
    p.n_expert_used = 8;
    p.n_ff_exp = 1024;
    p.n_ff_shexp = 1024;
    p.description = "Qwen3.5-122B-A10B shapes";
    v.push_back(p);
  }
  {
    ModelPreset p = Base("397b-a17b", ModelArch::kMoe);
    RealGeometry(p, 60, 4096, 32, 2, 64);
    p.n_expert = 512;
    p.n_expert_used = 10;
    p.n_ff_exp = 1024;
    p.n_ff_shexp = 1024;
    p.description = "Qwen3.5-397B-A17B shapes";
    v.push_back(p);
  }
  return v;
}

std::string PresetList() {
  std::vector<std::string> names;
  for (const auto& p : AllPresets()) names.push_back(absl::StrCat(arch_name(p.arch), "/", p.name));
  return absl::StrJoin(names, ", ");
}

}  // namespace

const char* arch_name(ModelArch a) { return a == ModelArch::kMoe ? "qwen35moe" : "qwen35"; }

std::optional<ModelArch> arch_from_name(std::string_view name) {
  if (name == "qwen35") return ModelArch::kDense;
  if (name == "qwen35moe") return ModelArch::kMoe;
  return std::nullopt;
}

absl::Status ValidatePreset(const ModelPreset& p) {
  auto bad = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("preset ", arch_name(p.arch), "/", p.name,
                                                   ": ", what));
  };
  if (p.n_layer <= 0 || p.n_embd <= 0 || p.n_vocab <= 0 || p.context_length <= 0)
    return bad(absl::StrCat("layers ", p.n_layer, ", H ", p.n_embd, ", vocab ", p.n_vocab,
                            ", context ", p.context_length, " must all be positive"));
  if (p.full_attention_interval <= 0)
    return bad(absl::StrCat("full_attention_interval ", p.full_attention_interval));
  if (p.n_head <= 0 || p.n_head_kv <= 0 || p.n_head % p.n_head_kv != 0)
    return bad(absl::StrCat("head_count ", p.n_head, " is not a positive multiple of head_count_kv ",
                            p.n_head_kv));
  if (p.head_dim <= 0 || p.rope_dims <= 0 || p.rope_dims > p.head_dim || p.rope_dims % 2 != 0)
    return bad(absl::StrCat("rope dims ", p.rope_dims, " must be even and <= head_dim ",
                            p.head_dim));
  const int64_t sec = p.rope_sections[0] + p.rope_sections[1] + p.rope_sections[2];
  if (2 * sec != p.rope_dims)
    return bad(absl::StrCat("2*sum(rope sections) = ", 2 * sec, " != rope dims ", p.rope_dims));
  if (p.ssm_k_heads <= 0 || p.ssm_v_heads <= 0 || p.ssm_v_heads % p.ssm_k_heads != 0)
    return bad(absl::StrCat("DeltaNet Hv ", p.ssm_v_heads, " is not a positive multiple of Hk ",
                            p.ssm_k_heads));
  if (p.ssm_head_dim <= 0 || p.conv_kernel <= 0)
    return bad(absl::StrCat("ssm head dim ", p.ssm_head_dim, ", conv kernel ", p.conv_kernel));
  if (p.is_moe()) {
    if (p.n_expert <= 0 || p.n_expert_used <= 0 || p.n_expert_used > p.n_expert ||
        p.n_ff_exp <= 0 || p.n_ff_shexp <= 0)
      return bad(absl::StrCat("experts ", p.n_expert, " top-", p.n_expert_used, ", I ",
                              p.n_ff_exp, ", Is ", p.n_ff_shexp));
  } else if (p.n_ff <= 0) {
    return bad(absl::StrCat("dense FFN width ", p.n_ff));
  }
  return absl::OkStatus();
}

const std::vector<ModelPreset>& AllPresets() {
  static const std::vector<ModelPreset>* presets = new std::vector<ModelPreset>(BuildPresets());
  return *presets;
}

absl::StatusOr<ModelPreset> FindPreset(ModelArch arch, std::string_view name) {
  for (const auto& p : AllPresets())
    if (p.arch == arch && p.name == name) return p;
  return absl::NotFoundError(absl::StrCat("no preset '", std::string(name), "' for arch ", arch_name(arch),
                                          " (presets: ", PresetList(), ")"));
}

absl::StatusOr<ModelPreset> ResolvePresetName(std::string_view name_view) {
  const std::string name(name_view);
  struct Prefix {
    std::string_view text;
    ModelArch arch;
  };
  // Longest first so "qwen35moe-" wins over "qwen35-"... (they differ anyway at the dash).
  const Prefix prefixes[] = {{"qwen35moe-", ModelArch::kMoe}, {"qwen35-", ModelArch::kDense},
                             {"moe-", ModelArch::kMoe},       {"dense-", ModelArch::kDense}};
  for (const auto& pre : prefixes) {
    if (name_view.substr(0, pre.text.size()) == pre.text)
      return FindPreset(pre.arch, name_view.substr(pre.text.size()));
  }
  std::vector<const ModelPreset*> hits;
  for (const auto& p : AllPresets())
    if (p.name == name) hits.push_back(&p);
  if (hits.size() == 1) return *hits[0];
  if (hits.size() > 1)
    return absl::InvalidArgumentError(absl::StrCat(
        "preset '", name, "' exists for both arches: say dense-", name, " or moe-", name,
        " (or qwen35-", name, " / qwen35moe-", name, ")"));
  return absl::NotFoundError(
      absl::StrCat("unknown preset '", name, "' (presets: ", PresetList(), ")"));
}

}  // namespace rs
