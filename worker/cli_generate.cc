// rigserve generate / score: the offline forward pass (the fidelity checker and the benchmarks
// use exactly these).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "worker/args.h"
#include "worker/cli.h"
#include "worker/model.h"
#include "worker/model_loader.h"

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

int32_t argmax(const float* x, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return static_cast<int32_t>(best);
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

int generate_main(int argc, char** argv) {
  Args a("generate", "Generate tokens from prompt ids (greedy with --temperature 0).");
  add_model_options(a);
  a.opt("prompt-ids", "prompt token ids, space or comma separated")
      .opt("max-tokens", "tokens to generate", "16")
      .opt("temperature", "sampling temperature (0 = greedy)", "0")
      .opt("ids-out", "also write the generated ids to this file")
      .flag("stop-at-eos", "stop after an end-of-generation token (eos, <|im_end|>, <|endoftext|>, ...)");
  if (!a.parse(argc, argv)) return parse_exit(a);
  std::vector<int32_t> prompt;
  std::string err;
  if (!parse_ids(a.get("prompt-ids"), &prompt, &err)) return a.usage_error("--prompt-ids: " + err);
  int max_tokens = 0;
  if (!absl::SimpleAtoi(a.get("max-tokens"), &max_tokens) || max_tokens < 1)
    return a.usage_error("--max-tokens must be a positive integer");
  double temperature = 0;
  if (!absl::SimpleAtod(a.get("temperature"), &temperature) || temperature < 0)
    return a.usage_error("--temperature must be >= 0");
  if (temperature != 0)
    return a.usage_error("only greedy decoding (--temperature 0) is available offline so far");
  std::vector<int32_t> eog;
  auto model = load(a, &eog);
  if (!model.ok()) return fail("generate", model.status());
  Model& m = **model;
  const int64_t V = m.config().n_vocab;

  auto seq = m.NewSequence(static_cast<int64_t>(prompt.size()) + max_tokens);
  std::vector<float> logits, all_logits;
  std::vector<int32_t> out;
  const bool keep_logits = a.has("logits-out");
  const double t0 = now_s();
  StepItem item{seq.get(), prompt.data(), static_cast<int64_t>(prompt.size()), false};
  if (auto st = m.Forward({&item, 1}, &logits); !st.ok()) return fail("generate", st);
  const double t1 = now_s();
  for (int i = 0; i < max_tokens; ++i) {
    // The written logits are the model's; the choice skips the vocabulary's padding ids.
    if (keep_logits) all_logits.insert(all_logits.end(), logits.begin(), logits.begin() + V);
    m.MaskUnused(logits.data(), 1);
    const int32_t next = argmax(logits.data(), V);
    out.push_back(next);
    if (a.has("stop-at-eos") && std::find(eog.begin(), eog.end(), next) != eog.end()) break;
    if (i + 1 == max_tokens) break;
    StepItem d{seq.get(), &out.back(), 1, false};
    if (auto st = m.Forward({&d, 1}, &logits); !st.ok()) return fail("generate", st);
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
