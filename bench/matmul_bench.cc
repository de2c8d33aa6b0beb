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

// A rows x kCols matrix of type t: 64 quantised random rows, repeated (values do not matter
// for throughput; the bytes are real blocks with finite scales).
struct BenchMatrix {
  WeightView view;
  Buffer buf;
  BenchMatrix(GgmlType t, int64_t rows) : buf(row_bytes(t, kCols) * rows) {
    const size_t rb = row_bytes(t, kCols);
    const int64_t seed_rows = 64;
    std::vector<float> src(kCols * seed_rows);
    std::mt19937 rng(1);
    std::normal_distribution<float> nd(0.0f, 0.05f);
    for (auto& v : src) v = nd(rng);
    for (int64_t r = 0; r < seed_rows && r < rows; ++r)
      quantize_row_ref(t, src.data() + r * kCols, buf.p + r * rb, kCols);
    for (int64_t r = seed_rows; r < rows; ++r) std::memcpy(buf.p + r * rb, buf.p + (r % seed_rows) * rb, rb);
    view.type = t; view.data = buf.p; view.cols = kCols; view.rows = rows; view.row_stride = rb;
  }
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
