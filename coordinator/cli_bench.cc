// rigserve bench: a load generator for a running daemon. For each concurrency level N it runs N
// client streams at once, each sending Generate requests back to back (random prompt ids,
// ignore_eos, a fixed max_tokens, so every request produces the same number of tokens), and
// reports time to first token, inter-token latency (p50/p99), end-to-end latency and throughput.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "coordinator/daemon.h"
#include "rigserve/v1/inference.grpc.pb.h"
#include "worker/args.h"

namespace rs::cli {
namespace {

namespace pb = rigserve::v1;
using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

struct RequestStats {
  bool ok = false;
  std::string error;
  double ttft = 0, e2e = 0;
  int prompt_tokens = 0, tokens = 0;
  std::vector<double> itl;  // one per token after the first
};

// Nearest-rank percentile of sorted values (q in [0, 1]).
double Percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return std::nan("");
  size_t k = static_cast<size_t>(std::ceil(q * sorted.size()));
  k = std::clamp<size_t>(k, 1, sorted.size());
  return sorted[k - 1];
}

RequestStats RunOne(pb::Inference::Stub& stub, const pb::GenerateRequest& req, double timeout_s) {
  RequestStats s;
  s.prompt_tokens = req.token_ids().ids_size();
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000)));
  const auto t0 = Clock::now();
  auto last = t0;
  auto reader = stub.Generate(&ctx, req);
  pb::GenerateResponse m;
  while (reader->Read(&m)) {
    const int n = m.token_ids_size();
    if (n == 0) continue;
    const auto t = Clock::now();
    if (s.tokens == 0) {
      s.ttft = Seconds(t0, t);
      // Tokens that arrive together with the first share no gap worth reporting.
      for (int i = 1; i < n; ++i) s.itl.push_back(0);
    } else {
      const double gap = Seconds(last, t) / n;
      for (int i = 0; i < n; ++i) s.itl.push_back(gap);
    }
    s.tokens += n;
    last = t;
  }
  grpc::Status st = reader->Finish();
  s.e2e = Seconds(t0, Clock::now());
  s.ok = st.ok();
  if (!st.ok()) s.error = st.error_message();
  return s;
}

struct LevelResult {
  int streams = 0, requests = 0, failed = 0;
  int64_t prompt_tokens = 0, tokens = 0;
  double wall = 0;
  std::vector<double> ttft, itl, e2e;
  std::string first_error;
};

}  // namespace

