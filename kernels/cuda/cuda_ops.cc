// Host side of the CUDA backend: device probe, memory, streams, timers, and the checked entry
// points of cuda_ops.h (argument validation with the numbers in every message, then the raw
// launchers of the .cu files).
#include "kernels/cuda/cuda_ops.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <string_view>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_common.h"
#include "kernels/cuda/ffn_up_types.h"
#include "kernels/cuda/moe_decode_types.h"
#include "kernels/cuda/router_types.h"

namespace rs::cuda {
namespace ffnup {
cudaError_t launch_ffn_up(GgmlType t, const Args& a, cudaStream_t s);
}  // namespace ffnup
namespace moed {
cudaError_t launch_moe_up(GgmlType t, const UpArgs& a, cudaStream_t s);
cudaError_t launch_moe_down(GgmlType t, const DownArgs& a, cudaStream_t s);
}  // namespace moed
namespace detail {

std::string cuda_error_text(const char* what, cudaError_t e) {
  return absl::StrCat(what, ": CUDA error ", static_cast<int>(e), " (", cudaGetErrorName(e), ": ",
                      cudaGetErrorString(e), ")");
}

}  // namespace detail

namespace {

using detail::as_stream;

// Whether a checked call named `what` queued device work (a kernel, a copy, a fill) rather than
// asked the runtime something (device properties, events, streams, synchronisation).
bool queues_work(const char* what) {
  const std::string_view w(what);
  return !w.starts_with("cuda") || w.starts_with("cudaMemcpyAsync") ||
         w.starts_with("cudaMemsetAsync");
}

absl::Status cuda_status(const char* what, cudaError_t e) {
  if (e == cudaSuccess) {
    if (queues_work(what)) detail::profile_mark(what);
    return absl::OkStatus();
  }
  // Clear a sticky launch error so the next call starts clean (a real fault stays sticky).
  (void)cudaGetLastError();
  return absl::InternalError(detail::cuda_error_text(what, e));
}

absl::Status bad(const std::string& msg) { return absl::InvalidArgumentError(msg); }

bool aligned(const void* p, size_t a) { return reinterpret_cast<uintptr_t>(p) % a == 0; }

int64_t type_block(GgmlType t) {
  const TypeInfo* ti = type_info(t);
  return ti ? ti->block_size : 1;
}

// Load width of the matvec for each type: the row starts must be aligned to it.
size_t matvec_alignment(GgmlType t) {
  switch (t) {
    case GgmlType::F32: case GgmlType::F16: case GgmlType::BF16: case GgmlType::Q4_K:
    case GgmlType::Q5_K:
      return 16;
    case GgmlType::IQ4_XS: return 8;
    default: return 2;
  }
}

absl::Status check_weight(const char* op, const WeightView& w, int64_t min_cols_multiple) {
  if (!detail::type_supported(w.type))
    return bad(absl::StrCat(op, ": weight type ", type_name(w.type), " (id ",
                            static_cast<uint32_t>(w.type), ") has no CUDA kernel"));
  if (w.data == nullptr) return bad(absl::StrCat(op, ": weight data is null"));
  const int64_t mult = std::max(min_cols_multiple, type_block(w.type));
  if (w.cols <= 0 || w.cols % mult != 0)
    return bad(absl::StrCat(op, ": ", type_name(w.type), " weight has cols = ", w.cols,
                            ", must be a positive multiple of ", mult));
  if (w.rows <= 0) return bad(absl::StrCat(op, ": weight has rows = ", w.rows));
  if (w.row_stride < row_bytes(w.type, w.cols))
    return bad(absl::StrCat(op, ": row_stride ", w.row_stride, " < row bytes ",
                            row_bytes(w.type, w.cols), " (", type_name(w.type), ", cols ", w.cols,
                            ")"));
  return absl::OkStatus();
}

absl::Status check_matvec_alignment(const char* op, const WeightView& w) {
  const size_t a = matvec_alignment(w.type);
  if (!aligned(w.data, a) || w.row_stride % a != 0)
    return bad(absl::StrCat(op, ": ", type_name(w.type), " weights need ", a,
                            "-byte aligned rows (data % ", a, " = ",
                            reinterpret_cast<uintptr_t>(w.data) % a, ", row_stride ", w.row_stride,
                            ")"));
  return absl::OkStatus();
}

absl::Status check_act(const char* op, const WeightView& w, const DeviceAct& a, int64_t max_tok) {
  if (a.cols != w.cols)
    return bad(absl::StrCat(op, ": activations have ", a.cols, " cols, the weight ", w.cols));
  if (a.n_tok < 1 || a.n_tok > max_tok)
    return bad(absl::StrCat(op, ": n_tok = ", a.n_tok, ", must be in [1, ", max_tok, "]"));
  if (detail::type_uses_q8(w.type)) {
    if (a.q == nullptr || a.ds == nullptr)
      return bad(absl::StrCat(op, ": ", type_name(w.type),
                              " needs q8 activations (call quantize_act first)"));
  } else {
    if (a.x == nullptr) return bad(absl::StrCat(op, ": f32 activations are null"));
    if (!aligned(a.x, 16) || a.ldx % 4 != 0)
      return bad(absl::StrCat(op, ": f32 activations must be 16-byte aligned with ldx % 4 == 0 "
                              "(ldx ", a.ldx, ")"));
  }
  return absl::OkStatus();
}

detail::MvParams mv_params(const WeightView& w, const DeviceAct& a) {
  detail::MvParams p;
  p.type = w.type;
  p.w = static_cast<const uint8_t*>(w.data);
  p.row_stride = w.row_stride;
  p.cols = w.cols;
  p.rows = w.rows;
  p.x = a.x;
  p.ldx = a.ldx;
  p.q = a.q;
  p.ds = a.ds;
  p.n_tok = static_cast<int>(a.n_tok);
  return p;
}

size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

}  // namespace

// ---- probe, memory ---------------------------------------------------------------------------
bool cuda_available(std::string* why) {
  int n = 0;  // cudaGetDeviceCount leaves it unwritten on error
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    if (why) *why = detail::cuda_error_text("cudaGetDeviceCount", e);
    return false;
  }
  if (n <= 0) {
    if (why) *why = "cudaGetDeviceCount: 0 devices";
    return false;
  }
  if (why) why->clear();
  return true;
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n > 0 ? n : 0;
}

