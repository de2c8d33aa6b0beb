// Fast CPU matmul / matvec over every compute type.
//
// Plan of one call (Y[t][r] = sum_c W[r][c] X[t][c]):
//  1. Activations are converted once: kept f32 for F32/F16/BF16 weights; quantised to q8 blocks
//     of 32 (Q8_0, Q4_0, IQ4_XS) or of 256 with per-16 sums (Q4_K, Q5_K, Q6_K) otherwise. The
//     q8 rows live in a thread_local buffer that only grows (no allocation per decode step).
//  2. Rows are split into work items of the pool (streaming reads, good for the hardware
//     prefetcher). Within an item, rows go in tiles that fit L2; each tile is swept once per
//     group of up to 8 tokens, and a row kernel decodes each weight block once for all the
//     tokens of the group (8 measured 1.1-1.3x faster than 4 on Q4_K/Q6_K: the weight decoding
//     and the block scales are shared by more tokens). Decode (n_tok = 1) is a plain streaming
//     matvec.
//  3. Row kernels: AVX2/FMA/F16C when the CPU has them (runtime check), otherwise scalar loops
//     with the same integer arithmetic (forced in tests with set_force_scalar).
// Integer formats: sum over a 32/16-element sub-block of q_w * q_a exactly in int32, then scaled
// by the fp16 block scales and the activation scale in f32.
// Results do not depend on the thread count nor on how tokens are batched (each (row, token)
// dot runs the same instruction sequence), so a prompt in one call equals token-by-token calls
// bit for bit.
// Threads: jobs of the kernels' own pool (cpu_parallel_for, work items of ~64 KiB of rows claimed
// from a shared counter). It replaced OpenMP, whose
// workers spin at every join: on a machine with more runnable threads than cores that spin cost a
// scheduler slice per call (measured: a 512 x 2048 Q4_K matvec at load 10 on 2 cores took 12 ms
// mean with 2 threads, 0.17 ms with OMP_WAIT_POLICY=passive; bench-moe decode at load 5: 4 tok/s
// with libgomp's default policy, 14-19 passive).
#include <immintrin.h>
#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

#include "kernels/matmul.h"
#include "kernels/matmul_cpu_internal.h"
#include "kernels/quant_blocks.h"

namespace rs {
namespace {

// ---------------------------------------------------------------------------------------------
// Thread pool (replaces OpenMP: libgomp's workers spin for ~300k iterations at every join, which
// on a 2-core machine shared with other work costs whole scheduler slices per region).
// ---------------------------------------------------------------------------------------------

// Sleeps while a == old (the kernel compares atomically), at most ms milliseconds: the futex
// directly, not std::atomic::wait, and bounded, so no missed wake-up can stall anyone for long.
void futex_wait(const std::atomic<uint32_t>& a, uint32_t old, int ms) {
  static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t));
  const timespec limit{0, static_cast<long>(ms) * 1000 * 1000};
  syscall(SYS_futex, reinterpret_cast<const uint32_t*>(&a), FUTEX_WAIT_PRIVATE, old, &limit,
          nullptr, 0);
}
void futex_wake(std::atomic<uint32_t>& a, int n) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&a), FUTEX_WAKE_PRIVATE, n, nullptr, nullptr, 0);
}

// Returns once a != old: pause-spin (~10 us), then sched_yield for ~1 ms, then futex sleep.
uint32_t wait_change(const std::atomic<uint32_t>& a, uint32_t old) {
  for (int i = 0; i < 400; ++i) {
    const uint32_t v = a.load(std::memory_order_acquire);
    if (v != old) return v;
    _mm_pause();
  }
  for (int i = 0; i < 1000; ++i) {
    const uint32_t v = a.load(std::memory_order_acquire);
    if (v != old) return v;
    sched_yield();
  }
  for (;;) {
    futex_wait(a, old, 20);
    const uint32_t v = a.load(std::memory_order_acquire);
    if (v != old) return v;
  }
}

// The job state is one 64-bit word: generation (high 32 bits) | next item (low 32 bits). A
// claim is a CAS that also checks the generation, so a late worker can never take an item of a
// newer job; the caller waits for done == n before returning, so the job's fields stay valid
// while any claimed item runs.
class Pool {
 public:
  bool try_run(int n_threads, int64_t n, void (*fn)(void*, int64_t), void* ctx) {
    if (!mu_.try_lock()) return false;
    while (static_cast<int>(workers_.load()) < n_threads - 1) {
      workers_.fetch_add(1);
      const uint32_t w0 = wake_.load(std::memory_order_relaxed);
      std::thread([this, w0] { worker(w0); }).detach();
    }
    fn_ = fn;
    ctx_ = ctx;
    n_ = n;
    done_.store(0, std::memory_order_relaxed);
    const uint64_t gen = ++gen_;
    state_.store(gen << 32, std::memory_order_release);
    wake_.fetch_add(1, std::memory_order_release);
    if (sleepers_.load(std::memory_order_acquire) > 0) futex_wake(wake_, INT_MAX);
    work(gen);
    for (int64_t d = done_.load(std::memory_order_acquire); d != n;
         d = done_.load(std::memory_order_acquire))
      wait_change(done_, static_cast<uint32_t>(d));
    mu_.unlock();
    return true;
  }

 private:
  // Claims and runs items of job `gen` until none are left.
  void work(uint64_t gen) {
    for (;;) {
      uint64_t st = state_.load(std::memory_order_acquire);
      if ((st >> 32) != (gen & 0xffffffffu)) return;
      const int64_t i = static_cast<int64_t>(st & 0xffffffffu);
      if (i >= n_) return;
      if (!state_.compare_exchange_weak(st, st + 1, std::memory_order_acq_rel)) continue;
      fn_(ctx_, i);
      if (done_.fetch_add(1, std::memory_order_acq_rel) + 1 == static_cast<uint32_t>(n_))
        futex_wake(done_, 1);
    }
  }

  void worker(uint32_t seen) {
    for (;;) {
      // wait_change with the sleeper count kept for the notifier.
      uint32_t v = seen;
      for (int i = 0; i < 400 && v == seen; ++i) {
        _mm_pause();
        v = wake_.load(std::memory_order_acquire);
      }
      for (int i = 0; i < 1000 && v == seen; ++i) {
        sched_yield();
        v = wake_.load(std::memory_order_acquire);
      }
      while (v == seen) {
        sleepers_.fetch_add(1, std::memory_order_acq_rel);
        futex_wait(wake_, seen, 200);  // an idle worker re-checks 5 times a second
        sleepers_.fetch_sub(1, std::memory_order_acq_rel);
        v = wake_.load(std::memory_order_acquire);
      }
      seen = v;
      const uint64_t st = state_.load(std::memory_order_acquire);
      work(st >> 32);
    }
  }

