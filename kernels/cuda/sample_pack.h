// Host side of the GPU sampler: packs each row's SamplerParams, penalty statistics and draw into
// the flat arrays the kernel reads (sample_types.h). Header-only so the host emulation tests use
// the very same packing without a CUDA library.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kernels/cuda/sample_types.h"
#include "kernels/sampler.h"

namespace rs::cuda::sampling {

// A row without params is sampled greedily (the caller ignores its id).

struct Packed {
  std::vector<RowParams> rows;
  std::vector<PenEntry> pens;
  std::vector<BiasEntry> biases;
};

inline void pack_rows(std::span<const SampleRequest> reqs, Packed* out) {
  static const SamplerParams kGreedy{.temperature = 0.0f};
  out->rows.clear();
  out->pens.clear();
  out->biases.clear();
  for (const SampleRequest& r : reqs) {
    const SamplerParams& p = r.params ? *r.params : kGreedy;
    RowParams rp{};
    rp.temperature = p.temperature;
    rp.top_k = p.top_k;
    rp.top_p = p.top_p;
    rp.min_p = p.min_p;
    rp.presence = p.presence_penalty;
    rp.frequency = p.frequency_penalty;
    rp.repetition = p.repetition_penalty;
    rp.pen_begin = static_cast<int32_t>(out->pens.size());
    const bool penalised =
        p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f || p.repetition_penalty != 1.0f;
    if (r.params && r.counts && penalised)
      for (const TokenCounts::Entry& e : r.counts->entries())
        out->pens.push_back({e.token, e.in_prompt ? 1 : 0, e.output_count});
    rp.pen_end = static_cast<int32_t>(out->pens.size());
    rp.bias_begin = static_cast<int32_t>(out->biases.size());
    for (const LogitBias& b : p.logit_bias) out->biases.push_back({b.token, b.bias});
    rp.bias_end = static_cast<int32_t>(out->biases.size());
    rp.u = philox_uniform(p.seed, r.step);
    out->rows.push_back(rp);
  }
}

}  // namespace rs::cuda::sampling