absl::StatusOr<DeviceInfo> device_info(int device) {
  cudaDeviceProp prop{};
  cudaError_t e = cudaGetDeviceProperties(&prop, device);
  if (e != cudaSuccess) return cuda_status("cudaGetDeviceProperties", e);
  DeviceInfo d;
  d.name = prop.name;
  d.cc_major = prop.major;
  d.cc_minor = prop.minor;
  d.sm_count = prop.multiProcessorCount;
  d.total_mem = prop.totalGlobalMem;
  d.l2_bytes = static_cast<size_t>(prop.l2CacheSize);
  d.mem_bus_bits = prop.memoryBusWidth;
  size_t free_b = 0, total_b = 0;
  e = cudaSetDevice(device);
  if (e == cudaSuccess) e = cudaMemGetInfo(&free_b, &total_b);
  if (e != cudaSuccess) return cuda_status("cudaMemGetInfo", e);
  d.free_mem = free_b;
  return d;
}

absl::StatusOr<DeviceBuffer> DeviceBuffer::alloc(size_t bytes) {
  DeviceBuffer b;
  if (bytes == 0) return b;
  const cudaError_t e = cudaMalloc(&b.p_, bytes);
  if (e != cudaSuccess) {
    b.p_ = nullptr;
    return cuda_status(absl::StrCat("cudaMalloc(", bytes, " bytes)").c_str(), e);
  }
  b.n_ = bytes;
  return b;
}

DeviceBuffer::~DeviceBuffer() {
  if (p_) (void)cudaFree(p_);
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (p_) (void)cudaFree(p_);
    p_ = std::exchange(o.p_, nullptr);
    n_ = std::exchange(o.n_, 0);
  }
  return *this;
}

absl::Status copy_to_device(void* d_dst, const void* src, size_t bytes, Stream s) {
  if (bytes == 0) return absl::OkStatus();
  return cuda_status("cudaMemcpyAsync(H2D)",
                     cudaMemcpyAsync(d_dst, src, bytes, cudaMemcpyHostToDevice, as_stream(s)));
}
absl::Status copy_to_host(void* dst, const void* d_src, size_t bytes, Stream s) {
  if (bytes == 0) return absl::OkStatus();
  cudaError_t e = cudaMemcpyAsync(dst, d_src, bytes, cudaMemcpyDeviceToHost, as_stream(s));
  if (e == cudaSuccess) e = cudaStreamSynchronize(as_stream(s));
  return cuda_status("cudaMemcpyAsync(D2H)", e);
}
absl::Status copy_device(void* d_dst, const void* d_src, size_t bytes, Stream s) {
  if (bytes == 0) return absl::OkStatus();
  return cuda_status("cudaMemcpyAsync(D2D)",
                     cudaMemcpyAsync(d_dst, d_src, bytes, cudaMemcpyDeviceToDevice, as_stream(s)));
}
absl::Status fill_bytes(void* d_dst, int value, size_t bytes, Stream s) {
  if (bytes == 0) return absl::OkStatus();
  return cuda_status("cudaMemsetAsync", cudaMemsetAsync(d_dst, value, bytes, as_stream(s)));
}
absl::Status synchronize(Stream s) {
  return cuda_status("cudaStreamSynchronize", cudaStreamSynchronize(as_stream(s)));
}
absl::StatusOr<Stream> create_stream() {
  cudaStream_t st = nullptr;
  const cudaError_t e = cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking);
  if (e != cudaSuccess) return cuda_status("cudaStreamCreate", e);
  return static_cast<Stream>(st);
}
void destroy_stream(Stream s) {
  if (s) (void)cudaStreamDestroy(as_stream(s));
}

EventTimer::EventTimer() {
  cudaEvent_t a = nullptr, b = nullptr;
  if (cudaEventCreate(&a) == cudaSuccess) a_ = a;
  if (cudaEventCreate(&b) == cudaSuccess) b_ = b;
  (void)cudaGetLastError();
}
EventTimer::~EventTimer() {
  if (a_) (void)cudaEventDestroy(static_cast<cudaEvent_t>(a_));
  if (b_) (void)cudaEventDestroy(static_cast<cudaEvent_t>(b_));
}
absl::Status EventTimer::start(Stream s) {
  if (!a_) return absl::FailedPreconditionError("EventTimer: cudaEventCreate failed");
  return cuda_status("cudaEventRecord", cudaEventRecord(static_cast<cudaEvent_t>(a_), as_stream(s)));
}
absl::Status EventTimer::stop(Stream s) {
  if (!b_) return absl::FailedPreconditionError("EventTimer: cudaEventCreate failed");
  return cuda_status("cudaEventRecord", cudaEventRecord(static_cast<cudaEvent_t>(b_), as_stream(s)));
}
absl::StatusOr<float> EventTimer::elapsed_ms() {
  if (!a_ || !b_) return absl::FailedPreconditionError("EventTimer: cudaEventCreate failed");
  cudaError_t e = cudaEventSynchronize(static_cast<cudaEvent_t>(b_));
  float ms = 0.0f;
  if (e == cudaSuccess)
    e = cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(a_), static_cast<cudaEvent_t>(b_));
  if (e != cudaSuccess) return cuda_status("cudaEventElapsedTime", e);
  return ms;
}

absl::Status fill_random(void* d_data, size_t bytes, uint64_t seed, Stream s) {
  return cuda_status("fill_random", detail::launch_fill_random(d_data, bytes, seed, as_stream(s)));
}

absl::Status read_sweep(const void* d_data, size_t bytes, float* d_sink, Stream s) {
  if (bytes % 16 != 0 || !aligned(d_data, 16))
    return bad(absl::StrCat("read_sweep: ", bytes, " bytes; need a 16-byte aligned multiple of 16"));
  return cuda_status("read_sweep", detail::launch_read_sweep(d_data, bytes, d_sink, as_stream(s)));
}

// ---- programmatic dependent launch -------------------------------------------------------------
namespace {
std::atomic<bool> g_pdl{false};
}  // namespace

bool detail::pdl_enabled() { return g_pdl.load(std::memory_order_relaxed); }

bool programmatic_launch_supported() {
  int dev = 0, major = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  // The device must support it and the kernels must have been compiled with their wait.
  return major >= 9 && detail::kernels_ptx_version() >= 90;
}

void set_programmatic_launch(bool on) {
  g_pdl.store(on && programmatic_launch_supported(), std::memory_order_relaxed);
}

bool programmatic_launch() { return detail::pdl_enabled(); }