  std::mutex mu_;
  std::atomic<uint32_t> workers_{0}, sleepers_{0}, wake_{0}, done_{0};
  std::atomic<uint64_t> state_{0};
  uint64_t gen_ = 0;  // under mu_
  void (*fn_)(void*, int64_t) = nullptr;
  void* ctx_ = nullptr;
  int64_t n_ = 0;
};

Pool& pool() {
  static Pool* p = new Pool();  // never destroyed: its detached workers outlive main
  return *p;
}

}  // namespace

void cpu_parallel_for_raw(int n_threads, int64_t n, void (*fn)(void*, int64_t), void* ctx) {
  if (n <= 0) return;
  if (n_threads <= 1 || n == 1 || !pool().try_run(n_threads, n, fn, ctx))
    for (int64_t i = 0; i < n; ++i) fn(ctx, i);
}

namespace matmul_internal {

using namespace qblk;

ActKind act_kind(GgmlType t) {
  switch (t) {
    case GgmlType::Q8_0:
    case GgmlType::Q4_0:
    case GgmlType::IQ4_XS: return ActKind::kQ8x32;
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
    case GgmlType::Q6_K: return ActKind::kQ8x256;
    default: return ActKind::kF32;
  }
}

bool cpu_has_avx2() {
  static const bool has = [] {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
#else
    return false;
#endif
  }();
  return has;
}

namespace {
std::atomic<int> g_force_scalar{-1};  // -1: not decided yet (read RS_FORCE_SCALAR)
}

void set_force_scalar(bool on) { g_force_scalar.store(on ? 1 : 0); }

bool using_avx2() {
  int f = g_force_scalar.load(std::memory_order_relaxed);
  if (f < 0) {
    const char* e = std::getenv("RS_FORCE_SCALAR");
    f = (e && *e && std::strcmp(e, "0") != 0) ? 1 : 0;
    int expected = -1;
    g_force_scalar.compare_exchange_strong(expected, f);
    f = g_force_scalar.load();
  }
  return f == 0 && cpu_has_avx2();
}

namespace {

// rint: round half to even in the default mode, inlined (lrintf may be a libm call).
inline int8_t q8_round(float v) { return static_cast<int8_t>(static_cast<int>(std::rint(v))); }

// max|x| of n values, and d / 1/d of the symmetric 8-bit code.
inline void q8_scale_from_amax(float amax, float* d, float* id) {
  *d = amax / 127.0f;
  *id = amax != 0 ? 127.0f / amax : 0.0f;
}

// Scalar: one block of n (32 or 256) values.
inline float q8_block_scalar(const float* x, int n, int8_t* qs) {
  float amax = 0;
  for (int j = 0; j < n; ++j) amax = std::max(amax, std::fabs(x[j]));
  float d, id;
  q8_scale_from_amax(amax, &d, &id);
  for (int j = 0; j < n; ++j) qs[j] = q8_round(x[j] * id);
  return d;
}

// AVX2: the same arithmetic (x * id rounded to nearest even by cvtps), identical codes.
inline float q8_block_avx2(const float* x, int n, int8_t* qs) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 m = _mm256_setzero_ps();
  for (int j = 0; j < n; j += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + j)));
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  h = _mm_max_ss(h, _mm_movehdup_ps(h));
  float d, id;
  q8_scale_from_amax(_mm_cvtss_f32(h), &d, &id);
  const __m256 vid = _mm256_set1_ps(id);
  const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int j = 0; j < n; j += 32) {
    const __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + j), vid));
    const __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + j + 8), vid));
    const __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + j + 16), vid));
    const __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + j + 24), vid));
    // packs work per 128-bit lane: undo the interleave with one permute.
    const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(qs + j), _mm256_permutevar8x32_epi32(p, perm));
  }
  return d;
}

inline float q8_block(const float* x, int n, int8_t* qs) {
  return using_avx2() ? q8_block_avx2(x, n, qs) : q8_block_scalar(x, n, qs);
}

}  // namespace

void quantize_act_q8x32(const float* x, ActQ8x32* out, int64_t n) {
  for (int64_t i = 0; i < n / kQK; ++i) {
    out[i].d = q8_block(x + i * kQK, kQK, out[i].qs);
    int32_t s = 0;
    for (int j = 0; j < kQK; ++j) s += out[i].qs[j];
    out[i].s = s;
  }
}

void quantize_act_q8x256(const float* x, ActQ8x256* out, int64_t n) {
  for (int64_t i = 0; i < n / kQKK; ++i) {
    out[i].d = q8_block(x + i * kQKK, kQKK, out[i].qs);
    for (int g = 0; g < 16; ++g) {
      int s = 0;
      for (int j = 0; j < 16; ++j) s += out[i].qs[16 * g + j];
      out[i].bsums[g] = static_cast<int16_t>(s);
    }
    for (int g = 0; g < 8; ++g)
      out[i].dsums[g] = out[i].d * static_cast<float>(out[i].bsums[2 * g] + out[i].bsums[2 * g + 1]);
  }
}

}  // namespace matmul_internal

