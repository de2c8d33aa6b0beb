// Fast CPU matmul throughput per format, against this machine's measured memory bandwidth.
//
//   BM_MemRead/threads:T        read sweep over a 1 GiB buffer (the bandwidth roofline)
//   BM_Matvec/TYPE/threads:T    decode: n_tok = 1 over a ~256 MiB weight matrix (4096 cols),
//                               GB/s of weight bytes read; counters mem_GBps (BM_MemRead's
//                               number for the same thread count) and of_mem (the fraction)
//   BM_MatvecCached/TYPE        the same on a ~384 KiB matrix (in L2): the kernel's compute
//                               ceiling, CPU time (the other benches use wall time)
//   BM_MatvecExpert/TYPE/threads:T   512 x 2048 (an MoE expert projection): per-call cost
//   BM_Prefill/TYPE/threads:T   n_tok = 128 over a 4096 x 4096 matrix, GFLOP/s (2 flops per MAC)
//   BM_MoePrefill/threads:T     one bench-moe MoE layer at a 128-token prefill: each of the 48
//                               experts gets 21 or 22 of the tokens (8 per token), gate + up
//                               (Q4_K 512 x 1024) then down (Q6_K 1024 x 512) as the model runs
//                               them (two matmul_cpu_batch calls, gathered rows), GFLOP/s
//   BM_MoeDecode/MODE/threads:T one bench-moe MoE layer at decode: 8 of 48 experts (gate, up
//                               Q4_K 512 x 1024; down Q6_K 1024 x 512; other experts each
//                               iteration), MODE separate = one matmul_cpu per matrix (the old
//                               path), batch = two matmul_cpu_batch calls (the model's path)
//
// Run: build-*/bench/matmul_bench [--benchmark_filter=Matvec] (RS_FORCE_SCALAR=1 for the
// scalar path). On a shared machine add --benchmark_repetitions=5 and read the _min rows
// (times) and _max rows (rates).
#include <benchmark/benchmark.h>
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "kernels/formats.h"
#include "kernels/matmul.h"
#include "kernels/matmul_cpu_internal.h"

namespace rs {
namespace {

constexpr size_t kMemBytes = size_t{1} << 30;
constexpr int64_t kCols = 4096;
constexpr size_t kMatvecBytes = size_t{256} << 20;

struct Buffer {
  uint8_t* p = nullptr;
  size_t n = 0;
  explicit Buffer(size_t bytes) : n(bytes) {
    p = static_cast<uint8_t*>(std::aligned_alloc(4096, (bytes + 4095) / 4096 * 4096));
  }
  ~Buffer() { std::free(p); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
};

// Sum of all 64-bit words of [p, p + n), split over `threads` (AVX2 loads, 4 accumulators).
uint64_t read_sweep(const uint8_t* p, size_t n, int threads) {
  uint64_t total = 0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
  {
    const int nt = omp_get_num_threads(), id = omp_get_thread_num();
    const size_t chunk = n / nt / 128 * 128;
    const uint8_t* b = p + chunk * id;
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i < chunk; i += 128) {
      a0 = _mm256_add_epi64(a0, _mm256_load_si256(reinterpret_cast<const __m256i*>(b + i)));
      a1 = _mm256_add_epi64(a1, _mm256_load_si256(reinterpret_cast<const __m256i*>(b + i + 32)));
      a2 = _mm256_add_epi64(a2, _mm256_load_si256(reinterpret_cast<const __m256i*>(b + i + 64)));
      a3 = _mm256_add_epi64(a3, _mm256_load_si256(reinterpret_cast<const __m256i*>(b + i + 96)));
    }
    alignas(32) uint64_t lanes[4];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes),
                       _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3)));
    total += lanes[0] + lanes[1] + lanes[2] + lanes[3];
  }
  return total;
}

Buffer& mem_buffer() {
  static Buffer* b = [] {
    auto* buf = new Buffer(kMemBytes);
    std::memset(buf->p, 1, kMemBytes);
    return buf;
  }();
  return *b;
}

// Best of a few sweeps, GB/s, per thread count (measured once, shown next to every matvec).
double mem_bandwidth(int threads) {
  static std::map<int, double> cache;
  auto it = cache.find(threads);
  if (it != cache.end()) return it->second;
  Buffer& b = mem_buffer();
  double best = 0;
  for (int rep = 0; rep < 4; ++rep) {
    const double t0 = omp_get_wtime();
    benchmark::DoNotOptimize(read_sweep(b.p, b.n, threads));
    best = std::max(best, b.n / (omp_get_wtime() - t0) / 1e9);
  }
  cache[threads] = best;
  return best;
}