// ---- launch profile ------------------------------------------------------------------------------
namespace {

struct ProfileState {
  cudaStream_t stream = nullptr;
  std::vector<cudaEvent_t> events;  // events[0]: the hold's end
  std::vector<const char*> names;   // names[i]: what events[i] follows (i >= 1)
  std::vector<const char*> scopes;  // the scope label at names[i] (or nullptr)
  int64_t used = 0;
  bool overflow = false;
  double hold_ms = 0;
  std::chrono::steady_clock::time_point begin;
  double last_mark_ms = 0;  // host time of the latest mark, from begin
  double queued_ms = -1;    // host time of the mark before the first device-to-host copy (which
                            // waits for the device), or -1
};
// Per thread: a profile covers the work its thread queues (several models may run in one process).
thread_local ProfileState* g_profile = nullptr;
thread_local const char* g_scope = nullptr;

void destroy_profile(ProfileState* p) {
  for (cudaEvent_t e : p->events) (void)cudaEventDestroy(e);
  delete p;
}

}  // namespace

void detail::profile_mark(const char* what) {
  ProfileState* p = g_profile;
  if (p == nullptr) return;
  if (p->used >= static_cast<int64_t>(p->events.size())) {
    p->overflow = true;
    return;
  }
  if (cudaEventRecord(p->events[p->used], p->stream) != cudaSuccess) {
    (void)cudaGetLastError();
    p->overflow = true;
    return;
  }
  p->scopes[p->used] = g_scope;
  p->names[p->used++] = what;
  if (p->queued_ms < 0 && std::string_view(what) == "cudaMemcpyAsync(D2H)")
    p->queued_ms = p->last_mark_ms;
  p->last_mark_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - p->begin)
          .count();
}

void profile_scope(const char* label) { g_scope = label; }

absl::Status profile_begin(Stream s, double hold_ms, int64_t max_marks) {
  if (g_profile != nullptr) return absl::FailedPreconditionError("profile_begin: a profile runs");
  if (hold_ms <= 0 || max_marks < 2)
    return bad(absl::StrCat("profile_begin: hold_ms = ", hold_ms, ", max_marks = ", max_marks));
  auto* p = new ProfileState;
  p->stream = as_stream(s);
  p->hold_ms = hold_ms;
  p->events.resize(max_marks);
  p->names.assign(max_marks, nullptr);
  p->scopes.assign(max_marks, nullptr);
  for (auto& e : p->events) {
    if (cudaError_t err = cudaEventCreate(&e); err != cudaSuccess) {
      e = nullptr;
      p->events.erase(std::remove(p->events.begin(), p->events.end(), nullptr), p->events.end());
      destroy_profile(p);
      return cuda_status("profile_begin: cudaEventCreate", err);
    }
  }
  if (cudaError_t err = detail::launch_hold(static_cast<uint64_t>(hold_ms * 1e6), p->stream);
      err != cudaSuccess) {
    destroy_profile(p);
    return cuda_status("profile_begin: hold kernel", err);
  }
  if (cudaError_t err = cudaEventRecord(p->events[0], p->stream); err != cudaSuccess) {
    destroy_profile(p);
    return cuda_status("profile_begin: cudaEventRecord", err);
  }
  p->names[0] = "(hold)";
  p->used = 1;
  p->begin = std::chrono::steady_clock::now();
  g_profile = p;
  return absl::OkStatus();
}

absl::StatusOr<LaunchProfile> profile_end() {
  ProfileState* p = g_profile;
  if (p == nullptr) return absl::FailedPreconditionError("profile_end: no profile runs");
  g_profile = nullptr;
  // The host's queueing time: up to its first wait for the device (a device-to-host copy), else
  // up to its last mark.
  const double queued_ms = p->queued_ms >= 0 ? p->queued_ms : p->last_mark_ms;
  LaunchProfile out;
  out.marks = p->used - 1;
  out.host_queue_ms = queued_ms;
  out.host_bound = p->overflow || queued_ms > 0.9 * p->hold_ms;
  if (cudaError_t e = cudaStreamSynchronize(p->stream); e != cudaSuccess) {
    destroy_profile(p);
    return cuda_status("profile_end: cudaStreamSynchronize", e);
  }
  std::map<std::string, LaunchTime> by;
  for (int64_t i = 1; i < p->used; ++i) {
    float ms = 0;
    if (cudaError_t e = cudaEventElapsedTime(&ms, p->events[i - 1], p->events[i]);
        e != cudaSuccess) {
      destroy_profile(p);
      return cuda_status("profile_end: cudaEventElapsedTime", e);
    }
    const std::string name =
        p->scopes[i] ? absl::StrCat(p->scopes[i], "/", p->names[i]) : std::string(p->names[i]);
    LaunchTime& r = by[name];
    r.name = name;
    ++r.calls;
    r.ms += ms;
    out.total_ms += ms;
  }
  destroy_profile(p);
  for (auto& [name, r] : by) out.rows.push_back(r);
  std::sort(out.rows.begin(), out.rows.end(),
            [](const LaunchTime& a, const LaunchTime& b) { return a.ms > b.ms; });
  return out;
}

// ---- matvec / matmul -----------------------------------------------------------------------------
bool cuda_supports(GgmlType t) { return detail::type_supported(t); }
bool matvec_uses_q8(GgmlType t) { return detail::type_uses_q8(t); }

size_t act_q8_bytes(int64_t cols, int64_t n_tok) {
  const size_t q = round_up(static_cast<size_t>(cols * n_tok), 256);
  const size_t ds = round_up(static_cast<size_t>(cols / 32 * n_tok) * 8, 256);
  return q + ds;
}

absl::StatusOr<DeviceAct> act_q8_layout(const char* op, const float* x, int64_t ldx,
                                        int64_t n_tok, int64_t cols, void* ws, size_t ws_bytes) {
  if (cols <= 0 || cols % 32 != 0)
    return bad(absl::StrCat(op, ": cols = ", cols, ", must be a positive multiple of 32"));
  if (n_tok < 1 || ldx < cols)
    return bad(absl::StrCat(op, ": n_tok = ", n_tok, ", ldx = ", ldx, ", cols = ", cols));
  const size_t need = act_q8_bytes(cols, n_tok);
  if (ws == nullptr || ws_bytes < need || !aligned(ws, 256))
    return bad(absl::StrCat(op, ": workspace of ", ws_bytes, " bytes; need ", need,
                            ", 256-byte aligned"));
  int8_t* q = static_cast<int8_t*>(ws);
  float* ds = reinterpret_cast<float*>(static_cast<uint8_t*>(ws) +
                                       round_up(static_cast<size_t>(cols * n_tok), 256));
  return DeviceAct{x, ldx, q, ds, cols, n_tok};
}