namespace {

using namespace qblk;
using matmul_internal::ActKind;

// A row kernel: dots of one weight row (n elements) with NT activation rows (acts[t] points at
// f32 values or q8 blocks, per act_kind), written to out[0..NT).
using RowKernel = void (*)(const uint8_t* w, const void* const* acts, int64_t n, float* out);

// ---------------------------------------------------------------------------------------------
// Scalar kernels
// ---------------------------------------------------------------------------------------------

const float* fp16_table() {
  static const std::vector<float> table = [] {
    std::vector<float> t(65536);
    for (uint32_t i = 0; i < 65536; ++i) t[i] = fp16_to_f32(static_cast<uint16_t>(i));
    return t;
  }();
  return table.data();
}
inline float h2f(uint16_t h) { return fp16_table()[h]; }

float s_dot_f32(const uint8_t* w, const void* a, int64_t n) {
  const float* wr = reinterpret_cast<const float*>(w);
  const float* x = static_cast<const float*>(a);
  float acc = 0;
  for (int64_t j = 0; j < n; ++j) acc += wr[j] * x[j];
  return acc;
}

float s_dot_f16(const uint8_t* w, const void* a, int64_t n) {
  const uint16_t* wr = reinterpret_cast<const uint16_t*>(w);
  const float* x = static_cast<const float*>(a);
  const float* tab = fp16_table();
  float acc = 0;
  for (int64_t j = 0; j < n; ++j) acc += tab[wr[j]] * x[j];
  return acc;
}

float s_dot_bf16(const uint8_t* w, const void* a, int64_t n) {
  const uint16_t* wr = reinterpret_cast<const uint16_t*>(w);
  const float* x = static_cast<const float*>(a);
  float acc = 0;
  for (int64_t j = 0; j < n; ++j) acc += bf16_to_f32(wr[j]) * x[j];
  return acc;
}

float s_dot_q8_0(const uint8_t* w, const void* a, int64_t n) {
  const BlockQ8_0* b = reinterpret_cast<const BlockQ8_0*>(w);
  const ActQ8x32* y = static_cast<const ActQ8x32*>(a);
  float acc = 0;
  for (int64_t i = 0; i < n / kQK; ++i) {
    int32_t s = 0;
    for (int j = 0; j < kQK; ++j) s += b[i].qs[j] * y[i].qs[j];
    acc += h2f(b[i].d) * y[i].d * static_cast<float>(s);
  }
  return acc;
}

float s_dot_q4_0(const uint8_t* w, const void* a, int64_t n) {
  const BlockQ4_0* b = reinterpret_cast<const BlockQ4_0*>(w);
  const ActQ8x32* y = static_cast<const ActQ8x32*>(a);
  float acc = 0;
  for (int64_t i = 0; i < n / kQK; ++i) {
    int32_t s = 0;
    for (int j = 0; j < 16; ++j) {
      s += ((b[i].qs[j] & 15) - 8) * y[i].qs[j];
      s += ((b[i].qs[j] >> 4) - 8) * y[i].qs[j + 16];
    }
    acc += h2f(b[i].d) * y[i].d * static_cast<float>(s);
  }
  return acc;
}

float s_dot_iq4_xs(const uint8_t* w, const void* a, int64_t n) {
  const BlockIQ4_XS* b = reinterpret_cast<const BlockIQ4_XS*>(w);
  const ActQ8x32* y = static_cast<const ActQ8x32*>(a);
  float acc = 0;
  for (int64_t i = 0; i < n / kQKK; ++i) {
    const float d = h2f(b[i].d);
    for (int ib = 0; ib < 8; ++ib) {
      const int ls = ((b[i].scales_l[ib / 2] >> (4 * (ib % 2))) & 15) |
                     (((b[i].scales_h >> (2 * ib)) & 3) << 4);
      const uint8_t* qs = b[i].qs + 16 * ib;
      const ActQ8x32& ya = y[8 * i + ib];
      int32_t s = 0;
      for (int j = 0; j < 16; ++j) {
        s += kIq4nl[qs[j] & 15] * ya.qs[j];
        s += kIq4nl[qs[j] >> 4] * ya.qs[j + 16];
      }
      acc += d * static_cast<float>(ls - 32) * ya.d * static_cast<float>(s);
    }
  }
  return acc;
}

// Q4_K and Q5_K (HB = has the fifth bit).
template <bool HB>
float s_dot_qk45(const uint8_t* w, const void* a, int64_t n) {
  using Block = std::conditional_t<HB, BlockQ5_K, BlockQ4_K>;
  const Block* b = reinterpret_cast<const Block*>(w);
  const ActQ8x256* y = static_cast<const ActQ8x256*>(a);
  float acc = 0;
  for (int64_t i = 0; i < n / kQKK; ++i) {
    int32_t isum = 0, msum = 0;
    for (int c = 0; c < 4; ++c) {
      uint8_t sc0, m0, sc1, m1;
      get_scale_min(2 * c, b[i].scales, &sc0, &m0);
      get_scale_min(2 * c + 1, b[i].scales, &sc1, &m1);
      int32_t s0 = 0, s1 = 0;
      for (int l = 0; l < 32; ++l) {
        int q0 = b[i].qs[32 * c + l] & 15, q1 = b[i].qs[32 * c + l] >> 4;
        if constexpr (HB) {
          q0 += ((b[i].qh[l] >> (2 * c)) & 1) << 4;
          q1 += ((b[i].qh[l] >> (2 * c + 1)) & 1) << 4;
        }
        s0 += q0 * y[i].qs[64 * c + l];
        s1 += q1 * y[i].qs[64 * c + 32 + l];
      }
      isum += sc0 * s0 + sc1 * s1;
      msum += m0 * (y[i].bsums[4 * c] + y[i].bsums[4 * c + 1]) +
              m1 * (y[i].bsums[4 * c + 2] + y[i].bsums[4 * c + 3]);
    }
    acc += y[i].d * (h2f(b[i].d) * static_cast<float>(isum) -
                     h2f(b[i].dmin) * static_cast<float>(msum));
  }
  return acc;
}

float s_dot_q6_k(const uint8_t* w, const void* a, int64_t n) {
  const BlockQ6_K* b = reinterpret_cast<const BlockQ6_K*>(w);
  const ActQ8x256* y = static_cast<const ActQ8x256*>(a);
  float acc = 0;
  for (int64_t i = 0; i < n / kQKK; ++i) {
    int32_t isum = 0;
    for (int half = 0; half < 2; ++half) {
      const uint8_t* ql = b[i].ql + 64 * half;
      const uint8_t* qh = b[i].qh + 32 * half;
      const int8_t* ya = y[i].qs + 128 * half;
      int32_t s[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // per sub-block of 16 in this half
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 15) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        s[is] += q1 * ya[l];
        s[is + 2] += q2 * ya[l + 32];
        s[is + 4] += q3 * ya[l + 64];
        s[is + 6] += q4 * ya[l + 96];
      }
      for (int k = 0; k < 8; ++k) isum += b[i].scales[8 * half + k] * s[k];
    }
    acc += y[i].d * h2f(b[i].d) * static_cast<float>(isum);
  }
  return acc;
}

template <float (*Dot)(const uint8_t*, const void*, int64_t), int NT>
void scalar_kernel(const uint8_t* w, const void* const* acts, int64_t n, float* out) {
  for (int t = 0; t < NT; ++t) out[t] = Dot(w, acts[t], n);
}

