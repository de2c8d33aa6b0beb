// Qwen3.5 forward pass on the CPU (reference and fast backends). Spec §3.
#include "worker/model.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "kernels/ops.h"
#include "worker/model_internal.h"

namespace rs {

absl::StatusOr<Backend> ParseBackend(const std::string& name) {
  if (name == "reference") return Backend::kReference;
  if (name == "cpu") return Backend::kCpu;
  if (name == "cuda") return Backend::kCuda;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown backend '", name, "' (reference, cpu or cuda)"));
}

const char* BackendName(Backend b) {
  switch (b) {
    case Backend::kReference: return "reference";
    case Backend::kCpu: return "cpu";
    case Backend::kCuda: return "cuda";
  }
  return "?";
}

SeqState::SeqState(const SeqState& o)
    : n_past(o.n_past), kv(o.kv), conv(o.conv), ssm(o.ssm),
      device(o.device ? o.device->clone() : nullptr) {}

SeqState& SeqState::operator=(const SeqState& o) {
  if (this != &o) {
    n_past = o.n_past;
    kv = o.kv;
    conv = o.conv;
    ssm = o.ssm;
    device = o.device ? o.device->clone() : nullptr;
  }
  return *this;
}

SeqState::Kv::Kv(const Kv& o) : heads(o.heads), head_row(o.head_row) {
  Reserve(o.used);
  used = o.used;
  for (int64_t h = 0; h < heads; ++h) {
    if (used == 0) break;
    std::memcpy(k_at(h, 0), o.k.get() + h * o.cap * head_row, used * head_row);
    std::memcpy(v_at(h, 0), o.v.get() + h * o.cap * head_row, used * head_row);
  }
}

SeqState::Kv& SeqState::Kv::operator=(const Kv& o) {
  if (this != &o) *this = Kv(o);
  return *this;
}

void SeqState::Kv::Reserve(int64_t n) {
  if (n <= cap) return;
  const int64_t new_cap = std::max<int64_t>(n, 2 * cap);
  const size_t bytes = static_cast<size_t>(heads) * new_cap * head_row;
  std::unique_ptr<uint8_t[]> nk(new uint8_t[bytes]), nv(new uint8_t[bytes]);  // uninitialised
  for (int64_t h = 0; h < heads && used > 0; ++h) {
    std::memcpy(nk.get() + h * new_cap * head_row, k_at(h, 0), used * head_row);
    std::memcpy(nv.get() + h * new_cap * head_row, v_at(h, 0), used * head_row);
  }
  k = std::move(nk);
  v = std::move(nv);
  cap = new_cap;
}

void SeqState::reset() {
  if (device) device->reset();
  n_past = 0;
  for (auto& k : kv) k.used = 0;
  for (auto& c : conv) std::fill(c.begin(), c.end(), 0.0f);
  for (auto& s : ssm) std::fill(s.begin(), s.end(), 0.0f);
}


namespace {

std::string Shape(const std::vector<int64_t>& ne) { return "{" + absl::StrJoin(ne, ", ") + "}"; }

// A batch of products: the fast path runs them in one parallel region with each activation
// row converted once (matmul_cpu_batch); the reference runs each token through matmul_ref.
void RunTasks(bool ref, const MatmulTask* tasks, int64_t n, int n_threads) {
  if (!ref) {
    matmul_cpu_batch(tasks, n, n_threads);
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    const MatmulTask& t = tasks[i];
    if (!t.x_rows) {
      matmul_ref(t.w, t.x, t.ldx, t.n_tok, t.y, t.ldy);
      continue;
    }
    for (int64_t j = 0; j < t.n_tok; ++j)
      matmul_ref(t.w, t.x + static_cast<int64_t>(t.x_rows[j]) * t.ldx, t.ldx, 1, t.y + j * t.ldy,
                 t.ldy);
  }
}

// Task of a dense product Y[n][w.rows] = X[n][w.cols] W^T.
MatmulTask Task(const WeightView& w, const float* x, int64_t n, float* y) {
  MatmulTask t;
  t.w = w;
  t.x = x;
  t.ldx = w.cols;
  t.x_n = n;
  t.n_tok = n;
  t.y = y;
  t.ldy = w.rows;
  return t;
}

}  // namespace

// out[t] = sum of token t's k slot rows, in slot order (the same bits whichever process computed
// each slot); tokens over the pool.
void SumExpertSlots(const float* slots, int64_t n_tok, int64_t k, int64_t H, float* out,
                    int n_threads) {
  cpu_parallel_for(n_tok * k * H >= 65536 ? n_threads : 1, n_tok, [&](int64_t t) {
    float* o = out + t * H;
    const float* s0 = slots + t * k * H;
    for (int64_t h = 0; h < H; ++h) o[h] = s0[h];
    for (int64_t i = 1; i < k; ++i) {
      const float* si = s0 + i * H;
      for (int64_t h = 0; h < H; ++h) o[h] += si[h];
    }
  });
}

// Routed experts computed on this process: tokens grouped by expert so that each selected
// expert's weights are read once per step. Each (token, slot) result is weighted into its own
// row of a [n_tok][k][H] buffer (zero where another process computes it), then summed in slot
// order.
class LocalExpertExecutor : public ExpertExecutor {
 public:
  explicit LocalExpertExecutor(Model* m) : m_(m) {}
  void Run(int64_t layer, const float* x, int64_t n_tok, const int32_t* ids, const float* weights,
           float* out) override {
    const int64_t H = m_->cfg_.n_embd, k = m_->cfg_.n_expert_used;
    float* slots = Model::Workspace::get(slots_, n_tok * k * H);
    RunSlots(layer, x, n_tok, ids, weights, slots);
    SumExpertSlots(slots, n_tok, k, H, out, m_->n_threads_);
  }