absl::Status quantize_act(const float* x, int64_t ldx, int64_t n_tok, int64_t cols, void* ws,
                          size_t ws_bytes, DeviceAct* out, Stream s) {
  absl::StatusOr<DeviceAct> a = act_q8_layout("quantize_act", x, ldx, n_tok, cols, ws, ws_bytes);
  if (!a.ok()) return a.status();
  const cudaError_t e = detail::launch_quantize_act(x, ldx, static_cast<int>(n_tok), cols,
                                                    const_cast<int8_t*>(a->q),
                                                    const_cast<float*>(a->ds), as_stream(s));
  if (e != cudaSuccess) return cuda_status("quantize_act", e);
  *out = *a;
  return absl::OkStatus();
}

absl::Status matvec(const WeightView& w, const DeviceAct& a, float* y, int64_t ldy, Stream s) {
  const int64_t min_mult = detail::type_uses_q8(w.type) ? 32 : 8;
  if (absl::Status st = check_weight("matvec", w, min_mult); !st.ok()) return st;
  if (absl::Status st = check_matvec_alignment("matvec", w); !st.ok()) return st;
  if (absl::Status st = check_act("matvec", w, a, kMaxMatvecTokens); !st.ok()) return st;
  if (a.n_tok > 1 && ldy < w.rows)
    return bad(absl::StrCat("matvec: ldy = ", ldy, " < rows = ", w.rows));
  detail::MvParams p = mv_params(w, a);
  p.y = y;
  p.ldy = ldy;
  return cuda_status("matvec", detail::launch_matvec(p, as_stream(s)));
}

absl::Status matvec_multi(const MatvecOut* outs, size_t n, const DeviceAct& a, Stream s) {
  for (size_t i = 0; i < n; ++i) {
    const WeightView& w = *outs[i].w;
    const int64_t min_mult = detail::type_uses_q8(w.type) ? 32 : 8;
    if (absl::Status st = check_weight("matvec", w, min_mult); !st.ok()) return st;
    if (absl::Status st = check_matvec_alignment("matvec", w); !st.ok()) return st;
    if (absl::Status st = check_act("matvec", w, a, kMaxMatvecTokens); !st.ok()) return st;
    if (a.n_tok > 1 && outs[i].ldy < w.rows)
      return bad(absl::StrCat("matvec: ldy = ", outs[i].ldy, " < rows = ", w.rows));
  }
  for (size_t i = 0; i < n;) {
    detail::MvParams p = mv_params(*outs[i].w, a);
    p.y = outs[i].y;
    p.ldy = outs[i].ldy;
    size_t j = i + 1;
    for (; j < n && j - i <= detail::kMvMaxMore && outs[j].w->type == p.type; ++j) {
      detail::MvMat& m = p.more[p.n_more++];
      m.w = static_cast<const uint8_t*>(outs[j].w->data);
      m.row_stride = outs[j].w->row_stride;
      m.rows = outs[j].w->rows;
      m.y = outs[j].y;
      m.ldy = outs[j].ldy;
    }
    if (absl::Status st = cuda_status("matvec", detail::launch_matvec(p, as_stream(s))); !st.ok())
      return st;
    i = j;
  }
  return absl::OkStatus();
}

absl::Status matmul_tc(const WeightView& w, const float* x, int64_t ldx, int64_t n_tok, float* y,
                       int64_t ldy, Stream s) {
  if (absl::Status st = check_weight("matmul_tc", w, 32); !st.ok()) return st;
  if (n_tok < 1 || ldx < w.cols || ldy < w.rows)
    return bad(absl::StrCat("matmul_tc: n_tok = ", n_tok, ", ldx = ", ldx, " (cols ", w.cols,
                            "), ldy = ", ldy, " (rows ", w.rows, ")"));
  if ((w.type == GgmlType::F32 && (w.row_stride % 4 != 0 || !aligned(w.data, 4))) ||
      ((w.type == GgmlType::F16 || w.type == GgmlType::BF16) &&
       (w.row_stride % 2 != 0 || !aligned(w.data, 2))))
    return bad(absl::StrCat("matmul_tc: misaligned ", type_name(w.type), " rows"));
  return cuda_status("matmul_tc",
                     detail::launch_matmul_tc(w.type, static_cast<const uint8_t*>(w.data),
                                              w.row_stride, w.cols, w.rows, x, ldx, n_tok, y, ldy,
                                              as_stream(s)));
}

size_t matmul_workspace_bytes(GgmlType t, int64_t cols, int64_t n_tok) {
  if (n_tok > kMaxMatvecTokens || !detail::type_uses_q8(t)) return 0;
  return act_q8_bytes(cols, n_tok);
}

absl::Status matmul(const WeightView& w, const float* x, int64_t ldx, int64_t n_tok, float* y,
                    int64_t ldy, void* ws, size_t ws_bytes, Stream s) {
  if (n_tok > kMaxMatvecTokens) return matmul_tc(w, x, ldx, n_tok, y, ldy, s);
  DeviceAct a{x, ldx, nullptr, nullptr, w.cols, n_tok};
  if (detail::type_uses_q8(w.type)) {
    if (absl::Status st = quantize_act(x, ldx, n_tok, w.cols, ws, ws_bytes, &a, s); !st.ok())
      return st;
  }
  return matvec(w, a, y, ldy, s);
}

// ---- MoE --------------------------------------------------------------------------------------
namespace {
absl::Status check_moe(const char* op, const WeightView& experts, int64_t rows_per_expert,
                       const int32_t* d_ids, int64_t n_sel) {
  if (rows_per_expert <= 0 || experts.rows % rows_per_expert != 0)
    return bad(absl::StrCat(op, ": rows_per_expert = ", rows_per_expert, " does not divide rows = ",
                            experts.rows));
  if (d_ids == nullptr || n_sel < 1 || n_sel > 64)
    return bad(absl::StrCat(op, ": n_sel = ", n_sel, " (1..64) with ids ",
                            d_ids ? "set" : "null"));
  return absl::OkStatus();
}
}  // namespace