// ---------------------------------------------------------------------------------------------
// AVX2 / FMA / F16C kernels
// ---------------------------------------------------------------------------------------------

inline float hsum_ps(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float f16c(uint16_t h) { return _cvtsh_ss(h); }

// Accumulator start for kernels of NT tokens. Up to 2 tokens the accumulators live in registers:
// zeroed before the first block. From 3 on GCC spills the array and zeroes it with `rep stosq`
// (5-12 % of the 8-token kernels' time), so there the first block starts them instead (fma(a, b,
// 0) == a * b: the same values); the select costs the 1-token decode kernel ~15 %, hence both.
template <int NT>
inline void acc_init(__m256* acc) {
  if constexpr (NT <= 2)
    for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
}
template <int NT>
inline __m256 acc_in(__m256 a, bool first) {
  if constexpr (NT <= 2)
    return a;
  else
    return first ? _mm256_setzero_ps() : a;
}

// int32x8 partial sums of w (signed bytes) times a (signed bytes, never -128).
inline __m256i dot_i8(__m256i w, __m256i a) {
  const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w));
  return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

// Float rows: acc[t] += w * x[t], 16 elements a step (two accumulators per token).
template <int NT, typename Load>
inline void float_rows(Load load, const void* const* acts, int64_t n, float* out,
                       float (*tail_w)(const uint8_t*, int64_t), const uint8_t* w) {
  const float* x[NT];
  for (int t = 0; t < NT; ++t) x[t] = static_cast<const float*>(acts[t]);
  // The accumulators start at the first step (fma(a, b, 0) == a * b) rather than from a zeroed
  // array: GCC zeroes a spilled accumulator array with `rep stosq`, which cost 5-12 % of the
  // prefill kernels' time at 8 tokens.
  __m256 acc0[NT], acc1[NT];
  if (n < 16)
    for (int t = 0; t < NT; ++t) acc0[t] = acc1[t] = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m256 w0 = load(j), w1 = load(j + 8);
    for (int t = 0; t < NT; ++t) {
      acc0[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x[t] + j), j == 0 ? _mm256_setzero_ps() : acc0[t]);
      acc1[t] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x[t] + j + 8), j == 0 ? _mm256_setzero_ps() : acc1[t]);
    }
  }
  for (int t = 0; t < NT; ++t) {
    float s = hsum_ps(_mm256_add_ps(acc0[t], acc1[t]));
    for (int64_t k = j; k < n; ++k) s += tail_w(w, k) * x[t][k];
    out[t] = s;
  }
}

float tail_f32(const uint8_t* w, int64_t k) { return reinterpret_cast<const float*>(w)[k]; }
float tail_f16(const uint8_t* w, int64_t k) { return f16c(reinterpret_cast<const uint16_t*>(w)[k]); }
float tail_bf16(const uint8_t* w, int64_t k) {
  return bf16_to_f32(reinterpret_cast<const uint16_t*>(w)[k]);
}

template <int NT>
void v_f32(const uint8_t* w, const void* const* acts, int64_t n, float* out) {
  const float* wr = reinterpret_cast<const float*>(w);
  float_rows<NT>([wr](int64_t j) { return _mm256_loadu_ps(wr + j); }, acts, n, out, tail_f32, w);
}

template <int NT>
void v_f16(const uint8_t* w, const void* const* acts, int64_t n, float* out) {
  const uint16_t* wr = reinterpret_cast<const uint16_t*>(w);
  float_rows<NT>(
      [wr](int64_t j) {
        return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wr + j)));
      },
      acts, n, out, tail_f16, w);
}

template <int NT>
void v_bf16(const uint8_t* w, const void* const* acts, int64_t n, float* out) {
  const uint16_t* wr = reinterpret_cast<const uint16_t*>(w);
  float_rows<NT>(
      [wr](int64_t j) {
        const __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wr + j)));
        return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
      },
      acts, n, out, tail_bf16, w);
}

template <int NT>
void v_q8_0(const uint8_t* w, const void* const* acts, int64_t n, float* out) {
  const BlockQ8_0* b = reinterpret_cast<const BlockQ8_0*>(w);
  const ActQ8x32* y[NT];
  __m256 acc[NT];
  for (int t = 0; t < NT; ++t) y[t] = static_cast<const ActQ8x32*>(acts[t]);
  acc_init<NT>(acc);
  const int64_t nb = n / kQK;  // >= 1 (checked_kernels)
  for (int64_t i = 0; i < nb; ++i) {
    const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i].qs));
    const __m256i aq = _mm256_sign_epi8(q, q);
    const float dw = f16c(b[i].d);
    for (int t = 0; t < NT; ++t) {
      const __m256i ya = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y[t][i].qs));
      const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(aq, _mm256_sign_epi8(ya, q)),
                                          _mm256_set1_epi16(1));
      acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * y[t][i].d), _mm256_cvtepi32_ps(p),
                               acc_in<NT>(acc[t], i == 0));
    }
  }
  for (int t = 0; t < NT; ++t) out[t] = hsum_ps(acc[t]);
}

// Q4_0: codes q in 0..15 multiply unsigned (maddubs); the -8 offset is applied once per block
// through the activation block sum: sum (q - 8) a = sum q a - 8 s.
template <int NT>
void v_q4_0(const uint8_t* w, const void* const* acts, int64_t n, float* out) {
  const BlockQ4_0* b = reinterpret_cast<const BlockQ4_0*>(w);
  const ActQ8x32* y[NT];
  __m256 acc[NT];
  float corr[NT];
  for (int t = 0; t < NT; ++t) {
    y[t] = static_cast<const ActQ8x32*>(acts[t]);
    corr[t] = 0;
  }
  acc_init<NT>(acc);
  const __m256i m4 = _mm256_set1_epi8(15), ones16 = _mm256_set1_epi16(1);
  const int64_t nb = n / kQK;
  for (int64_t i = 0; i < nb; ++i) {
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b[i].qs));
    const __m256i q = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), m4);
    const float dw = f16c(b[i].d);
    for (int t = 0; t < NT; ++t) {
      const __m256i ya = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y[t][i].qs));
      const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(q, ya), ones16);
      const float s = dw * y[t][i].d;
      acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(s), _mm256_cvtepi32_ps(p),
                               acc_in<NT>(acc[t], i == 0));
      corr[t] += s * static_cast<float>(y[t][i].s);
    }
  }
  for (int t = 0; t < NT; ++t) out[t] = hsum_ps(acc[t]) - 8.0f * corr[t];
}

