// Random-weight Qwen3.5 models in the real GGUF layout: the metadata (spec §6.3, §7) and tensor
// table (spec §6.4) for a preset (worker/model_presets.h) and a quantisation scheme, and the
// weights themselves. `rigserve make-model` writes them to a file (WriteModelFile);
// --synthetic builds the same table in memory (worker/synthetic.h).
//
// Weights (all i.i.d., drawn so activations stay finite and logits are not flat):
//   projections (attn_*, ssm_alpha/beta, attn_gate, ffn_*, experts, router)
//                     N(0, 1/sqrt(fan_in)), fan_in = ne0: a unit-RMS input gives unit-RMS output
//   token_embd        N(0, 1)
//   output            N(0, 2/sqrt(H)): logits of standard deviation about 2
//   attn_norm, post_attention_norm, output_norm, attn_q_norm, attn_k_norm
//                     1 + w, w ~ N(0, 0.1) (the converter's "1+w" convention, spec §3.2)
//   ssm_norm          plain weight 1 + N(0, 0.1) (no +1 convention, but ~1 like HF's init)
//   ssm_a             -exp(A_log), A_log ~ U(log 1, log 16) (HF init of A_log)
//   ssm_dt.bias       softplus^-1(dt), dt = exp(U(log 1e-3, log 1e-1)) (HF/Mamba dt init), so
//                     the decay exp(g) stays near 1 and the recurrent state carries information
//   ssm_conv1d        N(0, 0.5)
// Normal variates are the sum of four uniforms rescaled to unit variance (an Irwin–Hall
// approximation: bounded by ±2·sqrt(3), no libm, bit-identical on every platform).
//
// Value-head order: the DeltaNet value-head-indexed tensors (V rows of attn_qkv, attn_gate,
// ssm_alpha, ssm_beta, ssm_dt.bias, ssm_a, V channels of ssm_conv1d, ssm_out columns) are, by
// definition, in GGUF tiled order (value head n uses key head n mod Hk, spec §3.4.2). Their
// entries are i.i.d., so drawing them in HF grouped order and permuting would give the same
// distribution; the tiled order is therefore simply what the file means.
//
// Determinism: tensor t's row r is drawn from xoshiro256** seeded with
// splitmix64(seed, fnv1a(t.name), r), so bytes depend only on (seed, name, quant type) and rows
// can be generated in parallel and in any order.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/formats.h"
#include "worker/gguf.h"
#include "worker/model_presets.h"