absl::Status moe_matvec_up(const WeightView& experts, int64_t rows_per_expert,
                           const int32_t* d_ids, int64_t n_sel, const DeviceAct& a, float* y,
                           Stream s) {
  const int64_t min_mult = detail::type_uses_q8(experts.type) ? 32 : 8;
  if (absl::Status st = check_weight("moe_matvec_up", experts, min_mult); !st.ok()) return st;
  if (absl::Status st = check_matvec_alignment("moe_matvec_up", experts); !st.ok()) return st;
  if (absl::Status st = check_act("moe_matvec_up", experts, a, 1); !st.ok()) return st;
  if (absl::Status st = check_moe("moe_matvec_up", experts, rows_per_expert, d_ids, n_sel);
      !st.ok())
    return st;
  detail::MvParams p = mv_params(experts, a);
  p.rows = rows_per_expert;
  p.expert_stride = experts.row_stride * static_cast<size_t>(rows_per_expert);
  p.mode = detail::MvMode::kMoeUp;
  p.ids = d_ids;
  p.n_sel = static_cast<int>(n_sel);
  p.y = y;
  p.ldy = rows_per_expert;
  return cuda_status("moe_matvec_up", detail::launch_matvec(p, as_stream(s)));
}

absl::Status moe_matvec_down(const WeightView& experts, int64_t rows_per_expert,
                             const int32_t* d_ids, const float* d_weights, int64_t n_sel,
                             const DeviceAct& a, float* y, bool accumulate, Stream s) {
  const int64_t min_mult = detail::type_uses_q8(experts.type) ? 32 : 8;
  if (absl::Status st = check_weight("moe_matvec_down", experts, min_mult); !st.ok()) return st;
  if (absl::Status st = check_matvec_alignment("moe_matvec_down", experts); !st.ok()) return st;
  if (absl::Status st = check_act("moe_matvec_down", experts, a, 64); !st.ok()) return st;
  if (absl::Status st = check_moe("moe_matvec_down", experts, rows_per_expert, d_ids, n_sel);
      !st.ok())
    return st;
  if (a.n_tok != n_sel)
    return bad(absl::StrCat("moe_matvec_down: ", a.n_tok, " activation rows for ", n_sel,
                            " selected experts"));
  if (d_weights == nullptr) return bad("moe_matvec_down: weights are null");
  detail::MvParams p = mv_params(experts, a);
  p.rows = rows_per_expert;
  p.expert_stride = experts.row_stride * static_cast<size_t>(rows_per_expert);
  p.mode = detail::MvMode::kMoeDown;
  p.ids = d_ids;
  p.sel_w = d_weights;
  p.n_sel = static_cast<int>(n_sel);
  p.accumulate = accumulate;
  p.y = y;
  p.ldy = rows_per_expert;
  return cuda_status("moe_matvec_down", detail::launch_matvec(p, as_stream(s)));
}

int64_t moe_decode_ldh(int64_t I, int64_t Is) { return (std::max(I, Is) + 31) / 32 * 32; }

size_t moe_decode_workspace_bytes(int64_t n_slots, int64_t ldh) {
  return act_q8_bytes(ldh, n_slots);
}

bool moe_decode_shared_fits(const WeightView& gate, const WeightView& down,
                            const WeightView& sh_gate, const WeightView& sh_up,
                            const WeightView& sh_down) {
  return sh_gate.type == gate.type && sh_up.type == gate.type && sh_down.type == down.type;
}

absl::Status moe_decode(const MoeDecodeWeights& w, int64_t E, int64_t I, int64_t Is,
                        const DeviceAct& x, const int32_t* d_ids, const float* d_w, int64_t k,
                        const float* d_sh_logit, float* h, void* ws, size_t ws_bytes, float* out,
                        bool accumulate, Stream s) {
  if (w.gate == nullptr || w.down == nullptr) return bad("moe_decode: gate or down is null");
  const WeightView& g = *w.gate;
  const WeightView& d = *w.down;
  const bool shared = w.sh_gate != nullptr;
  const int64_t H = g.cols, n_tok = x.n_tok;
  if (E < 1 || I < 1 || k < 1 || k > E || g.rows != E * (w.up ? I : 2 * I) ||
      (w.up && (w.up->rows != E * I || w.up->cols != H || w.up->type != g.type ||
                w.up->row_stride != g.row_stride)) ||
      d.rows != E * H || d.cols != I)
    return bad(absl::StrCat("moe_decode: shapes do not match: E ", E, ", k ", k, ", I ", I,
                            ", H ", H, ", gate ", g.rows, "x", g.cols, ", down ", d.rows, "x",
                            d.cols));
  static_assert(kMoeDecodeMaxSlots == moed::kMaxSlots);
  if (k + (shared ? 1 : 0) > moed::kMaxSlots)
    return bad(absl::StrCat("moe_decode: ", k + (shared ? 1 : 0), " slots per token, at most ",
                            moed::kMaxSlots));
  if (shared) {
    if (w.sh_up == nullptr || w.sh_down == nullptr || d_sh_logit == nullptr)
      return bad("moe_decode: a shared expert needs sh_up, sh_down and the gate logits");
    if (!moe_decode_shared_fits(g, d, *w.sh_gate, *w.sh_up, *w.sh_down))
      return bad(absl::StrCat("moe_decode: shared expert types (", type_name(w.sh_gate->type), ", ",
                              type_name(w.sh_up->type), ", ", type_name(w.sh_down->type),
                              ") differ from the routed ones (", type_name(g.type), ", ",
                              type_name(d.type), ")"));
    if (Is < 1 || w.sh_gate->rows != Is || w.sh_up->rows != Is || w.sh_gate->cols != H ||
        w.sh_up->cols != H || w.sh_up->row_stride != w.sh_gate->row_stride ||
        w.sh_gate->row_stride != g.row_stride || w.sh_down->rows != H || w.sh_down->cols != Is)
      return bad(absl::StrCat("moe_decode: shared expert shapes do not match: Is ", Is,
                              ", gate ", w.sh_gate->rows, "x", w.sh_gate->cols, ", down ",
                              w.sh_down->rows, "x", w.sh_down->cols));
  }
  const int64_t gate_mult = detail::type_uses_q8(g.type) ? 32 : 8;
  const int64_t down_mult = detail::type_uses_q8(d.type) ? 32 : 8;
  for (const WeightView* v : {w.gate, w.up}) {
    if (v == nullptr) continue;
    if (absl::Status st = check_weight("moe_decode", *v, gate_mult); !st.ok()) return st;
    if (absl::Status st = check_matvec_alignment("moe_decode", *v); !st.ok()) return st;
  }
  if (absl::Status st = check_weight("moe_decode", d, down_mult); !st.ok()) return st;
  if (absl::Status st = check_matvec_alignment("moe_decode", d); !st.ok()) return st;
  if (shared) {
    for (const WeightView* v : {w.sh_gate, w.sh_up}) {
      if (absl::Status st = check_weight("moe_decode", *v, gate_mult); !st.ok()) return st;
      if (absl::Status st = check_matvec_alignment("moe_decode", *v); !st.ok()) return st;
    }
    if (absl::Status st = check_weight("moe_decode", *w.sh_down, down_mult); !st.ok()) return st;
    if (absl::Status st = check_matvec_alignment("moe_decode", *w.sh_down); !st.ok()) return st;
  }
  if (absl::Status st = check_act("moe_decode", g, x, 64); !st.ok()) return st;
  if (x.x != nullptr && x.ldx != H)
    return bad(absl::StrCat("moe_decode: activations need ldx == cols (", x.ldx, " vs ", H, ")"));
  if (d_ids == nullptr || d_w == nullptr || h == nullptr || out == nullptr)
    return bad("moe_decode: ids, weights, h or out is null");
  const int64_t ldh = moe_decode_ldh(I, shared ? Is : 0);
  const int64_t n_slots = n_tok * (k + (shared ? 1 : 0));
  const bool hq8 = detail::type_uses_q8(d.type);
  if (!aligned(h, 16)) return bad("moe_decode: h must be 16-byte aligned");
  DeviceAct hq{h, ldh, nullptr, nullptr, ldh, n_slots};
  if (hq8) {
    absl::StatusOr<DeviceAct> l = act_q8_layout("moe_decode", h, ldh, n_slots, ldh, ws, ws_bytes);
    if (!l.ok()) return l.status();
    hq = *l;
  }
  moed::UpArgs ua;
  ua.gate = static_cast<const uint8_t*>(g.data);
  ua.up = w.up ? static_cast<const uint8_t*>(w.up->data) : ua.gate + I * g.row_stride;
  ua.expert_stride = g.row_stride * static_cast<size_t>(w.up ? I : 2 * I);
  ua.I = I;
  if (shared) {
    ua.sh_gate = static_cast<const uint8_t*>(w.sh_gate->data);
    ua.sh_up = static_cast<const uint8_t*>(w.sh_up->data);
    ua.Is = Is;
  }
  ua.row_stride = g.row_stride;
  ua.H = H;
  ua.ids = d_ids;
  ua.k = k;
  ua.n_tok = n_tok;
  ua.x = x.x;
  ua.xq = x.q;
  ua.xds = x.ds;
  ua.h = h;
  ua.hq = const_cast<int8_t*>(hq.q);
  ua.hds = const_cast<float*>(hq.ds);
  ua.ldh = ldh;
  if (absl::Status st = cuda_status("moe_decode (up)", moed::launch_moe_up(g.type, ua, as_stream(s)));
      !st.ok())
    return st;
  moed::DownArgs da;
  da.down = static_cast<const uint8_t*>(d.data);
  da.expert_stride = d.row_stride * static_cast<size_t>(H);
  da.row_stride = d.row_stride;
  da.I = I;
  if (shared) {
    da.sh_down = static_cast<const uint8_t*>(w.sh_down->data);
    da.sh_row_stride = w.sh_down->row_stride;
    da.Is = Is;
    da.sh_logit = d_sh_logit;
  }
  da.H = H;
  da.ids = d_ids;
  da.w = d_w;
  da.k = k;
  da.n_tok = n_tok;
  da.h = h;
  da.hq = ua.hq;
  da.hds = ua.hds;
  da.ldh = ldh;
  da.out = out;
  da.accumulate = accumulate;
  return cuda_status("moe_decode (down)", moed::launch_moe_down(d.type, da, as_stream(s)));
}

