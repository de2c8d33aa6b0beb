// Quantised block formats of GGUF/ggml: type table, reference (de)quantisers, fp16/bf16.
//
// The reference functions here are plain loops and are the definition of right for every
// fast CPU path (kernels/matmul*.cc) and CUDA kernel. Layouts: ../shared/spec/qwen35.md §6.2.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace rs {

// ggml_type ids as stored in GGUF tensor infos.
enum class GgmlType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
  IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22,
  IQ4_XS = 23, I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, IQ1_M = 29, BF16 = 30,
  TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39,
};

struct TypeInfo {
  const char* name;      // as ggml spells it: "F32", "Q4_K", ...
  int64_t block_size;    // elements per block
  int64_t type_size;     // bytes per block
  bool compute;          // rigserve can dequantise / multiply it
};

// nullptr for an id that is not a known ggml type (retired ids included).
const TypeInfo* type_info(uint32_t id);
inline const TypeInfo* type_info(GgmlType t) { return type_info(static_cast<uint32_t>(t)); }
const char* type_name(GgmlType t);  // "?" for unknown
std::optional<GgmlType> type_from_name(std::string_view name);
// Bytes of a row of n elements; n must be a multiple of the block size.
size_t row_bytes(GgmlType t, int64_t n);
// Types with a reference dequantiser, a reference quantiser and a fast dot product:
// F32 F16 BF16 Q8_0 Q4_0 Q4_K Q5_K Q6_K IQ4_XS.
bool is_compute_type(GgmlType t);

// Scalar conversions (bit-exact IEEE round-to-nearest-even).
float fp16_to_f32(uint16_t h);
uint16_t f32_to_fp16(float f);
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);

// Reference dequantiser: n elements (a multiple of the block size) from src to dst.
void dequantize_row_ref(GgmlType t, const void* src, float* dst, int64_t n);
// Reference quantiser (round to nearest with a per-block scale search as ggml does it for the
// k-quants; the exact search need not match ggml bit for bit, but must be deterministic).
void quantize_row_ref(GgmlType t, const float* src, void* dst, int64_t n);

}  // namespace rs