template <int NT>
void v_iq4_xs(const uint8_t* w, const void* const* acts, int64_t n, float* out) {
  const BlockIQ4_XS* b = reinterpret_cast<const BlockIQ4_XS*>(w);
  const ActQ8x32* y[NT];
  __m256 acc[NT];
  for (int t = 0; t < NT; ++t) y[t] = static_cast<const ActQ8x32*>(acts[t]);
  acc_init<NT>(acc);
  const __m256i m4 = _mm256_set1_epi8(15);
  const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4nl)));
  const int64_t nb = n / kQKK;
  for (int64_t i = 0; i < nb; ++i) {
    const float d = f16c(b[i].d);
    const uint32_t sl = b[i].scales_l[0] | b[i].scales_l[1] << 8 | b[i].scales_l[2] << 16 |
                        static_cast<uint32_t>(b[i].scales_l[3]) << 24;
    const uint32_t sh = b[i].scales_h;
    for (int ib = 0; ib < 8; ++ib) {
      const int ls = ((sl >> (4 * ib)) & 15) | (((sh >> (2 * ib)) & 3) << 4);
      const float dl = d * static_cast<float>(ls - 32);
      const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b[i].qs + 16 * ib));
      const __m256i idx = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), m4);
      const __m256i q = _mm256_shuffle_epi8(table, idx);
      for (int t = 0; t < NT; ++t) {
        const ActQ8x32& ya = y[t][8 * i + ib];
        const __m256i p = dot_i8(q, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ya.qs)));
        acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dl * ya.d), _mm256_cvtepi32_ps(p),
                                 acc_in<NT>(acc[t], i == 0 && ib == 0));
      }
    }
  }
  for (int t = 0; t < NT; ++t) out[t] = hsum_ps(acc[t]);
}

// 6-bit scales and mins of a Q4_K / Q5_K block: bytes 0..7 = sc[0..7], 8..15 = m[0..7].
inline __m128i unpack_scales_k(const uint8_t* s) {
  uint32_t w0, w1, w2;
  std::memcpy(&w0, s, 4);
  std::memcpy(&w1, s + 4, 4);
  std::memcpy(&w2, s + 8, 4);
  const uint32_t sc_lo = w0 & 0x3f3f3f3f;
  const uint32_t sc_hi = (w2 & 0x0f0f0f0f) | (((w0 >> 6) & 0x03030303) << 4);
  const uint32_t m_lo = w1 & 0x3f3f3f3f;
  const uint32_t m_hi = ((w2 >> 4) & 0x0f0f0f0f) | (((w1 >> 6) & 0x03030303) << 4);
  return _mm_set_epi32(static_cast<int>(m_hi), static_cast<int>(m_lo), static_cast<int>(sc_hi),
                       static_cast<int>(sc_lo));
}

// Shuffle masks that broadcast 16-bit word j of each 128-bit lane to the whole lane (plain
// bytes: no vector instruction may run before the CPU check, static initialisers included).
struct WordBroadcast {
  alignas(32) uint8_t b[8][32];
};
constexpr WordBroadcast make_word_broadcast() {
  WordBroadcast w{};
  for (int j = 0; j < 8; ++j)
    for (int k = 0; k < 32; ++k) w.b[j][k] = static_cast<uint8_t>(2 * j + (k & 1));
  return w;
}
constexpr WordBroadcast kWordBcast = make_word_broadcast();
inline __m256i word_bcast(const __m256i v, int j) {
  return _mm256_shuffle_epi8(v, _mm256_load_si256(reinterpret_cast<const __m256i*>(kWordBcast.b[j])));
}

template <int NT, bool HB>
void v_qk45(const uint8_t* w, const void* const* acts, int64_t n, float* out) {
  using Block = std::conditional_t<HB, BlockQ5_K, BlockQ4_K>;
  const Block* b = reinterpret_cast<const Block*>(w);
  const ActQ8x256* y[NT];
  __m256 acc[NT];
  for (int t = 0; t < NT; ++t) { y[t] = static_cast<const ActQ8x256*>(acts[t]); }
  acc_init<NT>(acc);
  const __m256i m4 = _mm256_set1_epi8(15);
  const __m256i bit4 = _mm256_set1_epi8(16);
  const int64_t nb = n / kQKK;
  for (int64_t i = 0; i < nb; ++i) {
    const __m128i scm = unpack_scales_k(b[i].scales);
    // Scales as 16-bit words in both lanes; dmin * m_j as f32 lanes j (shared by the tokens).
    const __m256i scv = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(scm));
    const __m256 dvec = _mm256_set1_ps(f16c(b[i].d));
    const __m256 fmins = _mm256_mul_ps(_mm256_set1_ps(f16c(b[i].dmin)),
                                       _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(scm, 8))));
    __m256i isum[NT];
    for (int t = 0; t < NT; ++t) {
      // - sum_j dmin m_j * da (sum of the 32 activations of sub-block j), per lane j.
      acc[t] = _mm256_fnmadd_ps(fmins, _mm256_loadu_ps(y[t][i].dsums),
                               acc_in<NT>(acc[t], i == 0));
      isum[t] = _mm256_setzero_si256();
    }
    __m256i hb;
    if constexpr (HB) hb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i].qh));
    for (int c = 0; c < 4; ++c) {
      const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i].qs + 32 * c));
      __m256i lo = _mm256_and_si256(q, m4);
      __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
      if constexpr (HB) {
        lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(hb, 4), bit4));
        hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(hb, 3), bit4));
        hb = _mm256_srli_epi16(hb, 2);
      }
      const __m256i s0 = word_bcast(scv, 2 * c);
      const __m256i s1 = word_bcast(scv, 2 * c + 1);
      for (int t = 0; t < NT; ++t) {
        const int8_t* ya = y[t][i].qs + 64 * c;
        const __m256i p0 = _mm256_madd_epi16(
            _mm256_maddubs_epi16(lo, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ya))), s0);
        const __m256i p1 = _mm256_madd_epi16(
            _mm256_maddubs_epi16(hi, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ya + 32))), s1);
        isum[t] = _mm256_add_epi32(isum[t], _mm256_add_epi32(p0, p1));
      }
    }
    for (int t = 0; t < NT; ++t)
      acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dvec, _mm256_broadcast_ss(&y[t][i].d)),
                               _mm256_cvtepi32_ps(isum[t]), acc[t]);
  }
  for (int t = 0; t < NT; ++t) out[t] = hsum_ps(acc[t]);
}