// ---- dense FFN (decode) -----------------------------------------------------------------------
bool ffn_up_fits(const WeightView& gate, const WeightView& up) {
  return gate.type == up.type && gate.rows == up.rows && gate.cols == up.cols &&
         gate.row_stride == up.row_stride && gate.rows % 32 == 0 &&
         detail::type_supported(gate.type);
}

size_t ffn_up_workspace_bytes(int64_t I, int64_t n_tok) { return act_q8_bytes(I, n_tok); }

absl::Status ffn_up(const WeightView& gate, const WeightView& up, const DeviceAct& x, float* h,
                    int64_t ldh, bool q8_out, void* ws, size_t ws_bytes, DeviceAct* h_act,
                    Stream s) {
  if (!ffn_up_fits(gate, up))
    return bad(absl::StrCat("ffn_up: gate (", type_name(gate.type), " ", gate.rows, "x",
                            gate.cols, ", stride ", gate.row_stride, ") and up (",
                            type_name(up.type), " ", up.rows, "x", up.cols, ", stride ",
                            up.row_stride, ") must share type, shape and stride, with rows a "
                            "multiple of 32"));
  const int64_t min_mult = detail::type_uses_q8(gate.type) ? 32 : 8;
  for (const WeightView* v : {&gate, &up}) {
    if (absl::Status st = check_weight("ffn_up", *v, min_mult); !st.ok()) return st;
    if (absl::Status st = check_matvec_alignment("ffn_up", *v); !st.ok()) return st;
  }
  static_assert(kMaxMatvecTokens == ffnup::kMaxTokens);
  if (absl::Status st = check_act("ffn_up", gate, x, kMaxMatvecTokens); !st.ok()) return st;
  const int64_t I = gate.rows, n_tok = x.n_tok;
  if (h == nullptr || h_act == nullptr) return bad("ffn_up: h or h_act is null");
  if (!aligned(h, 16) || ldh < I || ldh % 4 != 0)
    return bad(absl::StrCat("ffn_up: h must be 16-byte aligned with ldh >= I = ", I,
                            " and ldh % 4 == 0 (ldh ", ldh, ")"));
  DeviceAct out{h, ldh, nullptr, nullptr, I, n_tok};
  if (q8_out) {
    absl::StatusOr<DeviceAct> l = act_q8_layout("ffn_up", h, ldh, n_tok, I, ws, ws_bytes);
    if (!l.ok()) return l.status();
    out = *l;
  }
  ffnup::Args a;
  a.gate = static_cast<const uint8_t*>(gate.data);
  a.up = static_cast<const uint8_t*>(up.data);
  a.row_stride = gate.row_stride;
  a.I = I;
  a.H = gate.cols;
  a.n_tok = static_cast<int>(n_tok);
  a.x = x.x;
  a.ldx = x.ldx;
  a.xq = x.q;
  a.xds = x.ds;
  a.h = h;
  a.ldh = ldh;
  a.hq = const_cast<int8_t*>(out.q);
  a.hds = const_cast<float*>(out.ds);
  if (absl::Status st = cuda_status("ffn_up", ffnup::launch_ffn_up(gate.type, a, as_stream(s)));
      !st.ok())
    return st;
  *h_act = out;
  return absl::OkStatus();
}