void BM_MemRead(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  Buffer& b = mem_buffer();
  for (auto _ : state) benchmark::DoNotOptimize(read_sweep(b.p, b.n, threads));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * b.n));
  state.counters["GBps"] = benchmark::Counter(b.n / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

// A rows x cols matrix of type t: 64 quantised random rows, repeated (values do not matter
// for throughput; the bytes are real blocks with finite scales).
struct RepeatedMatrix {
  WeightView view;
  Buffer buf;
  RepeatedMatrix(GgmlType t, int64_t rows, int64_t cols, uint32_t seed)
      : buf(row_bytes(t, cols) * rows) {
    const size_t rb = row_bytes(t, cols);
    const int64_t seed_rows = 64;
    std::vector<float> src(cols * seed_rows);
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(0.0f, 0.05f);
    for (auto& v : src) v = nd(rng);
    for (int64_t r = 0; r < seed_rows && r < rows; ++r)
      quantize_row_ref(t, src.data() + r * cols, buf.p + r * rb, cols);
    for (int64_t r = seed_rows; r < rows; ++r) std::memcpy(buf.p + r * rb, buf.p + (r % seed_rows) * rb, rb);
    view.type = t; view.data = buf.p; view.cols = cols; view.rows = rows; view.row_stride = rb;
  }
};

// A rows x kCols matrix.
struct BenchMatrix : RepeatedMatrix {
  BenchMatrix(GgmlType t, int64_t rows) : RepeatedMatrix(t, rows, kCols, 1) {}
};

void BM_Matvec(benchmark::State& state, GgmlType t) {
  const int threads = static_cast<int>(state.range(0));
  const double mem = mem_bandwidth(threads);
  const int64_t rows = static_cast<int64_t>(kMatvecBytes / row_bytes(t, kCols));
  BenchMatrix m(t, rows);
  std::vector<float> x(kCols), y(rows);
  std::mt19937 rng(2);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (auto& v : x) v = nd(rng);
  for (auto _ : state) {
    matmul_cpu(m.view, x.data(), kCols, 1, y.data(), rows, threads);
    benchmark::DoNotOptimize(y.data());
  }
  const double bytes = static_cast<double>(row_bytes(t, kCols)) * rows;
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * bytes));
  state.counters["GBps"] = benchmark::Counter(bytes / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["mem_GBps"] = mem;
  state.counters["of_mem"] = benchmark::Counter(bytes / 1e9 / mem, benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(matmul_internal::using_avx2() ? "avx2" : "scalar");
}

// The same kernel on a matrix that stays in L2 (~384 KiB): the compute ceiling of the kernel.
void BM_MatvecCached(benchmark::State& state, GgmlType t) {
  const int threads = static_cast<int>(state.range(0));
  const int64_t rows = static_cast<int64_t>((size_t{384} << 10) / row_bytes(t, kCols));
  BenchMatrix m(t, rows);
  std::vector<float> x(kCols), y(rows);
  for (auto& v : x) v = 0.5f;
  for (auto _ : state) {
    matmul_cpu(m.view, x.data(), kCols, 1, y.data(), rows, threads);
    benchmark::DoNotOptimize(y.data());
  }
  const double bytes = static_cast<double>(row_bytes(t, kCols)) * rows;
  state.counters["GBps"] = benchmark::Counter(bytes / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(matmul_internal::using_avx2() ? "avx2" : "scalar");
}

// An MoE expert's projection at decode (512 x 2048, ~0.6 MB of Q4_K): per-call overhead
// (activation quantisation, waking the threads) shows here, not in the big matvec.
void BM_MatvecExpert(benchmark::State& state, GgmlType t) {
  const int threads = static_cast<int>(state.range(0));
  const int64_t rows = 512;
  BenchMatrix m(t, rows);
  m.view.cols = 2048;
  m.view.row_stride = row_bytes(t, 2048);
  m.view.rows = rows;  // the first half of the buffer, rows of 2048
  std::vector<float> x(2048, 0.25f), y(rows);
  for (auto _ : state) {
    matmul_cpu(m.view, x.data(), 2048, 1, y.data(), rows, threads);
    benchmark::DoNotOptimize(y.data());
  }
  const double bytes = static_cast<double>(row_bytes(t, 2048)) * rows;
  state.counters["GBps"] = benchmark::Counter(bytes / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(matmul_internal::using_avx2() ? "avx2" : "scalar");
}

void BM_Prefill(benchmark::State& state, GgmlType t) {
  const int threads = static_cast<int>(state.range(0));
  const int64_t rows = 4096, n_tok = 128;
  BenchMatrix m(t, rows);
  std::vector<float> x(kCols * n_tok), y(rows * n_tok);
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (auto& v : x) v = nd(rng);
  for (auto _ : state) {
    matmul_cpu(m.view, x.data(), kCols, n_tok, y.data(), rows, threads);
    benchmark::DoNotOptimize(y.data());
  }
  const double flops = 2.0 * rows * kCols * n_tok;
  state.counters["GFLOPs"] = benchmark::Counter(flops / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["tok_per_s"] = benchmark::Counter(static_cast<double>(n_tok), benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(matmul_internal::using_avx2() ? "avx2" : "scalar");
}

// A stack of E experts' matrices (rows x cols each) of type t, seen as rows * E rows.
struct ExpertStack : RepeatedMatrix {
  ExpertStack(GgmlType t, int64_t E, int64_t rows, int64_t cols) : RepeatedMatrix(t, rows * E, cols, 5) {}
};

void BM_MoeDecode(benchmark::State& state, bool batch) {
  const int threads = static_cast<int>(state.range(0));
  constexpr int64_t E = 48, K = 8, H = 1024, I = 512;
  static ExpertStack gate(GgmlType::Q4_K, E, I, H), up(GgmlType::Q4_K, E, I, H),
      down(GgmlType::Q6_K, E, H, I);
  std::vector<float> x(H, 0.3f), g(K * I), u(K * I), d(K * H);
  for (int64_t i = 0; i < H; ++i) x[i] = 0.01f * static_cast<float>(i % 37) - 0.2f;
  std::vector<MatmulTask> tasks;
  int64_t step = 0;
  for (auto _ : state) {
    int64_t ids[K];
    for (int64_t j = 0; j < K; ++j) ids[j] = (step * 5 + j * 6) % E;
    ++step;
    if (!batch) {
      for (int64_t j = 0; j < K; ++j) {
        matmul_cpu(gate.view.slice_rows(ids[j] * I, I), x.data(), H, 1, g.data() + j * I, I, threads);
        matmul_cpu(up.view.slice_rows(ids[j] * I, I), x.data(), H, 1, u.data() + j * I, I, threads);
        for (int64_t i = 0; i < I; ++i) g[j * I + i] *= u[j * I + i];
        matmul_cpu(down.view.slice_rows(ids[j] * H, H), g.data() + j * I, I, 1, d.data() + j * H, H, threads);
      }
    } else {
      tasks.clear();
      for (int64_t j = 0; j < K; ++j)
        for (int m = 0; m < 2; ++m) {
          MatmulTask t;
          t.w = (m == 0 ? gate : up).view.slice_rows(ids[j] * I, I);
          t.x = x.data(); t.ldx = H; t.x_n = 1; t.n_tok = 1;
          t.y = (m == 0 ? g : u).data() + j * I; t.ldy = I;
          tasks.push_back(t);
        }
      matmul_cpu_batch(tasks.data(), static_cast<int64_t>(tasks.size()), threads);
      for (int64_t i = 0; i < K * I; ++i) g[i] *= u[i];
      tasks.clear();
      for (int64_t j = 0; j < K; ++j) {
        MatmulTask t;
        t.w = down.view.slice_rows(ids[j] * H, H);
        t.x = g.data() + j * I; t.ldx = I; t.x_n = 1; t.n_tok = 1;
        t.y = d.data() + j * H; t.ldy = H;
        tasks.push_back(t);
      }
      matmul_cpu_batch(tasks.data(), static_cast<int64_t>(tasks.size()), threads);
    }
    benchmark::DoNotOptimize(d.data());
  }
  const double bytes = static_cast<double>(K) * (2 * row_bytes(GgmlType::Q4_K, H) * I +
                                                 row_bytes(GgmlType::Q6_K, I) * H);
  state.counters["GBps"] = benchmark::Counter(bytes / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_MoePrefill(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  constexpr int64_t E = 48, K = 8, H = 1024, I = 512, T = 128;
  static ExpertStack gate(GgmlType::Q4_K, E, I, H), up(GgmlType::Q4_K, E, I, H),
      down(GgmlType::Q6_K, E, H, I);
  std::vector<float> x(T * H), g(T * K * I), u(T * K * I), d(T * K * H);
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (auto& v : x) v = nd(rng);
  for (auto& v : g) v = nd(rng);
  // Token t's j-th expert is (t * 5 + j * 6) % E: 8 distinct experts, 21-22 tokens each.
  std::vector<std::vector<int32_t>> rows(E);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < K; ++j) rows[(t * 5 + j * 6) % E].push_back(static_cast<int32_t>(t));
  std::vector<MatmulTask> tasks;
  double macs = 0;
  for (auto _ : state) {
    tasks.clear();
    int64_t slot = 0;
    for (int64_t e = 0; e < E; ++e) {
      const int64_t n = static_cast<int64_t>(rows[e].size());
      for (int m = 0; m < 2; ++m) {
        MatmulTask t;
        t.w = (m == 0 ? gate : up).view.slice_rows(e * I, I);
        t.x = x.data(); t.ldx = H; t.x_n = T; t.x_rows = rows[e].data(); t.n_tok = n;
        t.y = (m == 0 ? g : u).data() + slot * I; t.ldy = I;
        tasks.push_back(t);
      }
      slot += n;
    }
    matmul_cpu_batch(tasks.data(), static_cast<int64_t>(tasks.size()), threads);
    tasks.clear();
    slot = 0;
    for (int64_t e = 0; e < E; ++e) {
      const int64_t n = static_cast<int64_t>(rows[e].size());
      MatmulTask t;
      t.w = down.view.slice_rows(e * H, H);
      t.x = g.data() + slot * I; t.ldx = I; t.x_n = n; t.n_tok = n;
      t.y = d.data() + slot * H; t.ldy = H;
      tasks.push_back(t);
      slot += n;
    }
    matmul_cpu_batch(tasks.data(), static_cast<int64_t>(tasks.size()), threads);
    benchmark::DoNotOptimize(d.data());
  }
  macs = static_cast<double>(T * K) * 3 * H * I;
  state.counters["GFLOPs"] = benchmark::Counter(2 * macs / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

const GgmlType kTypes[] = {GgmlType::F32,  GgmlType::F16,  GgmlType::BF16,
                           GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_K,
                           GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::IQ4_XS};

// With --benchmark_repetitions=N: on a shared machine other processes only ever slow a run
// down, so the least disturbed run is the _min row for times and the _max row for the rate
// counters (GBps, GFLOPs; the statistic is applied to each column alike).
double min_of(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }
double max_of(const std::vector<double>& v) { return *std::max_element(v.begin(), v.end()); }

int register_all() {
  benchmark::RegisterBenchmark("BM_MemRead", BM_MemRead)->Arg(1)->Arg(2)->ArgName("threads")
      ->UseRealTime()->ComputeStatistics("min", min_of)->ComputeStatistics("max", max_of)->Unit(benchmark::kMillisecond);
  for (GgmlType t : kTypes) {
    const std::string name = type_name(t);
    benchmark::RegisterBenchmark(("BM_Matvec/" + name).c_str(), BM_Matvec, t)
        ->Arg(1)->Arg(2)->ArgName("threads")->UseRealTime()->ComputeStatistics("min", min_of)->ComputeStatistics("max", max_of)->Unit(benchmark::kMillisecond);
  }
  for (GgmlType t : kTypes) {
    const std::string name = type_name(t);
    benchmark::RegisterBenchmark(("BM_MatvecCached/" + name).c_str(), BM_MatvecCached, t)
        ->Arg(1)->ArgName("threads")->ComputeStatistics("min", min_of)->ComputeStatistics("max", max_of)->Unit(benchmark::kMicrosecond);
  }
  for (GgmlType t : {GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q8_0}) {
    const std::string name = type_name(t);
    benchmark::RegisterBenchmark(("BM_MatvecExpert/" + name).c_str(), BM_MatvecExpert, t)
        ->Arg(1)->Arg(2)->ArgName("threads")->UseRealTime()->ComputeStatistics("min", min_of)->ComputeStatistics("max", max_of)->Unit(benchmark::kMicrosecond);
  }
  benchmark::RegisterBenchmark("BM_MoePrefill", BM_MoePrefill)
      ->Arg(1)->Arg(2)->ArgName("threads")->UseRealTime()->ComputeStatistics("min", min_of)->ComputeStatistics("max", max_of)->Unit(benchmark::kMillisecond);
  for (bool batch : {false, true})
    benchmark::RegisterBenchmark(batch ? "BM_MoeDecode/batch" : "BM_MoeDecode/separate", BM_MoeDecode, batch)
        ->Arg(1)->Arg(2)->ArgName("threads")->UseRealTime()->ComputeStatistics("min", min_of)->ComputeStatistics("max", max_of)->Unit(benchmark::kMicrosecond);
  for (GgmlType t : kTypes) {
    const std::string name = type_name(t);
    benchmark::RegisterBenchmark(("BM_Prefill/" + name).c_str(), BM_Prefill, t)
        ->Arg(1)->Arg(2)->ArgName("threads")->UseRealTime()->ComputeStatistics("min", min_of)->ComputeStatistics("max", max_of)->Unit(benchmark::kMillisecond);
  }
  return 0;
}
const int kRegistered = register_all();

}  // namespace
}  // namespace rs

BENCHMARK_MAIN();