namespace rs {

// --quant values. The *_M mixes follow llama.cpp's llama-quantize: output.weight Q6_K, and
// Q6_K for attn_v / attn_qkv / ffn_down / ffn_down_exps / ffn_down_shexp of the layers where
// llama.cpp's use_more_bits(layer, n_layer) holds (the first and last eighth and every third
// layer between); Q4_K (Q5_K) everywhere else.
enum class QuantScheme { kF32, kF16, kBF16, kQ8_0, kQ4_K, kQ5_K, kQ6_K, kQ4_K_M, kQ5_K_M, kIQ4_XS };

absl::StatusOr<QuantScheme> ParseQuantScheme(std::string_view name);  // "Q4_K_M", case-insensitive
const char* QuantSchemeName(QuantScheme q);
// general.file_type (llama_ftype): F32 0, F16 1, Q8_0 7, Q4_K(_S) 14, Q4_K_M 15, Q5_K(_S) 16,
// Q5_K_M 17, Q6_K 18, IQ4_XS 30, BF16 32.
uint32_t FileTypeOf(QuantScheme q);
std::string QuantSchemeList();  // "F32|F16|...", for messages

enum class WeightInit {
  kNormal,        // N(0, scale)
  kOnePlusNormal, // 1 + N(0, scale)
  kSsmA,          // -exp(U(log 1, log 16))
  kDtBias,        // softplus^-1(exp(U(log 1e-3, log 1e-1)))
};

struct TensorPlan {
  std::string name;
  GgmlType type = GgmlType::F32;
  std::vector<int64_t> ne;  // ggml order
  WeightInit init = WeightInit::kNormal;
  float scale = 0;          // standard deviation for kNormal / kOnePlusNormal
  int64_t n_elements() const;
  int64_t n_rows() const { return ne.empty() ? 0 : n_elements() / ne[0]; }
  uint64_t n_bytes() const;
};

struct ModelPlan {
  ModelPreset preset;
  QuantScheme quant = QuantScheme::kQ8_0;
  std::vector<gguf::KeyValue> metadata;  // in write order
  std::vector<TensorPlan> tensors;       // in write order: globals, then blk.0, blk.1, ...
  uint64_t data_bytes() const;           // sum of tensor bytes (no alignment padding)
};

// The type a weight matrix gets under `q` (the F32-only tensors are decided by the caller):
// `ne0` not a multiple of the chosen type's block size falls back to Q8_0 (ne0 % 32 == 0) or F16.
GgmlType WeightTypeFor(QuantScheme q, std::string_view tensor_kind, int64_t layer,
                       int64_t n_layer, int64_t ne0);

// Metadata + tensor table of the preset under the scheme. Checks the preset (ValidatePreset).
absl::StatusOr<ModelPlan> BuildModelPlan(const ModelPreset& preset, QuantScheme quant);

// Fills dst (exactly t.n_bytes()) with tensor t's weights for `seed` (rows in parallel, OpenMP).
void GenerateTensor(const TensorPlan& t, uint64_t seed, uint8_t* dst);
// Rows [row0, row0 + n_rows) only, into dst (n_rows * row bytes). GenerateTensor is this over
// all rows; exposed so a caller can fill a prefix (e.g. a repeating pool) cheaply.
void GenerateRows(const TensorPlan& t, uint64_t seed, int64_t row0, int64_t n_rows,
                  uint8_t* dst);
// The f32 values of one row before quantisation (tests).
void GenerateRowF32(const TensorPlan& t, uint64_t seed, int64_t row, float* out);

// How the weights of big tensors are produced.
//   kExact:  every row drawn and quantised with quantize_row_ref (the reference quantisers search
//            scales and run at a few million weights per second per core: minutes for
//            bench-moe, hours for the real shapes).
//   kBlocks: tensors of at least `block_fill_threshold` bytes are filled with blocks (runs of
//            64 values for F32/F16/BF16) picked at random (per row: xoshiro seeded by seed,
//            name, row) from a pool of 4096 drawn and quantised exactly like the tensor's own
//            weights (same type, init and scale; one pool per such key and seed).
//            Every block is a valid block of the right distribution; blocks repeat, which does
//            not matter for random weights. Runs at memory-copy speed.
//   kAuto:   kExact when the model's weights total at most 64 MiB (the tiny presets), kBlocks
//            above (mini, bench-moe, the real shapes).
// Small tensors (norms, ssm_a, ...) are always exact, so both modes agree on them.
enum class FillMode { kAuto, kExact, kBlocks };

struct WriteOptions {
  uint64_t seed = 0;
  bool progress = false;  // bytes written / percent / rate on stderr (throttled)
  FillMode fill = FillMode::kAuto;
  uint64_t block_fill_threshold = 256ull << 10;
};
// The mode kAuto resolves to for `plan`.
FillMode ResolveFillMode(const ModelPlan& plan, FillMode requested);
// Fills dst (t.n_bytes()) by picking blocks from a pool generated for t's (type, init, scale).
void GenerateTensorFromBlockPool(const TensorPlan& t, uint64_t seed, uint8_t* dst);
// Streams the model to `path` with gguf::Writer. Checks the free space of the target file
// system first (ResourceExhausted naming needed and available bytes).
absl::Status WriteModelFile(const ModelPlan& plan, const std::string& path,
                            const WriteOptions& opts);

}  // namespace rs