// ---- ops ----------------------------------------------------------------------------------------
absl::Status rms_norm(const float* x, const float* w, int64_t rows, int64_t n, float eps, float* y,
                      Stream s) {
  if (rows < 0 || n <= 0) return bad(absl::StrCat("rms_norm: rows = ", rows, ", n = ", n));
  if (rows == 0) return absl::OkStatus();
  return cuda_status("rms_norm",
                     detail::launch_rms_norm(x, w, nullptr, rows, n, eps, y, as_stream(s)));
}

absl::Status rms_norm_gated(const float* x, const float* w, const float* z, int64_t rows,
                            int64_t n, float eps, float* y, Stream s) {
  if (rows < 0 || n <= 0 || z == nullptr)
    return bad(absl::StrCat("rms_norm_gated: rows = ", rows, ", n = ", n, z ? "" : ", z null"));
  if (rows == 0) return absl::OkStatus();
  return cuda_status("rms_norm_gated",
                     detail::launch_rms_norm(x, w, z, rows, n, eps, y, as_stream(s)));
}

absl::Status l2_norm(float* x, int64_t rows, int64_t n, float eps, Stream s) {
  if (rows < 0 || n <= 0) return bad(absl::StrCat("l2_norm: rows = ", rows, ", n = ", n));
  if (rows == 0) return absl::OkStatus();
  return cuda_status("l2_norm", detail::launch_l2_norm(x, rows, n, eps, as_stream(s)));
}

absl::Status rope_neox(float* x, int64_t n_tok, int64_t n_heads, int64_t head_dim, int64_t n_rot,
                       const int64_t* d_pos, float theta, Stream s) {
  if (n_rot % 2 != 0 || n_rot > head_dim || n_rot < 0 || n_tok < 0 || n_heads < 0)
    return bad(absl::StrCat("rope_neox: n_rot = ", n_rot, " (even, <= head_dim ", head_dim,
                            "), n_tok = ", n_tok, ", n_heads = ", n_heads));
  return cuda_status("rope_neox", detail::launch_rope_neox(x, n_tok, n_heads, head_dim, n_rot,
                                                           d_pos, theta, as_stream(s)));
}

size_t attention_workspace_bytes(int64_t T, int64_t nh, int64_t hd, int64_t n_past) {
  return attention_seqs_workspace_bytes(T, nh, hd, n_past + T);
}

size_t attention_seqs_workspace_bytes(int64_t T, int64_t nh, int64_t hd, int64_t max_ctx) {
  const int64_t chunk = detail::attn_chunk(T, nh, max_ctx);
  const int64_t n_chunks = (max_ctx + chunk - 1) / chunk;
  return static_cast<size_t>(T * nh * n_chunks * (hd + 2)) * sizeof(float);
}

namespace {
// k_tok / v_tok (or null): each token's own cache (a decode batch); k.data / v.data unused then.
absl::Status attention_impl(const float* q, int64_t T, int64_t nh, int64_t hd, const KvView& k,
                            const KvView& v, int64_t n_past, const int64_t* d_pos,
                            int64_t n_ctx, float scale, float* out, void* ws, size_t ws_bytes,
                            Stream s, bool gqa, const void* const* k_tok = nullptr,
                            const void* const* v_tok = nullptr) {
  const bool seqs = k_tok != nullptr;
  if (hd != 32 && hd != 64 && hd != 128 && hd != 256)
    return bad(absl::StrCat("attention: head_dim ", hd, " (CUDA supports 32, 64, 128, 256)"));
  if (T < 1 || n_past < 0 || nh < 1 || n_ctx < (seqs ? 1 : T))
    return bad(absl::StrCat("attention: T = ", T, ", n_past = ", n_past, ", nh = ", nh,
                            ", context = ", n_ctx));
  for (const KvView* kv : {&k, &v}) {
    if (kv->type != GgmlType::F32 && kv->type != GgmlType::F16 && kv->type != GgmlType::Q8_0)
      return bad(absl::StrCat("attention: KV type ", type_name(kv->type),
                              " (CUDA supports F32, F16, Q8_0)"));
    if (kv->head_dim != hd || kv->n_kv_heads < 1 || nh % kv->n_kv_heads != 0)
      return bad(absl::StrCat("attention: KV head_dim ", kv->head_dim, " (q ", hd, "), ",
                              kv->n_kv_heads, " KV heads for ", nh, " query heads"));
    const size_t al = kv->type == GgmlType::F16 ? 16 : kv->type == GgmlType::F32 ? 4 : 2;
    if ((!seqs && !aligned(kv->data, al)) || kv->pos_stride_bytes % al != 0)
      return bad(absl::StrCat("attention: ", type_name(kv->type), " KV cache needs ", al,
                              "-byte alignment (pos_stride ", kv->pos_stride_bytes, ")"));
  }
  if (k.n_kv_heads != v.n_kv_heads)
    return bad(absl::StrCat("attention: K has ", k.n_kv_heads, " heads, V ", v.n_kv_heads));
  if (seqs && (v_tok == nullptr || d_pos == nullptr))
    return bad("attention_seqs_at: V caches or positions are null");
  const size_t need = attention_seqs_workspace_bytes(T, nh, hd, n_ctx);
  if (ws == nullptr || ws_bytes < need || !aligned(ws, 16))
    return bad(absl::StrCat("attention: workspace of ", ws_bytes, " bytes; need ", need));
  const int64_t chunk = detail::attn_chunk(T, nh, n_ctx);
  const int64_t n_chunks = (n_ctx + chunk - 1) / chunk;
  const detail::AttnKv kk{k.type, static_cast<const uint8_t*>(k.data), k.n_kv_heads,
                          k.pos_stride_bytes,
                          reinterpret_cast<const uint8_t* const*>(k_tok)};
  const detail::AttnKv vv{v.type, static_cast<const uint8_t*>(v.data), v.n_kv_heads,
                          v.pos_stride_bytes,
                          reinterpret_cast<const uint8_t* const*>(v_tok)};
  return cuda_status("attention",
                     detail::launch_attention(q, T, nh, hd, kk, vv, n_past, d_pos, scale, out,
                                              static_cast<float*>(ws), n_chunks, chunk, gqa,
                                              as_stream(s)));
}
}  // namespace

absl::Status attention(const float* q, int64_t T, int64_t nh, int64_t hd, const KvView& k,
                       const KvView& v, int64_t n_past, float scale, float* out, void* ws,
                       size_t ws_bytes, Stream s, bool gqa) {
  return attention_impl(q, T, nh, hd, k, v, n_past, nullptr, n_past + T, scale, out, ws,
                        ws_bytes, s, gqa);
}

