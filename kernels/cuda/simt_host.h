// A small SIMT emulator: runs a CUDA kernel's source, compiled by the host compiler, the way a
// GPU would schedule it, so the kernel's logic is tested on machines without a GPU (see simt.h).
//
// Model: the blocks of the grid run one after another; the threads of a block are fibers
// (a small register switch on x86-64, ucontext elsewhere) on the calling thread, each with its own stack. A thread runs until it reaches a
// barrier (__syncthreads, __syncwarp or a warp shuffle / vote) or returns; when every live thread
// waits, the scheduler releases the warps whose live lanes all wait at a warp barrier, or else,
// if every live thread waits at __syncthreads, the whole block. A warp whose lanes wait at
// different kinds of barrier is a deadlock on the device too: the launch stops and says so.
// __shared__ arrays become function statics (shared by the block's fibers; blocks run one at a
// time). Between two barriers the threads run in the order set by set_order (forward, reverse
// or a seeded shuffle): a kernel whose result depends on that order has a race, and running a
// test under two orders shows it.
//
// Single host thread at a time (the emulator's state is global). Not a timing model.
#pragma once

#if __has_include(<cuda_fp16.h>)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif
#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#undef __shared__
#define __shared__ static

struct rs_simt_u3 {
  unsigned x = 0, y = 0, z = 0;
};
// CUDA's built-in index variables, set by the scheduler before it resumes a thread.
inline rs_simt_u3 threadIdx, blockIdx, blockDim, gridDim;
inline constexpr int warpSize = 32;