  // slots[t][i] = weights[t][i] * expert_{ids[t][i]}(x[t]) for the experts held here, else 0.
  // Two batches for all the selected experts: gate and up (each token row of x converted once
  // for every expert that reads it), then down; each one parallel region.
  void RunSlots(int64_t layer, const float* x, int64_t n_tok, const int32_t* ids,
                const float* weights, float* slots) {
    const auto& L = m_->layers_[layer];
    const auto& c = m_->cfg_;
    const int64_t H = c.n_embd, I = c.n_ff_exp, k = c.n_expert_used;
    const bool ref = m_->opts_.backend == Backend::kReference;
    // (t, slot) pairs grouped by expert: tok_[begin_[j] .. begin_[j + 1]) go to expert sel_[j].
    tok_.clear();
    sel_.clear();
    begin_.clear();
    for (int64_t e = 0; e < c.n_expert; ++e) {
      const size_t b = tok_.size();
      for (int64_t t = 0; t < n_tok; ++t)
        for (int64_t i = 0; i < k; ++i)
          if (ids[t * k + i] == e) tok_.push_back(t * k + i);
      if (tok_.size() == b) continue;
      sel_.push_back(e);
      begin_.push_back(static_cast<int64_t>(b));
    }
    const int64_t n_all = static_cast<int64_t>(tok_.size()), n_sel = static_cast<int64_t>(sel_.size());
    // Slots computed elsewhere stay zero (with every expert here, all are written below).
    if (n_all < n_tok * k) std::fill(slots, slots + n_tok * k * H, 0.0f);
    if (sel_.empty()) return;
    begin_.push_back(n_all);
    rows_.resize(n_all);
    for (int64_t j = 0; j < n_all; ++j) rows_[j] = static_cast<int32_t>(tok_[j] / k);
    float* g = Model::Workspace::get(g_, n_all * I);
    float* u = Model::Workspace::get(u_, n_all * I);
    float* d = Model::Workspace::get(d_, n_all * H);
    tasks_.clear();
    for (int64_t j = 0; j < n_sel; ++j) {
      const int64_t e = sel_[j], b = begin_[j], n = begin_[j + 1] - b;
      const WeightView wg = L.fused_gate_up ? L.gate_exps.slice_rows(e * 2 * I, I)
                                            : L.gate_exps.slice_rows(e * I, I);
      const WeightView wu = L.fused_gate_up ? L.gate_exps.slice_rows(e * 2 * I + I, I)
                                            : L.up_exps.slice_rows(e * I, I);
      for (int which = 0; which < 2; ++which) {
        MatmulTask t;
        t.w = which == 0 ? wg : wu;
        t.x = x;
        t.ldx = H;
        t.x_n = n_tok;
        t.x_rows = rows_.data() + b;
        t.n_tok = n;
        t.y = (which == 0 ? g : u) + b * I;
        t.ldy = I;
        tasks_.push_back(t);
      }
    }
    RunTasks(ref, tasks_.data(), static_cast<int64_t>(tasks_.size()), m_->n_threads_);
    if (ref)
      swiglu_ref(g, u, n_all * I, g);
    else
      swiglu_cpu(g, u, n_all * I, g, m_->n_threads_);
    tasks_.clear();
    for (int64_t j = 0; j < n_sel; ++j) {
      const int64_t e = sel_[j], b = begin_[j], n = begin_[j + 1] - b;
      tasks_.push_back(Task(L.down_exps.slice_rows(e * H, H), g + b * I, n, d + b * H));
    }
    RunTasks(ref, tasks_.data(), static_cast<int64_t>(tasks_.size()), m_->n_threads_);
    const int64_t* tok = tok_.data();
    cpu_parallel_for(n_all * H >= 65536 ? m_->n_threads_ : 1, n_all, [&](int64_t j) {
      float* o = slots + tok[j] * H;  // row (t, slot)
      const float w = weights[tok[j]];
      const float* dj = d + j * H;
      for (int64_t h = 0; h < H; ++h) o[h] = w * dj[h];
    });
  }

