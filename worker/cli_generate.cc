// rigserve generate / score: the offline forward pass (the fidelity checker and the benchmarks
// use exactly these).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "worker/args.h"
#include "worker/cli.h"
#include "worker/model.h"
#include "worker/model_loader.h"
#include "kernels/sampler.h"

namespace rs::cli {
namespace {

void add_model_options(Args& a) {
  a.opt("model", "GGUF model file")
      .opt("synthetic", "in-memory random model PRESET:QUANT instead of a file (e.g. 35b-a3b:Q4_K_M)")
      .opt("backend", "reference | cpu | cuda", "cpu")
      .opt("threads", "CPU threads (0 = all cores)", "0")
      .opt("kv-type", "KV cache type f16 | q8_0 | f32 (default: f16, f32 for F32 models)")
      .opt("logits-out", "write float32 little-endian logits here (one row of n_vocab per row)");
}

bool parse_ids(const std::string& s, std::vector<int32_t>* out, std::string* err) {
  for (absl::string_view tok : absl::StrSplit(s, absl::ByAnyChar(" ,\t\n"), absl::SkipEmpty())) {
    int32_t v;
    if (!absl::SimpleAtoi(tok, &v)) {
      *err = "not a token id: '" + std::string(tok) + "'";
      return false;
    }
    out->push_back(v);
  }
  if (out->empty()) *err = "no token ids given";
  return !out->empty();
}

// End-of-generation ids: tokenizer.ggml.eos_token_id and the control tokens llama.cpp treats
// as end of generation (spec §7).
std::vector<int32_t> EogIds(const gguf::File& f) {
  std::vector<int32_t> ids;
  if (auto e = f.get_int("tokenizer.ggml.eos_token_id"); e.ok()) ids.push_back(static_cast<int32_t>(*e));
  if (const gguf::Value* toks = f.find("tokenizer.ggml.tokens"))
    for (size_t i = 0; i < toks->array.size(); ++i) {
      const std::string& t = toks->array[i].s;
      if (t == "<|endoftext|>" || t == "<|im_end|>" || t == "<|fim_pad|>" || t == "<|repo_name|>" ||
          t == "<|file_sep|>")
        ids.push_back(static_cast<int32_t>(i));
    }
  return ids;
}

absl::StatusOr<std::unique_ptr<Model>> load(const Args& a, std::vector<int32_t>* eog = nullptr) {
  auto file = OpenModelFile(a.get("model"), a.get("synthetic"));
  if (!file.ok()) return file.status();
  if (eog) *eog = EogIds(**file);
  auto opts = ModelOptionsFromFlags(a.get("backend"), a.get("threads"), a.get("kv-type"));
  if (!opts.ok()) return opts.status();
  const ModelOptions& o = *opts;
  auto m = Model::Load(*file, o);
  if (!m.ok()) return m.status();
  std::fprintf(stderr, "rigserve: %s; backend %s, %d threads, KV %s\n",
               (*m)->config().summary().c_str(), BackendName(o.backend), (*m)->n_threads(),
               type_name((*m)->kv_type()));
  return m;
}

int fail(const std::string& cmd, const absl::Status& st) {
  std::fprintf(stderr, "rigserve %s: %s\n", cmd.c_str(), std::string(st.message()).c_str());
  return 1;
}

bool write_floats(const std::string& path, const std::vector<float>& v) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size() * 4));
  return static_cast<bool>(f);
}

