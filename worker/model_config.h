// Qwen3.5 hyperparameters, read from GGUF metadata (never hard-coded; spec §1, §6.3).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/gguf.h"

namespace rs {

enum class LayerKind { kDeltaNet, kAttention };

struct ModelConfig {
  std::string arch;            // "qwen35" or "qwen35moe"
  bool moe = false;
  int64_t n_layer = 0;         // main layers (block_count - nextn_predict_layers)
  int64_t n_embd = 0;          // H
  int64_t n_vocab = 0;         // rows of the LM head
  int64_t context_length = 0;
  float eps = 1e-6f;
  // Full attention.
  int64_t n_head = 0, n_head_kv = 0, head_dim = 0, rope_dims = 0;
  float rope_theta = 1e7f;
  int64_t full_attention_interval = 4;
  // Gated DeltaNet.
  int64_t conv_kernel = 4, Hk = 0, Hv = 0, dk = 0, dv = 0;
  // FFN.
  int64_t n_ff = 0;                        // dense
  int64_t n_expert = 0, n_expert_used = 0, n_ff_exp = 0, n_ff_shexp = 0;  // MoE
  std::vector<LayerKind> layers;

  int64_t key_dim() const { return Hk * dk; }
  int64_t value_dim() const { return Hv * dv; }
  int64_t conv_dim() const { return 2 * key_dim() + value_dim(); }
  int64_t n_attn_layers() const;
  std::string summary() const;
};

// Reads and validates the hyperparameters (InvalidArgument naming the key and values).
absl::StatusOr<ModelConfig> ReadModelConfig(const gguf::File& f);

}  // namespace rs
