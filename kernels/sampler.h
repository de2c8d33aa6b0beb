// Next-token sampling from one row of logits: penalties, logit bias, temperature, min-p, top-k,
// top-p, a seeded draw, optional logprobs. Two implementations with the same contract:
//   sample_ref  plain dense loops and a full sort; the definition of right.
//   sample_cpu  sparse penalties (only tokens in the history / bias list are touched); top-k
//               by one k-heap scan of the unscaled logits (division only for candidates);
//               top-p drops tokens provably outside the nucleus, then sorts chunks found by
//               nth_element until the mass is reached; reusable scratch.
// For the same inputs both return the same token (bit-identical weights, same summation order),
// which the tests check. No request or chat knowledge here: the caller owns the history.
//
// Order of operations (vLLM v1 `Sampler`, vllm/v1/sample/sampler.py docstring and
// vllm/model_executor/layers/utils.py `apply_penalties`; vLLM applies no allowed-ids / bad-words
// here because we have none):
//   1. logit bias:            x[t] += bias[t]
//   2. repetition penalty:    for every t that appeared in the prompt OR the output:
//                             x[t] = x[t] > 0 ? x[t] / rp : x[t] * rp
//   3. frequency penalty:     x[t] -= fp * count_out(t)      (count in the OUTPUT tokens only;
//                             computed as one fma so that compilers cannot round it differently)
//   4. presence penalty:      x[t] -= pp * [count_out(t) > 0]  (OUTPUT tokens only)
//   5. greedy if temperature < 1e-5 (vLLM's epsilon): argmax of x, ties to the lowest id.
//      Otherwise:
//   6. temperature:           s[t] = x[t] / T                 (fp32 division)
//   7. min-p:                 drop t if p(t) < min_p * p_max, evaluated as
//                             (double)s[t] - (double)s_max < log((double)min_p)
//   8. top-k:                 keep the survivors whose s is >= the k-th largest surviving s
//                             (ties at the boundary are all kept, as vLLM's sort-based path does)
//   9. top-p:                 over the survivors, w[t] = exp((double)s[t] - (double)s_max) and
//                             W = sum of w in ascending id order. Walk the survivors by s
//                             descending (ties: lower id first) and keep a token iff the mass of
//                             the tokens before it is < top_p * W: the smallest prefix whose mass
//                             reaches top_p (vLLM's "drop while ascending cumsum <= 1 - p", up to
//                             rounding). The first token is always kept.
//  10. draw:                  u = philox4x32-10(key = seed, counter = step) as a double in [0,1);
//                             walk the kept tokens in ascending id order accumulating w (double)
//                             and return the first whose running sum exceeds u * W_kept.
// Logprobs (if top_logprobs >= 0): vLLM's default mode "raw_logprobs", log_softmax of the input
// logits before bias and penalties; or kProcessed: log of the distribution actually sampled from
// (after step 9; -inf for dropped tokens; for greedy, log_softmax of the penalised x).
//
// Inputs: logits must be finite or -inf, with at least one finite value. Validate params with
// validate_sampler_params() first; history ids outside [0, vocab) are ignored.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace rs {

struct LogitBias {
  int32_t token = 0;
  float bias = 0.0f;
};

enum class LogprobsMode { kRaw, kProcessed };

struct SamplerParams {
  float temperature = 1.0f;         // < 1e-5: greedy
  int32_t top_k = 0;                // <= 0: off
  float top_p = 1.0f;               // in (0, 1]; 1: off
  float min_p = 0.0f;               // in [0, 1]; 0: off
  float presence_penalty = 0.0f;    // [-2, 2], OpenAI definition
  float frequency_penalty = 0.0f;   // [-2, 2]
  float repetition_penalty = 1.0f;  // > 0; 1: off
  std::vector<LogitBias> logit_bias;  // distinct ids in [0, vocab)
  uint64_t seed = 0;                // the per-request seed; the caller draws one if none given
  int32_t top_logprobs = -1;        // -1: no logprobs; 0: the chosen token's; n: also the top n
  LogprobsMode logprobs_mode = LogprobsMode::kRaw;
};

inline constexpr float kGreedyTemperature = 1e-5f;

// Empty string if params are usable with this vocabulary size, else a message naming the field
// and the value.
std::string validate_sampler_params(const SamplerParams& p, int64_t vocab);

struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0.0f;
};

struct SampleResult {
  int32_t token = -1;
  float logprob = 0.0f;                  // of `token`, when params.top_logprobs >= 0
  std::vector<TokenLogprob> top;         // top_logprobs entries, by logprob desc, ties lower id
};

// Penalty statistics of one sequence, kept up to date by the caller in O(1) per token, so the
// fast sampler never rescans a long prompt. Entries are the distinct tokens seen, in first-seen
// order.
class TokenCounts {
 public:
  struct Entry {
    int32_t token;
    bool in_prompt;
    int32_t output_count;
  };
  void AddPrompt(std::span<const int32_t> tokens);
  void AddOutput(int32_t token);
  void Clear();
  const std::vector<Entry>& entries() const { return entries_; }

 private:
  Entry& Find(int32_t token);
  std::unordered_map<int32_t, uint32_t> index_;
  std::vector<Entry> entries_;
};

// Counter-based PRNG (Philox4x32-10, Salmon et al. 2011): a uniform double in [0, 1) with 53
// random bits for (seed, step). Same on every device, no state to carry between steps.
double philox_uniform(uint64_t seed, uint64_t step);

// ---- reference -----------------------------------------------------------------------------
// Steps 1-4 in place on x[vocab]: the definition of the penalised logits.
void apply_bias_and_penalties_ref(float* x, int64_t vocab, const SamplerParams& p,
                                  std::span<const int32_t> prompt,
                                  std::span<const int32_t> output);

// Steps 6-9 on the penalised logits x: the kept tokens (ascending id) with their normalised
// probabilities. Not for greedy params.
struct Distribution {
  std::vector<int32_t> ids;
  std::vector<double> probs;
};
Distribution sampling_distribution_ref(const float* x, int64_t vocab, const SamplerParams& p);

// The whole pipeline. `step` keys the random draw (normally the index of the token being
// generated in the sequence, i.e. output.size()).
SampleResult sample_ref(const float* logits, int64_t vocab, const SamplerParams& p,
                        std::span<const int32_t> prompt, std::span<const int32_t> output,
                        uint64_t step);

// ---- fast CPU ------------------------------------------------------------------------------
// Reusable buffers of one sampling thread (not thread-safe; one per thread).
struct SamplerScratch {
  std::vector<float> x;                  // penalised / scaled logits [vocab]
  std::vector<int32_t> cand;             // candidate ids
  std::vector<float> heap;               // top-k selection
  std::vector<double> w;                 // weights
};

SampleResult sample_cpu(const float* logits, int64_t vocab, const SamplerParams& p,
                        const TokenCounts& counts, uint64_t step, SamplerScratch* scratch);

// What one row of a batch is sampled with (the model's batched sampling entry points and the
// GPU sampler take one per row). params == nullptr: the row is not sampled.
struct SampleRequest {
  const SamplerParams* params = nullptr;
  const TokenCounts* counts = nullptr;  // may be null: no history
  uint64_t step = 0;                    // keys the draw, as sample_cpu's `step`
};

}  // namespace rs