template <int NT>
void v_q4_k(const uint8_t* w, const void* const* acts, int64_t n, float* out) {
  v_qk45<NT, false>(w, acts, n, out);
}
template <int NT>
void v_q5_k(const uint8_t* w, const void* const* acts, int64_t n, float* out) {
  v_qk45<NT, true>(w, acts, n, out);
}

template <int NT>
void v_q6_k(const uint8_t* w, const void* const* acts, int64_t n, float* out) {
  const BlockQ6_K* b = reinterpret_cast<const BlockQ6_K*>(w);
  const ActQ8x256* y[NT];
  __m256 acc[NT];
  for (int t = 0; t < NT; ++t) { y[t] = static_cast<const ActQ8x256*>(acts[t]); }
  acc_init<NT>(acc);
  const __m256i m4 = _mm256_set1_epi8(15);
  const __m256i m30 = _mm256_set1_epi8(0x30);
  const int64_t nb = n / kQKK;
  for (int64_t i = 0; i < nb; ++i) {
    const float d = f16c(b[i].d);
    const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b[i].scales)));
    __m256i isum[NT];
    for (int t = 0; t < NT; ++t) {  // the -32 offset: -32 * sum_s sc_s * bsum_s
      const __m256i corr = _mm256_madd_epi16(
          sc16, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y[t][i].bsums)));
      isum[t] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(corr, 5));
    }
    for (int half = 0; half < 2; ++half) {
      const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i].qh + 32 * half));
      const __m256i ql0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i].ql + 64 * half));
      const __m256i ql1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i].ql + 64 * half + 32));
      __m256i q[4];
      q[0] = _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30));
      q[1] = _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30));
      q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), _mm256_and_si256(qh, m30));
      q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                             _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30));
      const int8_t* scl = b[i].scales + 8 * half;
      for (int k = 0; k < 4; ++k) {
        const __m256i s = _mm256_set_m128i(_mm_set1_epi16(scl[2 * k + 1]), _mm_set1_epi16(scl[2 * k]));
        for (int t = 0; t < NT; ++t) {
          const int8_t* ya = y[t][i].qs + 128 * half + 32 * k;
          const __m256i p = _mm256_maddubs_epi16(q[k], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ya)));
          isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(p, s));
        }
      }
    }
    const __m256 dvec = _mm256_set1_ps(d);
    for (int t = 0; t < NT; ++t)
      acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dvec, _mm256_broadcast_ss(&y[t][i].d)),
                               _mm256_cvtepi32_ps(isum[t]), acc_in<NT>(acc[t], i == 0));
  }
  for (int t = 0; t < NT; ++t) out[t] = hsum_ps(acc[t]);
}

// ---------------------------------------------------------------------------------------------
// Dispatch
// ---------------------------------------------------------------------------------------------

constexpr int kMaxNT = 8;  // tokens per weight-row pass
constexpr int kGroupNT = kMaxNT;  // tokens per group in prefill



struct Kernels {
  RowKernel k[kMaxNT];  // k[nt - 1] handles nt tokens
};

#define RS_AVX_KERNELS(fn) Kernels{{fn<1>, fn<2>, fn<3>, fn<4>, fn<5>, fn<6>, fn<7>, fn<8>}}
#define RS_SCALAR_KERNELS(fn)                                                              \
  Kernels {                                                                                \
    { scalar_kernel<fn, 1>, scalar_kernel<fn, 2>, scalar_kernel<fn, 3>, scalar_kernel<fn, 4>, scalar_kernel<fn, 5>, scalar_kernel<fn, 6>, scalar_kernel<fn, 7>, scalar_kernel<fn, 8> } \
  }

const Kernels* kernels_for(GgmlType t, bool avx2) {
  static const Kernels av_f32 = RS_AVX_KERNELS(v_f32), sc_f32 = RS_SCALAR_KERNELS(s_dot_f32);
  static const Kernels av_f16 = RS_AVX_KERNELS(v_f16), sc_f16 = RS_SCALAR_KERNELS(s_dot_f16);
  static const Kernels av_bf16 = RS_AVX_KERNELS(v_bf16), sc_bf16 = RS_SCALAR_KERNELS(s_dot_bf16);
  static const Kernels av_q8_0 = RS_AVX_KERNELS(v_q8_0), sc_q8_0 = RS_SCALAR_KERNELS(s_dot_q8_0);
  static const Kernels av_q4_0 = RS_AVX_KERNELS(v_q4_0), sc_q4_0 = RS_SCALAR_KERNELS(s_dot_q4_0);
  static const Kernels av_iq4 = RS_AVX_KERNELS(v_iq4_xs), sc_iq4 = RS_SCALAR_KERNELS(s_dot_iq4_xs);
  static const Kernels av_q4_k = RS_AVX_KERNELS(v_q4_k), sc_q4_k = RS_SCALAR_KERNELS(s_dot_qk45<false>);
  static const Kernels av_q5_k = RS_AVX_KERNELS(v_q5_k), sc_q5_k = RS_SCALAR_KERNELS(s_dot_qk45<true>);
  static const Kernels av_q6_k = RS_AVX_KERNELS(v_q6_k), sc_q6_k = RS_SCALAR_KERNELS(s_dot_q6_k);
  switch (t) {
    case GgmlType::F32: return avx2 ? &av_f32 : &sc_f32;
    case GgmlType::F16: return avx2 ? &av_f16 : &sc_f16;
    case GgmlType::BF16: return avx2 ? &av_bf16 : &sc_bf16;
    case GgmlType::Q8_0: return avx2 ? &av_q8_0 : &sc_q8_0;
    case GgmlType::Q4_0: return avx2 ? &av_q4_0 : &sc_q4_0;
    case GgmlType::IQ4_XS: return avx2 ? &av_iq4 : &sc_iq4;
    case GgmlType::Q4_K: return avx2 ? &av_q4_k : &sc_q4_k;
    case GgmlType::Q5_K: return avx2 ? &av_q5_k : &sc_q5_k;
    case GgmlType::Q6_K: return avx2 ? &av_q6_k : &sc_q6_k;
    default: return nullptr;
  }
}