 private:
  Model* m_;
  std::vector<int64_t> tok_;  // t * k + slot, grouped by expert
  std::vector<int64_t> sel_, begin_;
  std::vector<int32_t> rows_;  // tok_ / k
  std::vector<MatmulTask> tasks_;
  std::vector<float> g_, u_, d_, slots_;
};

void Model::RunLocalExpertSlots(int64_t layer, const float* x, int64_t n_tok, const int32_t* ids,
                                const float* weights, float* slots) {
  static_cast<LocalExpertExecutor*>(local_experts_.get())->RunSlots(layer, x, n_tok, ids, weights, slots);
}

Model::~Model() = default;

absl::StatusOr<std::unique_ptr<Model>> Model::Load(std::shared_ptr<const gguf::File> file,
                                                   const ModelOptions& opts) {
  std::unique_ptr<Model> m(new Model());
  m->file_ = std::move(file);
  m->opts_ = opts;
  auto cfg = ReadModelConfig(*m->file_);
  if (!cfg.ok()) return cfg.status();
  m->cfg_ = std::move(*cfg);
  m->n_threads_ = opts.n_threads > 0 ? opts.n_threads
                                     : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  if (opts.n_expert_used > 0) {
    if (!m->cfg_.moe || opts.n_expert_used > m->cfg_.n_expert)
      return absl::InvalidArgumentError(absl::StrFormat(
          "n_expert_used %d is invalid for this model (%d experts)", opts.n_expert_used,
          m->cfg_.n_expert));
    m->cfg_.n_expert_used = opts.n_expert_used;
  }
  if (auto st = m->Bind(); !st.ok()) return st;
  if (const gguf::Value* types = m->file_->find("tokenizer.ggml.token_type"))
    for (size_t i = 0; i < types->array.size() && static_cast<int64_t>(i) < m->cfg_.n_vocab; ++i)
      if ((types->array[i].i ? types->array[i].i : static_cast<int64_t>(types->array[i].u)) == 5)
        m->unused_tokens_.push_back(static_cast<int32_t>(i));
  m->ws_ = std::make_unique<Workspace>();
  m->local_experts_ = std::make_unique<LocalExpertExecutor>(m.get());
  m->experts_ = m->local_experts_.get();
  if (opts.backend == Backend::kCuda && !opts.cuda_deferred)
    if (auto st = m->EnsureCuda(); !st.ok()) return st;
  return m;
}

absl::Status Model::EnsureCuda() {
  if (opts_.backend != Backend::kCuda || cuda_) return absl::OkStatus();
  auto cuda = CreateCudaBackend(*this);
  if (!cuda.ok()) return cuda.status();
  cuda_ = std::move(*cuda);
  return absl::OkStatus();
}

absl::Status Model::ShardCuda(const std::vector<char>& layers,
                              const std::vector<std::vector<int32_t>>& gpu_experts) {
  if (opts_.backend != Backend::kCuda) return absl::OkStatus();
  if (cuda_ && opts_.cuda_layers == layers && opts_.cuda_experts == gpu_experts)
    return absl::OkStatus();
  if (!gpu_experts.empty() && layers.empty())
    return absl::InvalidArgumentError("ShardCuda: experts on the device need a layer shard");
  cuda_.reset();  // frees the device copy first: the new one may not fit beside it
  opts_.cuda_layers = layers;
  opts_.cuda_experts = gpu_experts;
  return EnsureCuda();
}

std::vector<uint8_t> GatherExpertRows(const WeightView& w, int64_t rows_per_expert,
                                      const std::vector<int32_t>& experts) {
  const size_t per = static_cast<size_t>(rows_per_expert) * w.row_stride;
  std::vector<uint8_t> out(per * experts.size());
  for (size_t i = 0; i < experts.size(); ++i)
    std::memcpy(out.data() + i * per, w.row(static_cast<int64_t>(experts[i]) * rows_per_expert), per);
  return out;
}

absl::Status Model::Bind() {
  const gguf::File& f = *file_;
  const ModelConfig& c = cfg_;
  const int64_t H = c.n_embd;

  auto find = [&](const std::string& name) -> absl::StatusOr<const gguf::TensorInfo*> {
    const gguf::TensorInfo* t = f.find_tensor(name);
    if (!t) return absl::NotFoundError(absl::StrCat("tensor ", name, " is missing"));
    if (!is_compute_type(t->type))
      return absl::InvalidArgumentError(absl::StrCat("tensor ", name, " has type ",
                                                     type_name(t->type),
                                                     ", which rigserve does not support"));
    return t;
  };
  auto check_shape = [&](const gguf::TensorInfo* t, std::vector<int64_t> want) -> absl::Status {
    std::vector<int64_t> got = t->ne;
    while (got.size() > want.size() && got.back() == 1) got.pop_back();
    if (got != want)
      return absl::InvalidArgumentError(absl::StrCat("tensor ", t->name, ": expected shape ",
                                                     Shape(want), " from the metadata, found ",
                                                     Shape(t->ne)));
    return absl::OkStatus();
  };
  auto matrix = [&](const std::string& name, std::vector<int64_t> want,
                    WeightView* out) -> absl::Status {
    auto t = find(name);
    if (!t.ok()) return t.status();
    if (auto st = check_shape(*t, want); !st.ok()) return st;
    out->type = (*t)->type;
    out->data = f.tensor_data(**t);
    out->cols = want[0];
    out->rows = 1;
    for (size_t i = 1; i < want.size(); ++i) out->rows *= want[i];
    out->row_stride = row_bytes(out->type, out->cols);
    return absl::OkStatus();
  };
  // 1-D tensors are used as f32; other types are converted once at load.
  auto vec = [&](Layer* L, const std::string& name, int64_t n,
                 const float** out) -> absl::Status {
    auto t = find(name);
    if (!t.ok()) return t.status();
    if (auto st = check_shape(*t, {n}); !st.ok()) return st;
    if ((*t)->type == GgmlType::F32) {
      *out = reinterpret_cast<const float*>(f.tensor_data(**t));
    } else {
      L->owned.emplace_back(n);
      dequantize_row_ref((*t)->type, f.tensor_data(**t), L->owned.back().data(), n);
      *out = L->owned.back().data();
    }
    return absl::OkStatus();
  };
#define RS_TRY(expr)                      \
  do {                                    \
    if (auto st_ = (expr); !st_.ok()) return st_; \
  } while (0)

  // Globals. The LM head falls back to the token embedding (tied weights).
  {
    auto t = find("token_embd.weight");
    if (!t.ok()) return t.status();
    if ((*t)->ne.size() != 2 || (*t)->ne[0] != H)
      return absl::InvalidArgumentError(absl::StrCat("tensor token_embd.weight: expected shape {",
                                                     H, ", n_vocab}, found ", Shape((*t)->ne)));
    cfg_.n_vocab = (*t)->ne[1];
    RS_TRY(matrix("token_embd.weight", {H, cfg_.n_vocab}, &token_embd_));
  }
  if (f.find_tensor("output.weight"))
    RS_TRY(matrix("output.weight", {H, cfg_.n_vocab}, &output_));
  else
    output_ = token_embd_;
  layers_.resize(c.n_layer);
  RS_TRY(vec(&layers_[0], "output_norm.weight", H, &output_norm_));

  const int64_t hd = c.head_dim, nh = c.n_head, nkv = c.n_head_kv;
  for (int64_t i = 0; i < c.n_layer; ++i) {
    Layer& L = layers_[i];
    L.kind = c.layers[i];
    const std::string p = absl::StrCat("blk.", i, ".");
    RS_TRY(vec(&L, p + "attn_norm.weight", H, &L.attn_norm));
    RS_TRY(vec(&L, p + "post_attention_norm.weight", H, &L.post_norm));
    if (L.kind == LayerKind::kAttention) {
      attn_index_.push_back(i);
      RS_TRY(matrix(p + "attn_q.weight", {H, 2 * nh * hd}, &L.wq));
      RS_TRY(matrix(p + "attn_k.weight", {H, nkv * hd}, &L.wk));
      RS_TRY(matrix(p + "attn_v.weight", {H, nkv * hd}, &L.wv));
      RS_TRY(matrix(p + "attn_output.weight", {nh * hd, H}, &L.wo));
      RS_TRY(vec(&L, p + "attn_q_norm.weight", hd, &L.q_norm));
      RS_TRY(vec(&L, p + "attn_k_norm.weight", hd, &L.k_norm));
    } else {
      dn_index_.push_back(i);
      RS_TRY(matrix(p + "attn_qkv.weight", {H, c.conv_dim()}, &L.qkv));
      RS_TRY(matrix(p + "attn_gate.weight", {H, c.value_dim()}, &L.gate));
      RS_TRY(matrix(p + "ssm_beta.weight", {H, c.Hv}, &L.beta));
      RS_TRY(matrix(p + "ssm_alpha.weight", {H, c.Hv}, &L.alpha));
      RS_TRY(matrix(p + "ssm_out.weight", {c.value_dim(), H}, &L.ssm_out));
      {
        WeightView conv;
        RS_TRY(matrix(p + "ssm_conv1d.weight", {c.conv_kernel, c.conv_dim()}, &conv));
        if (conv.type == GgmlType::F32) {
          L.conv1d = static_cast<const float*>(conv.data);
        } else {
          L.owned.emplace_back(c.conv_kernel * c.conv_dim());
          for (int64_t r = 0; r < conv.rows; ++r)
            dequantize_row_ref(conv.type, conv.row(r), L.owned.back().data() + r * c.conv_kernel,
                               c.conv_kernel);
          L.conv1d = L.owned.back().data();
        }
      }
      RS_TRY(vec(&L, p + "ssm_dt.bias", c.Hv, &L.dt_bias));
      RS_TRY(vec(&L, p + "ssm_a", c.Hv, &L.ssm_a));
      RS_TRY(vec(&L, p + "ssm_norm.weight", c.dv, &L.ssm_norm));
    }
    if (!c.moe) {
      RS_TRY(matrix(p + "ffn_gate.weight", {H, c.n_ff}, &L.ffn_gate));
      RS_TRY(matrix(p + "ffn_up.weight", {H, c.n_ff}, &L.ffn_up));
      RS_TRY(matrix(p + "ffn_down.weight", {c.n_ff, H}, &L.ffn_down));
    } else {
      const int64_t E = c.n_expert, I = c.n_ff_exp, Is = c.n_ff_shexp;
      RS_TRY(matrix(p + "ffn_gate_inp.weight", {H, E}, &L.router));
      if (f.find_tensor(p + "ffn_gate_up_exps.weight")) {
        L.fused_gate_up = true;
        RS_TRY(matrix(p + "ffn_gate_up_exps.weight", {H, 2 * I, E}, &L.gate_exps));
      } else {
        RS_TRY(matrix(p + "ffn_gate_exps.weight", {H, I, E}, &L.gate_exps));
        RS_TRY(matrix(p + "ffn_up_exps.weight", {H, I, E}, &L.up_exps));
      }
      RS_TRY(matrix(p + "ffn_down_exps.weight", {I, H, E}, &L.down_exps));
      RS_TRY(matrix(p + "ffn_gate_inp_shexp.weight", {H}, &L.shexp_gate_inp));
      RS_TRY(matrix(p + "ffn_gate_shexp.weight", {H, Is}, &L.shexp_gate));
      RS_TRY(matrix(p + "ffn_up_shexp.weight", {H, Is}, &L.shexp_up));
      RS_TRY(matrix(p + "ffn_down_shexp.weight", {Is, H}, &L.shexp_down));
    }
  }
#undef RS_TRY
  if (opts_.kv_type) {
    kv_type_ = *opts_.kv_type;
    if (kv_type_ != GgmlType::F32 && kv_type_ != GgmlType::F16 && kv_type_ != GgmlType::Q8_0)
      return absl::InvalidArgumentError(absl::StrCat("KV cache type ", type_name(kv_type_),
                                                     " unsupported (f32, f16, q8_0)"));
    if (kv_type_ == GgmlType::Q8_0 && hd % 32 != 0)
      return absl::InvalidArgumentError(
          absl::StrFormat("q8_0 KV cache needs head_dim %% 32 == 0, head_dim is %d", hd));
  } else {
    // The reference backend evaluates the model exactly; F32 models are exact test models.
    kv_type_ = GgmlType::F16;
    if (opts_.backend == Backend::kReference ||
        (!attn_index_.empty() && layers_[attn_index_[0]].wk.type == GgmlType::F32))
      kv_type_ = GgmlType::F32;
  }
  return absl::OkStatus();
}

std::unique_ptr<SeqState> Model::NewSequence(int64_t reserve_ctx) const {
  auto s = std::make_unique<SeqState>();
  if (cuda_) {
    s->device = cuda_->NewState(reserve_ctx);
    return s;
  }
  const ModelConfig& c = cfg_;
  s->kv.resize(attn_index_.size());
  for (auto& kv : s->kv) {
    kv.heads = c.n_head_kv;
    kv.head_row = row_bytes(kv_type_, c.head_dim);
    kv.Reserve(std::max<int64_t>(reserve_ctx, 1));
  }
  s->conv.assign(dn_index_.size(), std::vector<float>((c.conv_kernel - 1) * c.conv_dim(), 0.0f));
  s->ssm.assign(dn_index_.size(), std::vector<float>(c.Hv * c.dk * c.dv, 0.0f));
  return s;
}

void Model::Matmul(const WeightView& w, const float* x, int64_t n_tok, float* y) {
  MatmulLd(w, x, w.cols, n_tok, y, w.rows);
}

void Model::MatmulLd(const WeightView& w, const float* x, int64_t ldx, int64_t n_tok, float* y,
                     int64_t ldy) {
  if (opts_.backend == Backend::kReference)
    matmul_ref(w, x, ldx, n_tok, y, ldy);
  else
    matmul_cpu(w, x, ldx, n_tok, y, ldy, n_threads_);
}

void Model::Embed(absl::Span<const StepItem> batch, float* hidden) const {
  const int64_t H = cfg_.n_embd;
  int64_t r = 0;
  for (const auto& it : batch)
    for (int64_t t = 0; t < it.n_tok; ++t, ++r)
      dequantize_row_ref(token_embd_.type, token_embd_.row(it.tokens[t]), hidden + r * H, H);
}

absl::Status Model::CheckBatch(absl::Span<const StepItem> batch) const {
  for (const auto& it : batch) {
    if (!it.seq || it.n_tok <= 0) return absl::InvalidArgumentError("empty step item");
    for (int64_t t = 0; t < it.n_tok; ++t)
      if (it.tokens[t] < 0 || it.tokens[t] >= cfg_.n_vocab)
        return absl::InvalidArgumentError(
            absl::StrFormat("token id %d out of range [0, %d)", it.tokens[t], cfg_.n_vocab));
    if (cuda_ && !it.seq->device)
      return absl::FailedPreconditionError("sequence state was not made by this cuda model");
  }
  return absl::OkStatus();
}

absl::Status Model::Forward(absl::Span<const StepItem> batch, std::vector<float>* logits) {
  if (auto st = EnsureCuda(); !st.ok()) return st;
  if (auto st = CheckBatch(batch); !st.ok()) return st;
  if (cuda_) return cuda_->Forward(batch, logits);
  // CPU sub-steps of at most kCpuStepTokens tokens: the step's workspace (expert slot rows,
  // gate/up rows, projections) grows with its tokens, so a long prompt in one step would hold it
  // for every token at once (a 16K-token prompt on 35b-a3b: ~1 GB of slot rows alone). A
  // sequence appears at most once per sub-step; its logits rows come from the sub-step that
  // holds its last token (or every sub-step, with all_logits).
  logits->clear();
  std::vector<StepItem> step;
  std::vector<char> last;  // per piece: holds its item's last token
  int64_t in_step = 0;
  auto flush = [&]() -> absl::Status {
    absl::Status st = step.empty() ? absl::OkStatus() : CpuStep(step, last, logits);
    step.clear();
    last.clear();
    in_step = 0;
    return st;
  };
  for (const StepItem& it : batch)
    for (int64_t t0 = 0; t0 < it.n_tok;) {
      if (in_step == kCpuStepTokens)
        if (absl::Status st = flush(); !st.ok()) return st;
      const int64_t n = std::min(it.n_tok - t0, kCpuStepTokens - in_step);
      const bool is_last = t0 + n == it.n_tok;
      step.push_back(StepItem{it.seq, it.tokens + t0, n, it.all_logits});
      last.push_back(is_last);
      in_step += n;
      t0 += n;
      if (!is_last)
        if (absl::Status st = flush(); !st.ok()) return st;
    }
  return flush();
}

absl::Status Model::CpuStep(absl::Span<const StepItem> batch, const std::vector<char>& last,
                            std::vector<float>* logits) {
  int64_t N = 0;
  std::vector<int64_t> rows;
  for (size_t i = 0; i < batch.size(); ++i) {
    const StepItem& it = batch[i];
    if (it.all_logits)
      for (int64_t t = 0; t < it.n_tok; ++t) rows.push_back(N + t);
    else if (last[i])
      rows.push_back(N + it.n_tok - 1);
    N += it.n_tok;
  }
  std::vector<float> hidden(N * cfg_.n_embd);
  Embed(batch, hidden.data());
  if (auto st = RunLayers(batch, 0, cfg_.n_layer, hidden.data()); !st.ok()) return st;
  for (const auto& it : batch) it.seq->n_past += it.n_tok;
  const size_t old = logits->size();
  logits->resize(old + rows.size() * cfg_.n_vocab);
  if (!rows.empty()) Logits(hidden.data(), rows, logits->data() + old);
  return absl::OkStatus();
}

absl::Status Model::ForwardGreedy(absl::Span<const StepItem> batch, std::vector<int32_t>* ids) {
  if (auto st = EnsureCuda(); !st.ok()) return st;
  if (cuda_) {
    if (auto st = CheckBatch(batch); !st.ok()) return st;
    return cuda_->ForwardGreedy(batch, ids);
  }
  std::vector<float> logits;
  if (auto st = Forward(batch, &logits); !st.ok()) return st;
  const int64_t V = cfg_.n_vocab, rows = static_cast<int64_t>(logits.size()) / V;
  MaskUnused(logits.data(), rows);
  ids->resize(rows);
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = logits.data() + r * V;
    ids->at(r) = static_cast<int32_t>(std::max_element(x, x + V) - x);
  }
  return absl::OkStatus();
}