namespace rs::simt {

struct Dim {
  unsigned x = 1, y = 1, z = 1;
  Dim(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

enum class Order { kForward, kReverse, kShuffled };

namespace detail {

enum class St { kRun, kBlockWait, kWarpWait, kDone };

#if defined(__x86_64__)
// Context switch without a system call (swapcontext saves the signal mask with one): saves the
// callee-saved registers, MXCSR and the x87 control word on the current stack, stores the stack
// pointer to *from and continues on `to`. Weak: every test that includes this header defines it.
extern "C" void rs_simt_switch(void** from, void* to);
asm(R"(
  .text
  .weak rs_simt_switch
  .type rs_simt_switch,@function
rs_simt_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size rs_simt_switch, .-rs_simt_switch
)");
#define RS_SIMT_FAST_SWITCH 1
#endif

struct Fiber {
#ifdef RS_SIMT_FAST_SWITCH
  void* sp = nullptr;
#else
  ucontext_t ctx;
#endif
  rs_simt_u3 tid;
  St st = St::kRun;
};

struct Emu {
  static constexpr size_t kStack = 256 * 1024;
  std::vector<Fiber> fibers;
  std::vector<char*> stacks;
  std::vector<uint64_t> slot;  // warp exchange, one per thread
  std::vector<unsigned char> dyn;
#ifdef RS_SIMT_FAST_SWITCH
  void* sched_sp = nullptr;
#else
  ucontext_t sched;
#endif
  int cur = -1;
  std::function<void()> body;
  Order order = Order::kForward;
  uint32_t seed = 1;
  bool in_kernel = false;

  ~Emu() {
    for (char* s : stacks) munmap(s, kStack);
  }
};

inline Emu& emu() {
  static Emu e;
  return e;
}

inline void fiber_entry() {
  Emu& e = emu();
  e.body();
  e.fibers[e.cur].st = St::kDone;
#ifdef RS_SIMT_FAST_SWITCH
  void* dead;
  rs_simt_switch(&dead, e.sched_sp);  // never resumed
  __builtin_unreachable();
#endif
  // (ucontext) returning resumes uc_link, the scheduler
}

inline void wait(St s) {
  Emu& e = emu();
  Fiber& f = e.fibers[e.cur];
  f.st = s;
#ifdef RS_SIMT_FAST_SWITCH
  rs_simt_switch(&f.sp, e.sched_sp);
#else
  swapcontext(&f.ctx, &e.sched);
#endif
}

// Prepares fiber i to start fiber_entry on stack `stack` of `size` bytes.
inline void start_fiber(Fiber& f, char* stack, size_t size) {
#ifdef RS_SIMT_FAST_SWITCH
  auto* top = reinterpret_cast<uintptr_t*>((reinterpret_cast<uintptr_t>(stack) + size - 32) & ~uintptr_t{15});
  top[0] = reinterpret_cast<uintptr_t>(&fiber_entry);  // "returned" to by the first switch
  top[1] = 0;
  uintptr_t* sp = top - 7;  // r15 r14 r13 r12 rbx rbp = 0, then MXCSR / x87 control word
  for (int i = 1; i < 7; ++i) sp[i] = 0;
  const uint32_t mxcsr = 0x1F80, fcw = 0x037F;  // defaults: all exceptions masked, nearest
  sp[0] = mxcsr | (static_cast<uintptr_t>(fcw) << 32);
  f.sp = sp;
#else
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = stack;
  f.ctx.uc_stack.ss_size = size;
  f.ctx.uc_link = &emu().sched;
  makecontext(&f.ctx, fiber_entry, 0);
#endif
}

inline int lane() { return emu().cur & 31; }
inline int warp_base() { return emu().cur & ~31; }

template <class T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>);
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <class T>
T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

// Every lane of the warp publishes v, then reads lane src's value.
template <class T>
T exchange(T v, int src) {
  Emu& e = emu();
  e.slot[e.cur] = to_bits(v);
  wait(St::kWarpWait);
  const int n = static_cast<int>(e.fibers.size());
  const int idx = warp_base() + src;
  const T r = idx < n ? from_bits<T>(e.slot[idx]) : v;
  wait(St::kWarpWait);
  return r;
}

// Runs one block to completion; returns "" or what went wrong.
inline std::string run_block(unsigned nthreads) {
  Emu& e = emu();
  const int n = static_cast<int>(nthreads);
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  if (e.order == Order::kReverse) std::reverse(order.begin(), order.end());
  std::mt19937 rng(e.seed + blockIdx.x * 7919u + blockIdx.y * 104729u + blockIdx.z);
  for (;;) {
    if (e.order == Order::kShuffled) std::shuffle(order.begin(), order.end(), rng);
    for (int i : order) {
      Fiber& f = e.fibers[i];
      if (f.st != St::kRun) continue;
      e.cur = i;
      threadIdx = f.tid;
#ifdef RS_SIMT_FAST_SWITCH
      rs_simt_switch(&e.sched_sp, f.sp);
#else
      swapcontext(&e.sched, &f.ctx);
#endif
    }
    e.cur = -1;
    bool all_done = true, released = false;
    for (int w = 0; w < n; w += 32) {
      bool any_warp = false, mixed = false;
      for (int i = w; i < std::min(n, w + 32); ++i) {
        if (e.fibers[i].st == St::kWarpWait) any_warp = true;
        if (e.fibers[i].st == St::kBlockWait) mixed = true;
        if (e.fibers[i].st != St::kDone) all_done = false;
      }
      if (any_warp && mixed)
        return "deadlock: warp " + std::to_string(w / 32) +
               " has lanes at __syncthreads and lanes at a warp barrier";
      if (any_warp) {
        for (int i = w; i < std::min(n, w + 32); ++i)
          if (e.fibers[i].st == St::kWarpWait) e.fibers[i].st = St::kRun;
        released = true;
      }
    }
    if (all_done) return "";
    if (!released)
      for (auto& f : e.fibers)
        if (f.st == St::kBlockWait) f.st = St::kRun;
  }
}

}  // namespace detail

inline void set_order(Order o, uint32_t seed = 1) {
  detail::emu().order = o;
  detail::emu().seed = seed;
}

inline void* dynamic_shared() { return detail::emu().dyn.data(); }

// Launches kernel k over grid x block with `smem` bytes of dynamic shared memory; runs it to
// completion. Returns "" or the reason it could not (bad shape, deadlock).
template <class... P, class... A>
std::string launch(Dim grid, Dim block, size_t smem, void (*k)(P...), A&&... args) {
  using detail::emu;
  auto& e = emu();
  const unsigned nt = block.x * block.y * block.z;
  if (nt == 0 || nt > 1024) return "block of " + std::to_string(nt) + " threads (1..1024)";
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return "empty grid";
  if (smem > 227 * 1024) return "dynamic shared memory " + std::to_string(smem) + " bytes";
  if (e.in_kernel) return "nested launch";
  std::tuple<std::decay_t<P>...> t(std::forward<A>(args)...);
  e.body = [&] { std::apply(k, t); };
  while (e.stacks.size() < nt) {
    void* s = mmap(nullptr, detail::Emu::kStack, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (s == MAP_FAILED) return "cannot map a fiber stack";
    e.stacks.push_back(static_cast<char*>(s));
  }
  e.fibers.assign(nt, detail::Fiber{});
  e.slot.assign(nt, 0);
  e.dyn.assign(smem + 16, 0);
  blockDim = {block.x, block.y, block.z};
  gridDim = {grid.x, grid.y, grid.z};
  e.in_kernel = true;
  std::string err;
  for (unsigned bz = 0; bz < grid.z && err.empty(); ++bz)
    for (unsigned by = 0; by < grid.y && err.empty(); ++by)
      for (unsigned bx = 0; bx < grid.x && err.empty(); ++bx) {
        blockIdx = {bx, by, bz};
        for (unsigned i = 0; i < nt; ++i) {
          detail::Fiber& f = e.fibers[i];
          f.st = detail::St::kRun;
          f.tid = {i % block.x, (i / block.x) % block.y, i / (block.x * block.y)};
          detail::start_fiber(f, e.stacks[i], detail::Emu::kStack);
        }
        err = detail::run_block(nt);
      }
  e.in_kernel = false;
  e.body = nullptr;
  return err;
}

}  // namespace rs::simt

// ---- the CUDA device API the emulator provides ----------------------------------------------
inline void __syncthreads() { rs::simt::detail::wait(rs::simt::detail::St::kBlockWait); }
inline void __syncwarp(unsigned = 0xffffffffu) {
  rs::simt::detail::wait(rs::simt::detail::St::kWarpWait);
}
template <class T>
T __shfl_sync(unsigned, T v, int src, int width = 32) {
  const int l = rs::simt::detail::lane();
  return rs::simt::detail::exchange(v, (l & ~(width - 1)) + (src & (width - 1)));
}
template <class T>
T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
  const int l = rs::simt::detail::lane();
  const int s = l ^ mask;
  return rs::simt::detail::exchange(v, (s & ~(width - 1)) == (l & ~(width - 1)) ? s : l);
}
template <class T>
T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
  const int l = rs::simt::detail::lane();
  const int s = l + static_cast<int>(delta);
  return rs::simt::detail::exchange(v, (s & ~(width - 1)) == (l & ~(width - 1)) ? s : l);
}
template <class T>
T __shfl_up_sync(unsigned, T v, unsigned delta, int width = 32) {
  const int l = rs::simt::detail::lane();
  const int s = l - static_cast<int>(delta);
  return rs::simt::detail::exchange(v, s >= (l & ~(width - 1)) ? s : l);
}
inline unsigned __ballot_sync(unsigned, int pred) {
  using namespace rs::simt::detail;
  Emu& e = emu();
  e.slot[e.cur] = pred ? 1 : 0;
  wait(St::kWarpWait);
  unsigned r = 0;
  const int n = static_cast<int>(e.fibers.size());
  for (int i = 0; i < 32 && warp_base() + i < n; ++i)
    if (e.fibers[warp_base() + i].st != St::kDone && e.slot[warp_base() + i]) r |= 1u << i;
  wait(St::kWarpWait);
  return r;
}
inline int __any_sync(unsigned m, int pred) { return __ballot_sync(m, pred) != 0; }
inline int __all_sync(unsigned m, int pred) {
  using namespace rs::simt::detail;
  Emu& e = emu();
  const int n = static_cast<int>(e.fibers.size());
  unsigned live = 0;
  for (int i = 0; i < 32 && warp_base() + i < n; ++i)
    if (e.fibers[warp_base() + i].st != St::kDone) live |= 1u << i;
  return (__ballot_sync(m, pred) | ~live) == ~0u;
}