// Activations as the row kernels want them: a pointer per token.
struct Acts {
  const uint8_t* base;
  size_t stride;                 // bytes between tokens
  const int32_t* idx = nullptr;  // optional gather: token t is row idx[t]
  const void* tok(int64_t t) const { return base + (idx ? idx[t] : t) * stride; }
};

// thread_local buffer that only grows (64-byte aligned storage).
template <typename T>
T* scratch(std::vector<uint8_t>& buf, size_t count) {
  const size_t need = count * sizeof(T) + 64;
  if (buf.size() < need) buf.resize(need);
  uintptr_t p = reinterpret_cast<uintptr_t>(buf.data());
  p = (p + 63) & ~static_cast<uintptr_t>(63);
  return reinterpret_cast<T*>(p);
}

Acts prepare_acts(GgmlType t, const float* x, int64_t ldx, int64_t n_tok, int64_t cols,
                  int n_threads) {
  using matmul_internal::act_kind;
  thread_local std::vector<uint8_t> buf;
  switch (act_kind(t)) {
    case ActKind::kF32:
      return {reinterpret_cast<const uint8_t*>(x), static_cast<size_t>(ldx) * sizeof(float)};
    case ActKind::kQ8x32: {
      const int64_t nb = cols / kQK;
      ActQ8x32* a = scratch<ActQ8x32>(buf, static_cast<size_t>(nb * n_tok));
      cpu_parallel_for(n_tok >= 8 ? n_threads : 1, n_tok, [&](int64_t i) {
        matmul_internal::quantize_act_q8x32(x + i * ldx, a + i * nb, cols);
      });
      return {reinterpret_cast<const uint8_t*>(a), static_cast<size_t>(nb) * sizeof(ActQ8x32)};
    }
    case ActKind::kQ8x256: {
      const int64_t nb = cols / kQKK;
      ActQ8x256* a = scratch<ActQ8x256>(buf, static_cast<size_t>(nb * n_tok));
      cpu_parallel_for(n_tok >= 8 ? n_threads : 1, n_tok, [&](int64_t i) {
        matmul_internal::quantize_act_q8x256(x + i * ldx, a + i * nb, cols);
      });
      return {reinterpret_cast<const uint8_t*>(a), static_cast<size_t>(nb) * sizeof(ActQ8x256)};
    }
  }
  return {};
}

// Rows [r0, r1) of Y for every token.
void run_rows(const Kernels& k, const WeightView& w, const Acts& a, int64_t n_tok, float* y,
              int64_t ldy, int64_t r0, int64_t r1) {
  if (n_tok == 1) {
    // Decode streams the rows once: software prefetch 512 B ahead within this thread's range
    // (on top of the hardware prefetcher: 5-10% on a DRAM-sized Q4_K/Q6_K matvec, one thread,
    // CPU time; the expert-sized matrices neither gain nor lose).
    constexpr size_t kAhead = 512;
    const void* act[1] = {a.tok(0)};
    const size_t rs = w.row_stride;
    const uint8_t* end = w.row(r1);
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* p = w.row(r) + kAhead;
      for (size_t o = 0; o < rs && p + o < end; o += 64)
        _mm_prefetch(reinterpret_cast<const char*>(p + o), _MM_HINT_T0);
      k.k[0](w.row(r), act, w.cols, y + r);
    }
    return;
  }
  // Row tiles of about 128 KiB of weights stay in L2 while every token group sweeps them.
  const size_t rb = std::max<size_t>(w.row_stride, 1);
  const int64_t tile = std::max<int64_t>(1, static_cast<int64_t>((128u << 10) / rb));
  for (int64_t rt = r0; rt < r1; rt += tile) {
    const int64_t re = std::min(r1, rt + tile);
    for (int64_t t0 = 0; t0 < n_tok; t0 += kGroupNT) {
      const int nt = static_cast<int>(std::min<int64_t>(kGroupNT, n_tok - t0));
      const void* act[kMaxNT];
      for (int j = 0; j < nt; ++j) act[j] = a.tok(t0 + j);
      const RowKernel kern = k.k[nt - 1];
      float out[kMaxNT];
      for (int64_t r = rt; r < re; ++r) {
        kern(w.row(r), act, w.cols, out);
        for (int j = 0; j < nt; ++j) y[(t0 + j) * ldy + r] = out[j];
      }
    }
  }
}

// Rows per work item of the pool: ~64 KiB of weights for decode (claims stay rare, streams
// long), one 128 KiB L2 tile for prefill.
int64_t chunk_rows(const WeightView& w, int64_t n_tok) {
  const size_t bytes = n_tok == 1 ? (64u << 10) : (128u << 10);
  return std::max<int64_t>(1, static_cast<int64_t>(bytes / std::max<size_t>(w.row_stride, 1)));
}

// Callers check is_compute_type() and the block multiple first (the model loader does); a
// violation here is a bug in the caller: say what it was and abort.
const Kernels& checked_kernels(GgmlType t, int64_t cols) {
  const Kernels* k = kernels_for(t, matmul_internal::using_avx2());
  const TypeInfo* info = type_info(t);
  if (!k || !info) {
    std::fprintf(stderr, "rigserve: matmul_cpu: no kernel for tensor type %s (id %u)\n",
                 type_name(t), static_cast<unsigned>(t));
    std::abort();
  }
  if (cols % info->block_size != 0) {
    std::fprintf(stderr, "rigserve: matmul_cpu: %lld columns are not a multiple of the %s block "
                 "size %lld\n", static_cast<long long>(cols), info->name,
                 static_cast<long long>(info->block_size));
    std::abort();
  }
  return *k;
}

}  // namespace

void matmul_cpu(const WeightView& w, const float* x, int64_t ldx, int64_t n_tok, float* y,
                int64_t ldy, int n_threads) {
  if (n_tok <= 0 || w.rows <= 0) return;
  const Kernels* k = &checked_kernels(w.type, w.cols);
  n_threads = std::max(1, n_threads);
  // Small products are not worth waking threads for (~64K weights per thread at least).
  const int64_t work = w.rows * w.cols * std::max<int64_t>(1, n_tok);
  n_threads = static_cast<int>(std::min<int64_t>(n_threads, std::max<int64_t>(1, work >> 16)));
  n_threads = static_cast<int>(std::min<int64_t>(n_threads, w.rows));
  const Acts a = prepare_acts(w.type, x, ldx, n_tok, w.cols, n_threads);
  if (n_threads == 1) {
    run_rows(*k, w, a, n_tok, y, ldy, 0, w.rows);
    return;
  }
  const int64_t chunk = chunk_rows(w, n_tok);
  cpu_parallel_for(n_threads, (w.rows + chunk - 1) / chunk, [&](int64_t c) {
    run_rows(*k, w, a, n_tok, y, ldy, c * chunk, std::min(w.rows, (c + 1) * chunk));
  });
}