absl::Status Model::ForwardSample(absl::Span<const StepItem> batch,
                                  absl::Span<const SampleRequest> reqs,
                                  std::vector<SampleResult>* out) {
  if (reqs.size() != batch.size())
    return absl::InvalidArgumentError(absl::StrCat("ForwardSample: ", reqs.size(),
                                                   " requests for ", batch.size(), " items"));
  bool logprobs = false;
  for (size_t i = 0; i < batch.size(); ++i) {
    if (batch[i].all_logits)
      return absl::InvalidArgumentError(
          absl::StrCat("ForwardSample: item ", i, " asks for all logits"));
    if (reqs[i].params) {
      const std::string err = validate_sampler_params(*reqs[i].params, cfg_.n_vocab);
      if (!err.empty()) return absl::InvalidArgumentError(err);
      logprobs = logprobs || reqs[i].params->top_logprobs >= 0;
    }
  }
  out->assign(batch.size(), SampleResult{});
  if (auto st = EnsureCuda(); !st.ok()) return st;
  if (cuda_ && !logprobs) {
    if (auto st = CheckBatch(batch); !st.ok()) return st;
    std::vector<int32_t> ids;
    if (auto st = cuda_->ForwardSample(batch, reqs, &ids); !st.ok()) return st;
    if (ids.size() != batch.size())
      return absl::InternalError(absl::StrCat("ForwardSample: ", ids.size(), " ids for ",
                                              batch.size(), " items"));
    for (size_t i = 0; i < batch.size(); ++i) (*out)[i].token = reqs[i].params ? ids[i] : -1;
    return absl::OkStatus();
  }
  if (auto st = Forward(batch, &sample_logits_); !st.ok()) return st;
  const int64_t V = cfg_.n_vocab;
  static const TokenCounts kNoHistory;
  for (size_t i = 0; i < batch.size(); ++i) {
    if (!reqs[i].params) {
      (*out)[i].token = -1;
      continue;
    }
    float* x = sample_logits_.data() + static_cast<int64_t>(i) * V;
    MaskUnused(x, 1);
    (*out)[i] = sample_cpu(x, V, *reqs[i].params, reqs[i].counts ? *reqs[i].counts : kNoHistory,
                           reqs[i].step, &sampler_scratch_);
  }
  return absl::OkStatus();
}