absl::Status attention_at(const float* q, int64_t T, int64_t nh, int64_t hd, const KvView& k,
                          const KvView& v, const int64_t* d_pos, int64_t max_ctx, float scale,
                          float* out, void* ws, size_t ws_bytes, Stream s, bool gqa) {
  if (d_pos == nullptr) return bad("attention_at: positions are null");
  return attention_impl(q, T, nh, hd, k, v, 0, d_pos, max_ctx, scale, out, ws, ws_bytes, s, gqa);
}

absl::Status attention_seqs_at(const float* q, int64_t T, int64_t nh, int64_t hd,
                               const KvView& k, const KvView& v, const void* const* d_k,
                               const void* const* d_v, const int64_t* d_pos, int64_t max_ctx,
                               float scale, float* out, void* ws, size_t ws_bytes, Stream s,
                               bool gqa) {
  if (d_k == nullptr || d_v == nullptr || d_pos == nullptr)
    return bad("attention_seqs_at: the caches' arrays or the positions are null");
  return attention_impl(q, T, nh, hd, k, v, 0, d_pos, max_ctx, scale, out, ws, ws_bytes, s, gqa,
                        d_k, d_v);
}

absl::Status conv1d_silu(const float* u, int64_t T, int64_t C, const float* w, int64_t K,
                         float* state, float* out, Stream s) {
  if (K < 1 || K > 8 || C < 1 || T < 0)
    return bad(absl::StrCat("conv1d_silu: K = ", K, " (1..8), C = ", C, ", T = ", T));
  return cuda_status("conv1d_silu",
                     detail::launch_conv1d_silu(u, T, C, w, K, state, out, as_stream(s)));
}

absl::Status delta_rule(const DeltaNetDims& d, const float* q, const float* k, const float* v,
                        const float* g, const float* beta, float* S, float* out, Stream s) {
  if ((d.dk != 32 && d.dk != 64 && d.dk != 128) || d.dv < 32 || d.dv % 32 != 0 || d.Hk < 1 ||
      d.Hv < 1 || d.Hv % d.Hk != 0 || d.T < 0)
    return bad(absl::StrCat("delta_rule: dk = ", d.dk, " (32, 64 or 128), dv = ", d.dv,
                            " (multiple of 32), Hk = ", d.Hk, ", Hv = ", d.Hv, ", T = ", d.T));
  if (d.T == 0) return absl::OkStatus();
  return cuda_status("delta_rule",
                     detail::launch_delta_rule(d, q, k, v, g, beta, S, out, as_stream(s)));
}

absl::Status swiglu(const float* gate, const float* up, int64_t n, float* out, Stream s) {
  if (n < 0) return bad(absl::StrCat("swiglu: n = ", n));
  return cuda_status("swiglu", detail::launch_swiglu(gate, up, n, out, as_stream(s)));
}

absl::Status router_fused(const WeightView& router, const WeightView* sh_gate, const float* x,
                          int64_t n_tok, int64_t k, float* logits, float* sh_logit, int32_t* ids,
                          float* weights, int* counter, Stream s) {
  const int64_t E = router.rows, H = router.cols;
  if (router.type != GgmlType::F32 || (sh_gate && (sh_gate->type != GgmlType::F32 ||
                                                   sh_gate->rows != 1 || sh_gate->cols != H)))
    return bad(absl::StrCat("router_fused: F32 weights only (router ", type_name(router.type),
                            sh_gate ? absl::StrCat(", shared gate ", type_name(sh_gate->type),
                                                   " ", sh_gate->rows, "x", sh_gate->cols)
                                    : std::string(),
                            ")"));
  if (E < 1 || E > 1024 || k < 1 || k > 32 || k > E || H < 8 || H % 8 != 0 || n_tok < 0 ||
      n_tok > kMaxMatvecTokens)
    return bad(absl::StrCat("router_fused: E = ", E, " (<= 1024), k = ", k, " (<= 32), H = ", H,
                            " (a multiple of 8), n_tok = ", n_tok, " (<= ", kMaxMatvecTokens,
                            ")"));
  if (router.data == nullptr || x == nullptr || logits == nullptr || ids == nullptr ||
      weights == nullptr || counter == nullptr || (sh_gate && sh_logit == nullptr) ||
      !aligned(router.data, 16) || router.row_stride % 16 != 0 || !aligned(x, 16) ||
      (sh_gate && !aligned(sh_gate->data, 16)))
    return bad("router_fused: null or misaligned buffers (16-byte rows and x)");
  detail::RouterArgs a;
  a.w = static_cast<const uint8_t*>(router.data);
  a.row_stride = router.row_stride;
  a.sh = sh_gate ? static_cast<const uint8_t*>(sh_gate->data) : nullptr;
  a.E = E;
  a.H = H;
  a.k = k;
  a.n_tok = n_tok;
  a.x = x;
  a.logits = logits;
  a.sh_logit = sh_logit;
  a.ids = ids;
  a.weights = weights;
  a.counter = counter;
  return cuda_status("router_fused", detail::launch_router_fused(a, as_stream(s)));
}

absl::Status router_topk(const float* logits, int64_t n_tok, int64_t E, int64_t k, int32_t* ids,
                         float* weights, Stream s) {
  if (E < 1 || E > 1024 || k < 1 || k > 32 || k > E || n_tok < 0)
    return bad(absl::StrCat("router_topk: E = ", E, " (1..1024), k = ", k, " (1..min(32, E)), "
                            "n_tok = ", n_tok));
  if (n_tok == 0) return absl::OkStatus();
  return cuda_status("router_topk", detail::launch_router_topk(logits, n_tok, E, k, ids, weights,
                                                               as_stream(s)));
}

absl::Status embedding_lookup(const WeightView& table, const int32_t* d_ids, int64_t n_tok,
                              float* out, Stream s) {
  if (absl::Status st = check_weight("embedding_lookup", table, 32); !st.ok()) return st;
  if (n_tok < 0) return bad(absl::StrCat("embedding_lookup: n_tok = ", n_tok));
  if (n_tok == 0) return absl::OkStatus();
  return cuda_status("embedding_lookup",
                     detail::launch_embedding(table.type, static_cast<const uint8_t*>(table.data),
                                              table.row_stride, table.cols, d_ids, n_tok,
                                              table.rows, out, as_stream(s)));
}

}  // namespace rs::cuda
