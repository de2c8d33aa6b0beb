// --synthetic PRESET:QUANT: the model make-model would write, built in memory with no file.
//
// The metadata and tensor table (names, types, shapes) are exactly make-model's for the same
// preset and scheme (worker/make_model.h); tensor offsets differ (big tensors start on page
// boundaries). The data section is cheap even for the real shapes (35b-a3b:Q4_K_M is ~21 GB of
// weights) because most of it is not real memory:
//
//   - One address range of the whole data section is reserved (anonymous, MAP_NORESERVE; pages
//     never touched cost nothing).
//   - Small tensors (under SyntheticOptions::pool_threshold bytes: norms, ssm_a, dt bias, conv1d;
//     every tensor of a model under exact_model_bytes, i.e. the tiny presets) are generated for
//     real into that range, with exactly make-model's bytes for the same seed.
//   - Each big tensor gets a page-aligned sub-range onto which a "pool" is mapped over and over
//     (mmap MAP_SHARED|MAP_FIXED, read-only): a memfd holding pool_bytes of valid random blocks
//     of the tensor's type, drawn with the tensor's scale (one pool per (type, init, scale)),
//     sized to a multiple of both the page and the block size so block boundaries line up
//     across copies. The first pool_unique_bytes are generated (a prefix of the first such
//     tensor's rows), the rest of the pool repeats them. So the whole data section is
//     addressable and every block is a valid, finite block of its type, while physical memory
//     is only the pools (a few tens of MB each) plus the small tensors. Big tensors repeat with
//     period pool_unique_bytes: fine for planning, loading and GPU throughput work, useless
//     for numerics (use make-model for those). CPU bandwidth measured on a synthetic model is
//     optimistic when the pools fit in the last-level cache (the same physical pages back every
//     copy): time CPU kernels on make-model files.
//
// Caveat: touched pool pages count in the process RSS once per mapping (RSS counts shared
// pages per mapping), although they exist in physical memory only once.
//
// The returned gguf::File owns the mappings (its keepalive); they are released with it.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>

#include "absl/status/statusor.h"
#include "worker/gguf.h"
#include "worker/make_model.h"

namespace rs {

struct SyntheticOptions {
  // Models whose weights total at most this are generated entirely for real (no pools): their
  // bytes equal make-model's (exact fill) for the same seed. The tiny presets are such models.
  uint64_t exact_model_bytes = 64ull << 20;
  uint64_t pool_threshold = 64ull << 10;     // in bigger models, tensors this big are pooled
  uint64_t pool_bytes = 32ull << 20;         // size of each pool (rounded up to page x block)
  uint64_t pool_unique_bytes = 256ull << 10; // generated prefix of each pool, repeated after
};

// `spec` = "PRESET:QUANT", e.g. "35b-a3b:Q4_K_M", "moe-tiny:Q8_0", "qwen35-mini:Q4_K_M"
// (preset spellings: ResolvePresetName in worker/model_presets.h; QUANT: ParseQuantScheme; a
// missing ":QUANT" means Q4_K_M).
absl::StatusOr<std::unique_ptr<gguf::File>> MakeSyntheticModel(std::string_view spec,
                                                               uint64_t seed);
absl::StatusOr<std::unique_ptr<gguf::File>> MakeSyntheticModel(const ModelPlan& plan,
                                                               uint64_t seed,
                                                               const SyntheticOptions& opts);

// Parses "PRESET:QUANT" into a plan (no memory is allocated for weights).
absl::StatusOr<ModelPlan> PlanFromSyntheticSpec(std::string_view spec);

}  // namespace rs