void Model::set_cuda_graphs(bool on) {
  if (cuda_) cuda_->SetGraphs(on);
}

void Model::set_cuda_fused_deltanet(bool on) {
  if (cuda_) cuda_->SetFusedDeltaNet(on);
}

void Model::set_cuda_grouped_moe_decode(bool on) {
  if (cuda_) cuda_->SetGroupedMoeDecode(on);
}

void Model::set_cuda_fused_moe_decode(bool on) {
  if (cuda_) cuda_->SetFusedMoeDecode(on);
}

void Model::set_cuda_fused_ffn_up(bool on) {
  if (cuda_) cuda_->SetFusedFfnUp(on);
}

void Model::set_cuda_gqa_attention(bool on) {
  if (cuda_) cuda_->SetGqaAttention(on);
}

void Model::set_cuda_programmatic_launch(bool on) {
  if (cuda_) cuda_->SetProgrammaticLaunch(on);
}

absl::StatusOr<Model::CudaProfile> Model::ProfileCuda(const std::function<absl::Status()>& step) {
  if (!cuda_) return absl::FailedPreconditionError("ProfileCuda: the model is not on a GPU");
  return cuda_->Profile(step);
}

void Model::Logits(const float* hidden, const std::vector<int64_t>& rows, float* logits) {
  const int64_t H = cfg_.n_embd, n = static_cast<int64_t>(rows.size());
  float* x = Workspace::get(ws_->tmp, n * H);
  for (int64_t i = 0; i < n; ++i) std::memcpy(x + i * H, hidden + rows[i] * H, H * 4);
  if (opts_.backend == Backend::kReference)
    rms_norm_ref(x, output_norm_, n, H, cfg_.eps, x);
  else
    rms_norm_cpu(x, output_norm_, n, H, cfg_.eps, x);
  Matmul(output_, x, n, logits);
}