// The sampling flags of `generate` (the same names and meanings as `client generate`).
bool parse_sampling(const Args& a, int64_t vocab, SamplerParams* p, std::string* err) {
  auto num = [&](const char* name, float* out) {
    double v = 0;
    if (!absl::SimpleAtod(a.get(name), &v)) {
      *err = std::string("--") + name + " must be a number";
      return false;
    }
    *out = static_cast<float>(v);
    return true;
  };
  if (!num("temperature", &p->temperature) || !num("top-p", &p->top_p) ||
      !num("min-p", &p->min_p) || !num("presence-penalty", &p->presence_penalty) ||
      !num("frequency-penalty", &p->frequency_penalty) ||
      !num("repetition-penalty", &p->repetition_penalty))
    return false;
  if (!absl::SimpleAtoi(a.get("top-k"), &p->top_k)) {
    *err = "--top-k must be an integer";
    return false;
  }
  if (a.get("seed") == "random") {
    p->seed = (static_cast<uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}();
  } else if (!absl::SimpleAtoi(a.get("seed"), &p->seed)) {
    *err = "--seed must be an unsigned integer or 'random'";
    return false;
  }
  *err = validate_sampler_params(*p, vocab);
  return err->empty();
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

int generate_main(int argc, char** argv) {
  Args a("generate",
         "Generate tokens from prompt ids: greedy by default, or sampled with the daemon's sampler "
         "(penalties, temperature, min-p, top-k, top-p, a seeded draw; on the GPU with --backend "
         "cuda). The same seed gives the same tokens as the daemon.");
  add_model_options(a);
  a.opt("prompt-ids", "prompt token ids, space or comma separated")
      .opt("max-tokens", "tokens to generate", "16")
      .opt("temperature", "sampling temperature (0 = greedy)", "0")
      .opt("top-k", "keep the k most likely tokens (0 = off)", "0")
      .opt("top-p", "nucleus sampling mass (1 = off)", "1")
      .opt("min-p", "drop tokens below min-p times the top probability (0 = off)", "0")
      .opt("presence-penalty", "OpenAI presence penalty [-2, 2]", "0")
      .opt("frequency-penalty", "OpenAI frequency penalty [-2, 2]", "0")
      .opt("repetition-penalty", "repetition penalty (> 0, 1 = off)", "1")
      .opt("seed", "seed of the draws, or 'random' (printed)", "random")
      .opt("ids-out", "also write the generated ids to this file")
      .flag("stop-at-eos", "stop after an end-of-generation token (eos, <|im_end|>, <|endoftext|>, ...)");
  if (!a.parse(argc, argv)) return parse_exit(a);
  std::vector<int32_t> prompt;
  std::string err;
  if (!parse_ids(a.get("prompt-ids"), &prompt, &err)) return a.usage_error("--prompt-ids: " + err);
  int max_tokens = 0;
  if (!absl::SimpleAtoi(a.get("max-tokens"), &max_tokens) || max_tokens < 1)
    return a.usage_error("--max-tokens must be a positive integer");
  std::vector<int32_t> eog;
  auto model = load(a, &eog);
  if (!model.ok()) return fail("generate", model.status());
  Model& m = **model;
  const int64_t V = m.config().n_vocab;
  SamplerParams sp;
  if (!parse_sampling(a, V, &sp, &err)) return a.usage_error(err);
  if (sp.temperature >= kGreedyTemperature)
    std::fprintf(stderr, "rigserve: sampling with seed %llu\n",
                 static_cast<unsigned long long>(sp.seed));

  auto seq = m.NewSequence(static_cast<int64_t>(prompt.size()) + max_tokens);
  std::vector<float> logits, all_logits;
  std::vector<int32_t> out;
  TokenCounts counts;  // penalty statistics: the prompt, then each generated token
  counts.AddPrompt(prompt);
  SamplerScratch scratch;
  const bool keep_logits = a.has("logits-out");
  // One step: the logits back to the host (--logits-out) or only the token (ForwardSample: on
  // the GPU the logits stay there).
  auto step = [&](const int32_t* toks, int64_t n, int32_t* next) -> absl::Status {
    StepItem it{seq.get(), toks, n, false};
    const uint64_t draw = out.size();
    if (!keep_logits) {
      std::vector<SampleResult> r;
      const SampleRequest req{&sp, &counts, draw};
      if (auto st = m.ForwardSample({&it, 1}, {&req, 1}, &r); !st.ok()) return st;
      *next = r[0].token;
      return absl::OkStatus();
    }
    if (auto st = m.Forward({&it, 1}, &logits); !st.ok()) return st;
    // The written logits are the model's; the choice skips the vocabulary's padding ids.
    all_logits.insert(all_logits.end(), logits.begin(), logits.begin() + V);
    m.MaskUnused(logits.data(), 1);
    *next = sample_cpu(logits.data(), V, sp, counts, draw, &scratch).token;
    return absl::OkStatus();
  };
  const double t0 = now_s();
  int32_t next = -1;
  if (auto st = step(prompt.data(), static_cast<int64_t>(prompt.size()), &next); !st.ok())
    return fail("generate", st);
  const double t1 = now_s();
  for (int i = 0; i < max_tokens; ++i) {
    out.push_back(next);
    counts.AddOutput(next);
    if (a.has("stop-at-eos") && std::find(eog.begin(), eog.end(), next) != eog.end()) break;
    if (i + 1 == max_tokens) break;
    if (auto st = step(&out.back(), 1, &next); !st.ok()) return fail("generate", st);
  }
  const double t2 = now_s();
  std::string line;
  for (size_t i = 0; i < out.size(); ++i) line += (i ? " " : "") + std::to_string(out[i]);
  std::printf("%s\n", line.c_str());
  const double decode_tps = out.size() > 1 ? (out.size() - 1) / (t2 - t1) : 0.0;
  const double bytes = static_cast<double>(m.active_weight_bytes_per_token());
  std::fprintf(stderr, "rigserve: prefill %zu tokens in %.3f s (%.1f tok/s); decode %zu tokens in %.3f s (%.1f tok/s)\n",
               prompt.size(), t1 - t0, prompt.size() / (t1 - t0), out.size() - 1, t2 - t1, decode_tps);
  std::fprintf(stderr, "rigserve: decode reads %.1f MB of weights per token: %.2f GB/s\n", bytes / 1e6,
               bytes * decode_tps / 1e9);
  if (a.has("ids-out")) {
    std::ofstream f(a.get("ids-out"));
    f << line << "\n";
    if (!f) return fail("generate", absl::InternalError("cannot write " + a.get("ids-out")));
  }
  if (keep_logits && !write_floats(a.get("logits-out"), all_logits))
    return fail("generate", absl::InternalError("cannot write " + a.get("logits-out")));
  return 0;
}

int score_main(int argc, char** argv) {
  Args a("score", "Write the logits of every input position, from one forward pass.");
  add_model_options(a);
  a.opt("ids", "input token ids, space or comma separated");
  if (!a.parse(argc, argv)) return parse_exit(a);
  std::vector<int32_t> ids;
  std::string err;
  if (!parse_ids(a.get("ids"), &ids, &err)) return a.usage_error("--ids: " + err);
  if (!a.has("logits-out")) return a.usage_error("--logits-out is required");
  auto model = load(a);
  if (!model.ok()) return fail("score", model.status());
  Model& m = **model;
  auto seq = m.NewSequence(static_cast<int64_t>(ids.size()));
  std::vector<float> logits;
  StepItem item{seq.get(), ids.data(), static_cast<int64_t>(ids.size()), true};
  const double t0 = now_s();
  if (auto st = m.Forward({&item, 1}, &logits); !st.ok()) return fail("score", st);
  std::fprintf(stderr, "rigserve: scored %zu positions in %.3f s\n", ids.size(), now_s() - t0);
  if (!write_floats(a.get("logits-out"), logits))
    return fail("score", absl::InternalError("cannot write " + a.get("logits-out")));
  return 0;
}

}  // namespace rs::cli