int bench_main(int argc, char** argv) {
  Args a("bench",
         "Load generator for a running daemon: for each --streams level N, N concurrent streams\n"
         "send greedy Generate requests (random prompt ids, ignore_eos) back to back; reports TTFT,\n"
         "inter-token latency (p50/p99), end-to-end latency and throughput per level.");
  a.opt("server", "HOST:PORT of the daemon", "127.0.0.1:50051")
      .opt("streams", "comma-separated concurrency levels", "1,4,16")
      .opt("requests", "requests per stream at each level", "4")
      .opt("prompt-tokens", "prompt length in tokens (random ids)", "64")
      .opt("max-tokens", "tokens generated per request (ignore_eos: exactly this many)", "64")
      .opt("temperature", "sampling temperature (0 = greedy)", "0")
      .opt("seed", "seed of the random prompts", "1")
      .opt("warmup", "requests sent (one at a time) before measuring", "1")
      .opt("timeout", "seconds before one request is given up", "600")
      .opt("json-out", "also write the results here as JSON");
  if (!a.parse(argc, argv)) return parse_exit(a);
  std::vector<int> levels;
  for (absl::string_view t : absl::StrSplit(a.get("streams"), ',', absl::SkipEmpty())) {
    int n;
    if (!absl::SimpleAtoi(t, &n) || n < 1) return a.usage_error("--streams: not a positive integer: " + std::string(t));
    levels.push_back(n);
  }
  int requests, prompt_tokens, max_tokens, warmup;
  uint64_t seed;
  double temperature, timeout;
  if (!absl::SimpleAtoi(a.get("requests"), &requests) || requests < 1) return a.usage_error("--requests must be >= 1");
  if (!absl::SimpleAtoi(a.get("prompt-tokens"), &prompt_tokens) || prompt_tokens < 1)
    return a.usage_error("--prompt-tokens must be >= 1");
  if (!absl::SimpleAtoi(a.get("max-tokens"), &max_tokens) || max_tokens < 1) return a.usage_error("--max-tokens must be >= 1");
  if (!absl::SimpleAtoi(a.get("warmup"), &warmup) || warmup < 0) return a.usage_error("--warmup must be >= 0");
  if (!absl::SimpleAtoi(a.get("seed"), &seed)) return a.usage_error("--seed must be an integer");
  if (!absl::SimpleAtod(a.get("temperature"), &temperature) || temperature < 0)
    return a.usage_error("--temperature must be >= 0");
  if (!absl::SimpleAtod(a.get("timeout"), &timeout) || timeout <= 0) return a.usage_error("--timeout must be > 0");

  grpc::ChannelArguments cargs;
  cargs.SetMaxReceiveMessageSize(64 << 20);
  auto channel = grpc::CreateCustomChannel(a.get("server"), grpc::InsecureChannelCredentials(), cargs);
  auto stub = pb::Inference::NewStub(channel);
  pb::ModelInfoResponse model;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    ctx.set_wait_for_ready(true);
    grpc::Status st = stub->ModelInfo(&ctx, pb::ModelInfoRequest(), &model);
    if (!st.ok()) {
      std::fprintf(stderr, "rigserve bench: ModelInfo from %s: %s\n", a.get("server").c_str(),
                   st.error_message().c_str());
      return 1;
    }
  }
  if (prompt_tokens + max_tokens >= model.context_length())
    return a.usage_error(absl::StrFormat("--prompt-tokens + --max-tokens (%d) must stay below the context (%d)",
                                         prompt_tokens + max_tokens, model.context_length()));
  // Prompt ids: ordinary tokens only (below the first end-of-generation id, which sits at the
  // start of the special-token block in Qwen vocabularies).
  int32_t id_limit = static_cast<int32_t>(model.n_vocab());
  for (int32_t e : model.eos_token_ids()) id_limit = std::min(id_limit, e);
  std::mt19937_64 rng(seed);
  auto make_request = [&]() {
    pb::GenerateRequest r;
    std::uniform_int_distribution<int32_t> dist(0, std::max(0, id_limit - 1));
    for (int i = 0; i < prompt_tokens; ++i) r.mutable_token_ids()->add_ids(dist(rng));
    r.mutable_sampling()->set_temperature(static_cast<float>(temperature));
    r.mutable_sampling()->set_max_tokens(max_tokens);
    r.mutable_sampling()->set_ignore_eos(true);
    r.mutable_sampling()->set_seed(rng());
    return r;
  };
  std::fprintf(stderr, "rigserve bench: %s (%s), prompt %d tokens, %d generated per request, %d requests per stream\n",
               a.get("server").c_str(), model.architecture().c_str(), prompt_tokens, max_tokens, requests);
  for (int i = 0; i < warmup; ++i) {
    RequestStats s = RunOne(*stub, make_request(), timeout);
    if (!s.ok) {
      std::fprintf(stderr, "rigserve bench: warm-up request failed: %s\n", s.error.c_str());
      return 1;
    }
  }

  std::vector<LevelResult> results;
  for (int n : levels) {
    // Every prompt is made up front so the streams start together.
    std::vector<std::vector<pb::GenerateRequest>> reqs(n);
    for (auto& v : reqs)
      for (int i = 0; i < requests; ++i) v.push_back(make_request());
    std::vector<std::vector<RequestStats>> stats(n);
    const auto t0 = Clock::now();
    std::vector<std::thread> threads;
    for (int s = 0; s < n; ++s)
      threads.emplace_back([&, s] {
        auto my_stub = pb::Inference::NewStub(channel);
        for (const auto& r : reqs[s]) stats[s].push_back(RunOne(*my_stub, r, timeout));
      });
    for (auto& t : threads) t.join();
    LevelResult L;
    L.streams = n;
    L.wall = Seconds(t0, Clock::now());
    for (const auto& v : stats)
      for (const auto& s : v) {
        ++L.requests;
        if (!s.ok) {
          ++L.failed;
          if (L.first_error.empty()) L.first_error = s.error;
          continue;
        }
        L.prompt_tokens += s.prompt_tokens;
        L.tokens += s.tokens;
        L.ttft.push_back(s.ttft);
        L.e2e.push_back(s.e2e);
        L.itl.insert(L.itl.end(), s.itl.begin(), s.itl.end());
      }
    std::sort(L.ttft.begin(), L.ttft.end());
    std::sort(L.itl.begin(), L.itl.end());
    std::sort(L.e2e.begin(), L.e2e.end());
    if (L.failed) std::fprintf(stderr, "rigserve bench: %d of %d requests failed at %d streams: %s\n",
                               L.failed, L.requests, n, L.first_error.c_str());
    results.push_back(std::move(L));
  }

  std::printf("%7s %8s %10s %8s %10s %8s %12s %12s %11s %11s %10s\n", "streams", "requests", "gen_tokens",
              "wall_s", "gen_tok/s", "req/s", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms",
              "e2e_p50_s");
  for (const auto& L : results) {
    std::printf("%7d %8d %10lld %8.2f %10.1f %8.2f %12.1f %12.1f %11.2f %11.2f %10.2f\n", L.streams,
                L.requests - L.failed, static_cast<long long>(L.tokens), L.wall, L.tokens / L.wall,
                (L.requests - L.failed) / L.wall, 1e3 * Percentile(L.ttft, 0.5), 1e3 * Percentile(L.ttft, 0.99),
                1e3 * Percentile(L.itl, 0.5), 1e3 * Percentile(L.itl, 0.99), Percentile(L.e2e, 0.5));
  }
  if (a.has("json-out")) {
    std::ofstream f(a.get("json-out"));
    f << "{\"server\": \"" << a.get("server") << "\", \"prompt_tokens\": " << prompt_tokens
      << ", \"max_tokens\": " << max_tokens << ", \"levels\": [";
    for (size_t i = 0; i < results.size(); ++i) {
      const auto& L = results[i];
      f << (i ? ", " : "")
        << absl::StrFormat(
               "{\"streams\": %d, \"requests\": %d, \"failed\": %d, \"gen_tokens\": %d, \"wall_s\": %.4f, "
               "\"gen_tokens_per_s\": %.2f, \"prompt_tokens_per_s\": %.2f, \"ttft_p50_s\": %.5f, "
               "\"ttft_p99_s\": %.5f, \"itl_p50_s\": %.5f, \"itl_p99_s\": %.5f, \"e2e_p50_s\": %.4f, "
               "\"e2e_p99_s\": %.4f}",
               L.streams, L.requests, L.failed, L.tokens, L.wall, L.tokens / L.wall, L.prompt_tokens / L.wall,
               Percentile(L.ttft, 0.5), Percentile(L.ttft, 0.99), Percentile(L.itl, 0.5),
               Percentile(L.itl, 0.99), Percentile(L.e2e, 0.5), Percentile(L.e2e, 0.99));
    }
    f << "]}\n";
    if (!f) {
      std::fprintf(stderr, "rigserve bench: cannot write %s\n", a.get("json-out").c_str());
      return 1;
    }
  }
  for (const auto& L : results)
    if (L.failed) return 1;
  return 0;
}

}  // namespace rs::cli