absl::Status Model::RunLayers(absl::Span<const StepItem> batch, int64_t layer_begin,
                              int64_t layer_end, float* hidden) {
  if (cuda_)
    return absl::UnimplementedError(
        "the cuda backend runs whole-model steps only; pipeline stages use --backend cpu");
  if (layer_begin < 0 || layer_end > cfg_.n_layer || layer_begin > layer_end)
    return absl::InvalidArgumentError(absl::StrFormat("layer range [%d, %d) outside [0, %d)",
                                                      layer_begin, layer_end, cfg_.n_layer));
  int64_t N = 0;
  for (const auto& it : batch) N += it.n_tok;
  const int64_t H = cfg_.n_embd;
  const bool ref = opts_.backend == Backend::kReference;
  float* a = Workspace::get(ws_->a, N * H);
  float* m = Workspace::get(ws_->m, N * H);
  for (int64_t l = layer_begin; l < layer_end; ++l) {
    const Layer& L = layers_[l];
    (ref ? rms_norm_ref : rms_norm_cpu)(hidden, L.attn_norm, N, H, cfg_.eps, a);
    if (L.kind == LayerKind::kAttention)
      AttentionLayer(L, batch, a, m);
    else
      DeltaNetLayer(L, batch, a, m);
    for (int64_t i = 0; i < N * H; ++i) hidden[i] += m[i];
    (ref ? rms_norm_ref : rms_norm_cpu)(hidden, L.post_norm, N, H, cfg_.eps, a);
    FfnLayer(L, l, a, N, m);
    for (int64_t i = 0; i < N * H; ++i) hidden[i] += m[i];
  }
  return absl::OkStatus();
}

void Model::DeltaNetLayer(const Layer& L, absl::Span<const StepItem> batch, const float* a,
                          float* out) {
  const ModelConfig& c = cfg_;
  const bool ref = opts_.backend == Backend::kReference;
  int64_t N = 0;
  for (const auto& it : batch) N += it.n_tok;
  const int64_t CD = c.conv_dim(), KD = c.key_dim(), VD = c.value_dim();
  const int64_t Hk = c.Hk, Hv = c.Hv, dk = c.dk, dv = c.dv, K = c.conv_kernel;
  Workspace& w = *ws_;
  float* u = Workspace::get(w.u, N * CD);
  float* z = Workspace::get(w.z, N * VD);
  float* b = Workspace::get(w.b, N * Hv);
  float* al = Workspace::get(w.al, N * Hv);
  float* y = Workspace::get(w.y, N * VD);
  {
    const MatmulTask t[4] = {Task(L.qkv, a, N, u), Task(L.gate, a, N, z), Task(L.beta, a, N, b),
                             Task(L.alpha, a, N, al)};
    RunTasks(ref, t, 4, n_threads_);
  }
  const int64_t layer_idx = &L - layers_.data();
  const int64_t slot = std::find(dn_index_.begin(), dn_index_.end(), layer_idx) - dn_index_.begin();
  const float q_scale = 1.0f / std::sqrt(static_cast<float>(dk));
  int64_t r0 = 0;
  for (const auto& it : batch) {
    const int64_t T = it.n_tok;
    float* cv = Workspace::get(w.c, T * CD);
    float* conv_state = it.seq->conv[slot].data();
    if (ref)
      conv1d_silu_ref(u + r0 * CD, T, CD, L.conv1d, K, conv_state, cv);
    else
      conv1d_silu_cpu(u + r0 * CD, T, CD, L.conv1d, K, conv_state, cv, n_threads_);
    float* q = Workspace::get(w.q, T * KD);
    float* k = Workspace::get(w.k, T * KD);
    float* v = Workspace::get(w.v, T * VD);
    for (int64_t t = 0; t < T; ++t) {
      std::memcpy(q + t * KD, cv + t * CD, KD * 4);
      std::memcpy(k + t * KD, cv + t * CD + KD, KD * 4);
      std::memcpy(v + t * VD, cv + t * CD + 2 * KD, VD * 4);
    }
    l2_norm_ref(q, T * Hk, dk, 1e-6f);
    l2_norm_ref(k, T * Hk, dk, 1e-6f);
    for (int64_t i = 0; i < T * KD; ++i) q[i] *= q_scale;
    float* g = Workspace::get(w.g, T * Hv);
    float* beta = Workspace::get(w.beta, T * Hv);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < Hv; ++h) {
        const int64_t i = (r0 + t) * Hv + h;
        beta[t * Hv + h] = sigmoidf(b[i]);
        g[t * Hv + h] = L.ssm_a[h] * softplusf(al[i] + L.dt_bias[h]);
      }
    float* o = Workspace::get(w.o, T * VD);
    const DeltaNetDims dims{T, Hk, Hv, dk, dv};
    float* S = it.seq->ssm[slot].data();
    if (ref)
      delta_rule_recurrent_ref(dims, q, k, v, g, beta, S, o);
    else
      delta_rule_cpu(dims, q, k, v, g, beta, S, o, n_threads_);
    if (ref)
      rms_norm_gated_ref(o, L.ssm_norm, z + r0 * VD, T * Hv, dv, c.eps, y + r0 * VD);
    else
      rms_norm_gated_cpu(o, L.ssm_norm, z + r0 * VD, T * Hv, dv, c.eps, y + r0 * VD, n_threads_);
    r0 += T;
  }
  Matmul(L.ssm_out, y, N, out);
}