template <class T>
T atomicAdd(T* p, T v) {
  const T old = *p;
  *p = old + v;
  return old;
}
template <class T>
T atomicMax(T* p, T v) {
  const T old = *p;
  *p = std::max(old, v);
  return old;
}
template <class T>
T atomicMin(T* p, T v) {
  const T old = *p;
  *p = std::min(old, v);
  return old;
}
template <class T>
T atomicExch(T* p, T v) {
  const T old = *p;
  *p = v;
  return old;
}
template <class T>
T atomicCAS(T* p, T cmp, T v) {
  const T old = *p;
  if (old == cmp) *p = v;
  return old;
}

// Blocks run one after another here: every earlier write is visible already.
inline void __threadfence() {}
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
// Round to nearest, ties to even (the default rounding mode), as the device does.
inline int __float2int_rn(float x) { return static_cast<int>(std::nearbyint(x)); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __saturatef(float x) { return std::min(1.0f, std::max(0.0f, x)); }
inline unsigned __float_as_uint(float f) { return rs::simt::detail::from_bits<unsigned>(rs::simt::detail::to_bits(f)); }
inline float __uint_as_float(unsigned u) { return rs::simt::detail::from_bits<float>(u); }
inline int __float_as_int(float f) { return rs::simt::detail::from_bits<int>(rs::simt::detail::to_bits(f)); }
inline float __int_as_float(int i) { return rs::simt::detail::from_bits<float>(static_cast<uint32_t>(i)); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __clz(unsigned x) { return x ? __builtin_clz(x) : 32; }
inline int __ffs(unsigned x) { return __builtin_ffs(static_cast<int>(x)); }
template <class T>
T __ldg(const T* p) { return *p; }
