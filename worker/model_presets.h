// Hyperparameter sets ("presets") for the random-weight Qwen3.5 models that `rigserve make-model`
// writes and `--synthetic PRESET:QUANT` builds in memory (worker/make_model.h, worker/synthetic.h).
//
// Every value here ends up in GGUF metadata (spec §6.3); the loader reads everything from there,
// so the small presets deliberately use head dims, rope dims and head counts other than the real
// models' (256 / 64 / 16) to catch hard-coded constants.
//
//   preset      arch        H     layers  attn q/kv x hd  rope  DeltaNet Hk/Hv x d  FFN            vocab
//   tiny        both        256   8       2/1 x 64        16    2/4 x 32            F 512 | E16 k4 I64 Is128   640
//   mini        both        1024  16      8/2 x 128       32    8/16 x 64           F 1536 | E16 k4 I256 Is256 8192
//   bench-moe   qwen35moe   1024  16      8/2 x 128       32    8/16 x 64           E48 k8 I512 Is512          32768
//   27b         qwen35      5120  64      24/4 x 256      64    16/48 x 128         F 17408                     248320
//   35b-a3b     qwen35moe   2048  40      16/2 x 256      64    16/32 x 128         E256 k8 I512 Is512         248320
//   122b-a10b   qwen35moe   3072  48      32/2 x 256      64    16/64 x 128         E256 k8 I1024 Is1024       248320
//   397b-a17b   qwen35moe   4096  60      32/2 x 256      64    16/64 x 128         E512 k10 I1024 Is1024      248320
//
// The real shapes follow spec §1.1 exactly. `bench-moe` is sized like the llama.cpp comparison
// model of issue 3 (E1024, 16 layers, 48 experts top-8, about 800 MB at Q4_K_M, about 200 MB of
// weights read per decoded token).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace rs {

enum class ModelArch { kDense, kMoe };  // GGUF general.architecture "qwen35" / "qwen35moe"

const char* arch_name(ModelArch a);  // "qwen35" / "qwen35moe"
std::optional<ModelArch> arch_from_name(std::string_view name);

struct ModelPreset {
  std::string name;                 // "tiny", "35b-a3b", ...
  ModelArch arch = ModelArch::kDense;
  int64_t n_layer = 0;              // main layers (no MTP block)
  int64_t n_embd = 0;               // H
  int64_t n_head = 0;               // nh (attention query heads)
  int64_t n_head_kv = 0;            // nkv
  int64_t head_dim = 0;             // hd (attention.key_length = value_length)
  int64_t rope_dims = 0;            // rope.dimension_count (first rope_dims dims of each head)
  std::array<int32_t, 4> rope_sections = {0, 0, 0, 0};  // 2*(s0+s1+s2) == rope_dims
  double rope_base = 1e7;
  double rms_eps = 1e-6;
  int64_t full_attention_interval = 4;
  int64_t context_length = 0;
  int64_t ssm_k_heads = 0;          // Hk (ssm.group_count)
  int64_t ssm_v_heads = 0;          // Hv (ssm.time_step_rank)
  int64_t ssm_head_dim = 0;         // dk = dv (ssm.state_size)
  int64_t conv_kernel = 4;          // ssm.conv_kernel
  int64_t n_ff = 0;                 // F, dense only
  int64_t n_expert = 0;             // E, MoE only
  int64_t n_expert_used = 0;        // k
  int64_t n_ff_exp = 0;             // I
  int64_t n_ff_shexp = 0;           // Is
  int64_t n_vocab = 0;              // padded vocabulary size (token_embd / output rows)
  std::string description;

  bool is_moe() const { return arch == ModelArch::kMoe; }
  // Layer i is full attention iff (i + 1) % full_attention_interval == 0 (spec §2).
  bool is_attention_layer(int64_t i) const { return (i + 1) % full_attention_interval == 0; }
  int64_t key_dim() const { return ssm_k_heads * ssm_head_dim; }    // Hk*dk
  int64_t value_dim() const { return ssm_v_heads * ssm_head_dim; }  // Hv*dv
  int64_t conv_dim() const { return 2 * key_dim() + value_dim(); }
};

// Checks the relations the loader validates (spec §6.3): Hv % Hk, nh % nkv, rope sections, ...
absl::Status ValidatePreset(const ModelPreset& p);

// Every preset, both arches where the preset exists for both.
const std::vector<ModelPreset>& AllPresets();

// The preset `name` for `arch`; NotFound (listing the names that exist) otherwise.
absl::StatusOr<ModelPreset> FindPreset(ModelArch arch, std::string_view name);

// A preset named without `--arch`. Accepted spellings:
//   "27b", "35b-a3b", "122b-a10b", "397b-a17b", "bench-moe"  (the arch is implied),
//   "dense-tiny", "moe-tiny", "dense-mini", "moe-mini"       (arch prefix dense-/moe-),
//   "qwen35-tiny", "qwen35moe-mini", ...                      (arch prefix = GGUF arch name).
// A bare "tiny" / "mini" is ambiguous and rejected with a message naming the spellings.
absl::StatusOr<ModelPreset> ResolvePresetName(std::string_view name);

}  // namespace rs