namespace {

// Bytes of one converted activation row of `cols` values for weights of type t (0: used as f32).
size_t act_row_bytes(GgmlType t, int64_t cols) {
  switch (matmul_internal::act_kind(t)) {
    case ActKind::kQ8x32: return static_cast<size_t>(cols / kQK) * sizeof(ActQ8x32);
    case ActKind::kQ8x256: return static_cast<size_t>(cols / kQKK) * sizeof(ActQ8x256);
    default: return 0;
  }
}

void convert_act_row(ActKind kind, const float* x, int64_t cols, uint8_t* dst) {
  if (kind == ActKind::kQ8x32)
    matmul_internal::quantize_act_q8x32(x, reinterpret_cast<ActQ8x32*>(dst), cols);
  else
    matmul_internal::quantize_act_q8x256(x, reinterpret_cast<ActQ8x256*>(dst), cols);
}

struct ActSource {
  const float* x;
  int64_t ldx, cols, x_n;
  ActKind kind;
  size_t offset, row_bytes;  // in the batch's activation buffer
};

}  // namespace

void matmul_cpu_batch(const MatmulTask* tasks, int64_t n_tasks, int n_threads) {
  using matmul_internal::act_kind;
  thread_local std::vector<ActSource> sources;
  thread_local std::vector<int32_t> task_source;
  thread_local std::vector<const Kernels*> task_kernels;
  thread_local std::vector<uint8_t> buf;
  sources.clear();
  task_source.assign(n_tasks, -1);
  task_kernels.assign(n_tasks, nullptr);
  size_t bytes = 0;
  int64_t work = 0, max_rows = 0, n_convert = 0;
  for (int64_t i = 0; i < n_tasks; ++i) {
    const MatmulTask& tk = tasks[i];
    if (tk.n_tok <= 0 || tk.w.rows <= 0) continue;
    task_kernels[i] = &checked_kernels(tk.w.type, tk.w.cols);
    work += tk.w.rows * tk.w.cols * tk.n_tok;
    max_rows = std::max(max_rows, tk.w.rows);
    const ActKind kind = act_kind(tk.w.type);
    if (kind == ActKind::kF32) continue;
    int32_t found = -1;
    for (size_t s = 0; s < sources.size(); ++s)
      if (sources[s].x == tk.x && sources[s].ldx == tk.ldx && sources[s].cols == tk.w.cols &&
          sources[s].kind == kind && sources[s].x_n >= tk.x_n) {
        found = static_cast<int32_t>(s);
        break;
      }
    if (found < 0) {
      const size_t rb = act_row_bytes(tk.w.type, tk.w.cols);
      sources.push_back({tk.x, tk.ldx, tk.w.cols, tk.x_n, kind, bytes, rb});
      bytes += (rb * tk.x_n + 63) / 64 * 64;
      n_convert += tk.x_n;
      found = static_cast<int32_t>(sources.size() - 1);
    }
    task_source[i] = found;
  }
  if (work == 0) return;
  uint8_t* base = scratch<uint8_t>(buf, bytes);
  // The lambdas below run on other threads: they must see this thread's buffers, not their own
  // thread_local instances.
  const ActSource* src_begin = sources.data();
  const ActSource* src_end = src_begin + sources.size();
  const int32_t* tsrc = task_source.data();
  const Kernels* const* tkern = task_kernels.data();
  n_threads = std::max(1, n_threads);
  n_threads = static_cast<int>(std::min<int64_t>(n_threads, std::max<int64_t>(1, work >> 16)));
  auto acts_of = [&](int64_t i) -> Acts {
    const MatmulTask& tk = tasks[i];
    if (tsrc[i] < 0)
      return {reinterpret_cast<const uint8_t*>(tk.x), static_cast<size_t>(tk.ldx) * sizeof(float),
              tk.x_rows};
    const ActSource& src = src_begin[tsrc[i]];
    return {base + src.offset, src.row_bytes, tk.x_rows};
  };
  // 1. Each source row converted once.
  if (n_convert > 0) {
    thread_local std::vector<std::pair<int32_t, int32_t>> conv;  // (source, row)
    conv.clear();
    for (const ActSource* sp = src_begin; sp != src_end; ++sp)
      for (int64_t r = 0; r < sp->x_n; ++r)
        conv.emplace_back(static_cast<int32_t>(sp - src_begin), static_cast<int32_t>(r));
    const std::pair<int32_t, int32_t>* cv = conv.data();
    cpu_parallel_for(n_threads, static_cast<int64_t>(conv.size()), [&](int64_t i) {
      const ActSource& src = src_begin[cv[i].first];
      const int64_t r = cv[i].second;
      convert_act_row(src.kind, src.x + r * src.ldx, src.cols, base + src.offset + r * src.row_bytes);
    });
  }
  // 2. Every task's rows in work items of chunk_rows.
  struct Item {
    int64_t task, r0, r1;
  };
  thread_local std::vector<Item> items;
  items.clear();
  for (int64_t i = 0; i < n_tasks; ++i) {
    if (!tkern[i]) continue;
    const int64_t rows = tasks[i].w.rows, chunk = chunk_rows(tasks[i].w, tasks[i].n_tok);
    for (int64_t r = 0; r < rows; r += chunk) items.push_back({i, r, std::min(rows, r + chunk)});
  }
  const Item* it = items.data();
  cpu_parallel_for(n_threads, static_cast<int64_t>(items.size()), [&](int64_t j) {
    const MatmulTask& tk = tasks[it[j].task];
    run_rows(*tkern[it[j].task], tk.w, acts_of(it[j].task), tk.n_tok, tk.y, tk.ldy, it[j].r0,
             it[j].r1);
  });
}

float vec_dot_cpu(GgmlType t, const void* row, const float* x, int64_t n) {
  const Kernels* k = &checked_kernels(t, n);
  const Acts a = prepare_acts(t, x, n, 1, n, 1);
  const void* act[1] = {a.tok(0)};
  float out;
  k->k[0](static_cast<const uint8_t*>(row), act, n, &out);
  return out;
}

}  // namespace rs