void Model::AttentionLayer(const Layer& L, absl::Span<const StepItem> batch, const float* a,
                           float* out) {
  const ModelConfig& c = cfg_;
  const bool ref = opts_.backend == Backend::kReference;
  int64_t N = 0;
  for (const auto& it : batch) N += it.n_tok;
  const int64_t nh = c.n_head, nkv = c.n_head_kv, hd = c.head_dim;
  Workspace& w = *ws_;
  float* qg = Workspace::get(w.qg, N * 2 * nh * hd);
  float* kk = Workspace::get(w.kk, N * nkv * hd);
  float* vv = Workspace::get(w.vv, N * nkv * hd);
  float* y = Workspace::get(w.y, N * nh * hd);
  {
    const MatmulTask t[3] = {Task(L.wq, a, N, qg), Task(L.wk, a, N, kk), Task(L.wv, a, N, vv)};
    RunTasks(ref, t, 3, n_threads_);
  }
  const int64_t layer_idx = &L - layers_.data();
  const int64_t slot = std::find(attn_index_.begin(), attn_index_.end(), layer_idx) - attn_index_.begin();
  int64_t r0 = 0;
  for (const auto& it : batch) {
    const int64_t T = it.n_tok, n_past = it.seq->n_past;
    float* q = Workspace::get(w.q, T * nh * hd);
    float* gate = Workspace::get(w.gate, T * nh * hd);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < nh; ++h) {  // per head [q_h | gate_h] (interleaved)
        const float* src = qg + ((r0 + t) * nh + h) * 2 * hd;
        std::memcpy(q + (t * nh + h) * hd, src, hd * 4);
        std::memcpy(gate + (t * nh + h) * hd, src + hd, hd * 4);
      }
    float* k = kk + r0 * nkv * hd;
    const float* v = vv + r0 * nkv * hd;
    (ref ? rms_norm_ref : rms_norm_cpu)(q, L.q_norm, T * nh, hd, c.eps, q);
    (ref ? rms_norm_ref : rms_norm_cpu)(k, L.k_norm, T * nkv, hd, c.eps, k);
    w.pos.resize(T);
    for (int64_t t = 0; t < T; ++t) w.pos[t] = n_past + t;
    rope_neox_ref(q, T, nh, hd, c.rope_dims, w.pos.data(), c.rope_theta);
    rope_neox_ref(k, T, nkv, hd, c.rope_dims, w.pos.data(), c.rope_theta);
    // Append to the KV cache (head-major: each head's positions contiguous).
    SeqState::Kv& cache = it.seq->kv[slot];
    cache.used = std::min(cache.used, n_past);
    cache.Reserve(n_past + T);
    const size_t hr = cache.head_row;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < nkv; ++h) {
        uint8_t* kd = cache.k_at(h, n_past + t);
        uint8_t* vd = cache.v_at(h, n_past + t);
        const float* ks = k + (t * nkv + h) * hd;
        const float* vs = v + (t * nkv + h) * hd;
        switch (kv_type_) {
          case GgmlType::F32:
            std::memcpy(kd, ks, hd * 4);
            std::memcpy(vd, vs, hd * 4);
            break;
          case GgmlType::F16:
            for (int64_t i = 0; i < hd; ++i) {
              const uint16_t hk = f32_to_fp16(ks[i]), hv = f32_to_fp16(vs[i]);
              std::memcpy(kd + 2 * i, &hk, 2);
              std::memcpy(vd + 2 * i, &hv, 2);
            }
            break;
          default:
            quantize_row_ref(kv_type_, ks, kd, hd);
            quantize_row_ref(kv_type_, vs, vd, hd);
        }
      }
    cache.used = n_past + T;
    const size_t head_stride = static_cast<size_t>(cache.cap) * hr;
    KvView kview{kv_type_, cache.k.get(), nkv, hd, hr, head_stride};
    KvView vview{kv_type_, cache.v.get(), nkv, hd, hr, head_stride};
    float* o = y + r0 * nh * hd;
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    if (ref)
      attention_ref(q, T, nh, hd, kview, vview, n_past, scale, o);
    else
      attention_cpu(q, T, nh, hd, kview, vview, n_past, scale, o, n_threads_);
    if (ref)
      sigmoid_mul_ref(gate, T * nh * hd, o);
    else
      sigmoid_mul_cpu(gate, T * nh * hd, o, n_threads_);
    r0 += T;
  }
  Matmul(L.wo, y, N, out);
}

void Model::FfnLayer(const Layer& L, int64_t layer, const float* f, int64_t n_tok, float* out) {
  const ModelConfig& c = cfg_;
  Workspace& w = *ws_;
  const int64_t H = c.n_embd;
  const bool ref = opts_.backend == Backend::kReference;
  if (!c.moe) {
    float* g = Workspace::get(w.ffn1, n_tok * c.n_ff);
    float* u = Workspace::get(w.ffn2, n_tok * c.n_ff);
    const MatmulTask t[2] = {Task(L.ffn_gate, f, n_tok, g), Task(L.ffn_up, f, n_tok, u)};
    RunTasks(ref, t, 2, n_threads_);
    if (ref)
      swiglu_ref(g, u, n_tok * c.n_ff, g);
    else
      swiglu_cpu(g, u, n_tok * c.n_ff, g, n_threads_);
    Matmul(L.ffn_down, g, n_tok, out);
    return;
  }
  // Router and the shared expert's gate, up and gate input in one batch over f; the routed
  // experts; then the shared expert's down projection, added.
  const int64_t E = c.n_expert, k = c.n_expert_used, Is = c.n_ff_shexp;
  float* logits = Workspace::get(w.router, n_tok * E);
  float* sg = Workspace::get(w.sh, n_tok);
  float* g = Workspace::get(w.ffn1, n_tok * Is);
  float* u = Workspace::get(w.ffn2, n_tok * Is);
  {
    const MatmulTask t[4] = {Task(L.router, f, n_tok, logits), Task(L.shexp_gate_inp, f, n_tok, sg),
                             Task(L.shexp_gate, f, n_tok, g), Task(L.shexp_up, f, n_tok, u)};
    RunTasks(ref, t, 4, n_threads_);
  }
  w.ids.resize(n_tok * k);
  float* ew = Workspace::get(w.ew, n_tok * k);
  for (int64_t t = 0; t < n_tok; ++t)
    router_topk_ref(logits + t * E, E, k, w.ids.data() + t * k, ew + t * k);
  experts_->Run(layer, f, n_tok, w.ids.data(), ew, out);
  if (opts_.backend == Backend::kReference)
    swiglu_ref(g, u, n_tok * Is, g);
  else
    swiglu_cpu(g, u, n_tok * Is, g, n_threads_);
  float* d = Workspace::get(w.ffn3, n_tok * H);
  Matmul(L.shexp_down, g, n_tok, d);
  for (int64_t t = 0; t < n_tok; ++t) {
    const float s = sigmoidf(sg[t]);
    for (int64_t h = 0; h < H; ++h) out[t * H + h] += s * d[t * H + h];
  }
}

void Model::Route(const Layer& L, const float* f, int64_t n_tok, int32_t* ids, float* weights) {
  const int64_t E = cfg_.n_expert, k = cfg_.n_expert_used;
  float* logits = Workspace::get(ws_->router, n_tok * E);
  Matmul(L.router, f, n_tok, logits);
  for (int64_t t = 0; t < n_tok; ++t) router_topk_ref(logits + t * E, E, k, ids + t * k, weights + t * k);
}

// out += sigmoid(w_gate . f) * shared_expert(f), per token.
void Model::SharedExpertAdd(const Layer& L, const float* f, int64_t n_tok, float* out) {
  Workspace& w = *ws_;
  const int64_t H = cfg_.n_embd, Is = cfg_.n_ff_shexp;
  float* sg = Workspace::get(w.sh, n_tok);
  float* g = Workspace::get(w.ffn1, n_tok * Is);
  float* u = Workspace::get(w.ffn2, n_tok * Is);
  float* d = Workspace::get(w.ffn3, n_tok * H);
  {
    const MatmulTask t[3] = {Task(L.shexp_gate_inp, f, n_tok, sg), Task(L.shexp_gate, f, n_tok, g),
                             Task(L.shexp_up, f, n_tok, u)};
    RunTasks(opts_.backend == Backend::kReference, t, 3, n_threads_);
  }
  if (opts_.backend == Backend::kReference)
    swiglu_ref(g, u, n_tok * Is, g);
  else
    swiglu_cpu(g, u, n_tok * Is, g, n_threads_);
  Matmul(L.shexp_down, g, n_tok, d);
  for (int64_t t = 0; t < n_tok; ++t) {
    const float s = sigmoidf(sg[t]);
    for (int64_t h = 0; h < H; ++h) out[t * H + h] += s * d[t * H + h];
  }
}

// hidden += mixer(attn_norm(hidden)); f = post_attention_norm(hidden).
void Model::Mixer(const Layer& L, absl::Span<const StepItem> batch, float* hidden, float* f) {
  int64_t N = 0;
  for (const auto& it : batch) N += it.n_tok;
  const int64_t H = cfg_.n_embd;
  const bool ref = opts_.backend == Backend::kReference;
  float* m = Workspace::get(ws_->m, N * H);
  (ref ? rms_norm_ref : rms_norm_cpu)(hidden, L.attn_norm, N, H, cfg_.eps, f);
  if (L.kind == LayerKind::kAttention)
    AttentionLayer(L, batch, f, m);
  else
    DeltaNetLayer(L, batch, f, m);
  for (int64_t i = 0; i < N * H; ++i) hidden[i] += m[i];
  (ref ? rms_norm_ref : rms_norm_cpu)(hidden, L.post_norm, N, H, cfg_.eps, f);
}

void Model::MaskUnused(float* logits, int64_t rows) const {
  for (int64_t r = 0; r < rows; ++r)
    for (int32_t id : unused_tokens_) logits[r * cfg_.n_vocab + id] = -INFINITY;
}

uint64_t Model::active_weight_bytes_per_token() const {
  const ModelConfig& c = cfg_;
  uint64_t bytes = token_embd_.row_stride + output_.row_stride * output_.rows;
  auto m = [](const WeightView& w) -> uint64_t { return w.data ? w.row_stride * w.rows : 0; };
  for (const auto& L : layers_) {
    bytes += m(L.wq) + m(L.wk) + m(L.wv) + m(L.wo) + m(L.qkv) + m(L.gate) + m(L.beta) +
             m(L.alpha) + m(L.ssm_out) + m(L.ffn_gate) + m(L.ffn_up) + m(L.ffn_down) +
             m(L.router) + m(L.shexp_gate_inp) + m(L.shexp_gate) + m(L.shexp_up) + m(L.shexp_down);
    if (c.moe) {
      const uint64_t per_expert = (m(L.gate_exps) + m(L.up_exps) + m(L.down_exps)) / c.n_expert;
      bytes += per_expert * c.n_expert_used;
    }
  }
  return bytes;
}

}  // namespace rs
