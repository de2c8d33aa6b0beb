// The distributed forward step (pipeline + expert parallelism) of Model; docs/distributed.md.
//
// Every rank runs this loop over the layers in the same order and so issues the same
// collectives in the same order:
//   - the owner of layer l (placement.layer_owner[l]) runs the mixer, the norms and the router;
//   - MoE layers: par::MoeDispatcher in per-slot mode sends each token's normed state only to
//     the ranks that hold one of its selected experts (placement.expert_owner[l]), each rank
//     computes its (token, slot) results, and the owner gets every slot back and sums the slots
//     in slot order (SumExpertSlots), exactly like a single worker, so the result does not
//     depend on the placement, bit for bit; the owner then adds the shared expert and the
//     residual;
//   - when layer l + 1 has another owner, SendHidden / RecvHidden hand the residual stream over.
// The last layer's owner computes the logits.
// On the cuda backend an owned layer's mixer, router and shared expert (or dense FFN) run on the
// GPU (where the sequences' states are), with the residual stream copied in and out per layer,
// and so do the routed experts the device holds (the plan's GPU experts of this rank,
// ModelOptions::cuda_experts); the host-RAM experts, the embedding and the LM head run on the
// host CPU from the mapped weights.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "worker/model.h"
#include "worker/model_internal.h"

namespace rs {

// Per-model state of ForwardDistributed: the dispatcher (its buffers are reused between layers
// and steps; rebuilt when the communicator changes) and the counters.
struct DistributedState {
  par::Communicator* comm = nullptr;
  std::unique_ptr<par::MoeDispatcher> dispatcher;
  Model::CommStats all, decode;
  std::vector<float> hidden, f, partial, ew, slots, ffn;
  std::vector<int32_t> ids;
  // RIGSERVE_COMM_STATS=N (N > 0): log this rank's counters to stderr every N steps.
  int64_t log_every = 0;
};

namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

void AddMoe(par::MoeStats* to, const par::MoeStats& s) {
  to->calls += s.calls;
  to->bytes_sent += s.bytes_sent;
  to->bytes_received += s.bytes_received;
  to->tokens_computed += s.tokens_computed;
  to->comm_seconds += s.comm_seconds;
  to->compute_seconds += s.compute_seconds;
}

void Add(Model::CommStats* to, const Model::CommStats& s) {
  to->steps += s.steps;
  to->tokens += s.tokens;
  AddMoe(&to->moe, s.moe);
  to->handoff_bytes_sent += s.handoff_bytes_sent;
  to->handoff_bytes_received += s.handoff_bytes_received;
  to->handoff_seconds += s.handoff_seconds;
}

void Log(int rank, int size, const char* what, const Model::CommStats& s) {
  const double tok = s.tokens ? static_cast<double>(s.tokens) : 1.0;
  std::fprintf(stderr,
               "comm-stats rank %d/%d %s: steps %llu tokens %llu moe_sent %llu moe_recv %llu "
               "handoff_sent %llu handoff_recv %llu bytes_per_token %.1f moe_comm_s %.4f "
               "handoff_s %.4f expert_compute_s %.4f rows_computed %llu\n",
               rank, size, what, static_cast<unsigned long long>(s.steps),
               static_cast<unsigned long long>(s.tokens),
               static_cast<unsigned long long>(s.moe.bytes_sent),
               static_cast<unsigned long long>(s.moe.bytes_received),
               static_cast<unsigned long long>(s.handoff_bytes_sent),
               static_cast<unsigned long long>(s.handoff_bytes_received),
               static_cast<double>(s.moe.bytes_sent + s.moe.bytes_received +
                                   s.handoff_bytes_sent + s.handoff_bytes_received) / tok,
               s.moe.comm_seconds, s.handoff_seconds, s.moe.compute_seconds,
               static_cast<unsigned long long>(s.moe.tokens_computed));
}

}  // namespace

Model::CommStats Model::comm_stats(bool decode_only) const {
  if (!dist_) return CommStats{};
  return decode_only ? dist_->decode : dist_->all;
}

// The device-rows path on the CPU (Model::UseHostRows): the "device" buffers are in the given
// RowMemory, the mixers, router, shared expert / FFN and experts run on the CPU with the host
// path's functions, and the combine keeps the host path's order (slots in slot order, then the
// shared expert added into that sum, then the residual), so the logits are the host path's.
class HostRowsBackend : public RowsBackend {
 public:
  HostRowsBackend(Model* m, par::RowMemory* mem, bool holds_even)
      : m_(m), mem_(mem), holds_even_(holds_even) {}
  bool HoldsExpert(int64_t, int32_t e) const override { return holds_even_ && e % 2 == 0; }
  par::RowMemory* Rows() override { return mem_; }
  absl::Status ReserveRows(int) override { return absl::OkStatus(); }
  float* DeviceHidden() override { return Buf(4); }
  const float* DeviceF() override { return Buf(5); }
  absl::Status MixerOnDevice(absl::Span<const StepItem> batch, int64_t l, int32_t* ids,
                             float* weights) override {
    float* h = Buf(4);
    float* f = Buf(5);
    if (!h || !f) return absl::ResourceExhaustedError("host rows: no scratch buffer");
    int64_t N = 0;
    for (const auto& it : batch) N += it.n_tok;
    const Model::Layer& L = m_->layers_[l];
    m_->Mixer(L, batch, h, f);
    if (m_->cfg_.moe && ids) m_->Route(L, f, N, ids, weights);
    return absl::OkStatus();
  }
  absl::Status ExpertRows(int64_t l, const float* x, int64_t n_tok, const int32_t* ids,
                          const float* weights, float* out) override {
    const int64_t k = m_->cfg_.n_expert_used, H = m_->cfg_.n_embd, S = n_tok * k;
    held_.assign(ids, ids + S);
    bool any = false;
    for (int32_t& e : held_) {
      if (e >= 0 && !HoldsExpert(l, e)) e = -1;
      any = any || e >= 0;
    }
    if (!any) return absl::OkStatus();
    slots_.assign(S * H, 0.0f);
    m_->RunLocalExpertSlots(l, x, n_tok, held_.data(), weights, slots_.data());
    int64_t p = 0;
    for (int64_t s = 0; s < S; ++s) {
      if (ids[s] < 0) continue;
      if (held_[s] >= 0) std::memcpy(out + p * H, slots_.data() + s * H, H * sizeof(float));
      ++p;
    }
    return absl::OkStatus();
  }
  absl::Status CombineOnDevice(int64_t l, const float* rows, const int32_t* slot_row,
                               int64_t n_tok, int64_t k) override {
    const int64_t H = m_->cfg_.n_embd;
    float* h = Buf(4);
    const float* f = Buf(5);
    partial_.assign(n_tok * H, 0.0f);
    const Model::Layer& L = m_->layers_[l];
    if (k > 0) {
      for (int64_t t = 0; t < n_tok; ++t) {
        float* o = partial_.data() + t * H;
        const float* r0 = rows + static_cast<int64_t>(slot_row[t * k]) * H;
        for (int64_t i = 0; i < H; ++i) o[i] = r0[i];
        for (int64_t j = 1; j < k; ++j) {
          const float* rj = rows + static_cast<int64_t>(slot_row[t * k + j]) * H;
          for (int64_t i = 0; i < H; ++i) o[i] += rj[i];
        }
      }
      m_->SharedExpertAdd(L, f, n_tok, partial_.data());
    } else {
      m_->FfnLayer(L, l, f, n_tok, partial_.data());
    }
    for (int64_t i = 0; i < n_tok * H; ++i) h[i] += partial_[i];
    return absl::OkStatus();
  }

 private:
  float* Buf(int slot) {
    auto p = mem_->Scratch(slot, static_cast<size_t>(512 * m_->cfg_.n_embd) * sizeof(float));
    return p.ok() ? static_cast<float*>(*p) : nullptr;
  }
  Model* m_;
  par::RowMemory* mem_;
  bool holds_even_;
  std::vector<int32_t> held_;
  std::vector<float> slots_, partial_;
};

void Model::UseHostRows(par::RowMemory* mem, bool holds_even_experts) {
  host_rows_ = std::make_shared<HostRowsBackend>(this, mem, holds_even_experts);
}

absl::Status Model::ReserveDeviceRows(int world) {
  if (auto st = EnsureCuda(); !st.ok()) return st;
  return cuda_ ? cuda_->ReserveRows(world) : absl::OkStatus();
}

par::RowMemory* Model::CudaRows() {
  if (!EnsureCuda().ok() || !cuda_) return nullptr;
  return cuda_->Rows();
}

absl::Status Model::ForwardDistributed(absl::Span<const StepItem> batch, par::Communicator* comm,
                                       const Placement& pl, std::vector<float>* logits,
                                       par::Communicator* data) {
  if (auto st = EnsureCuda(); !st.ok()) return st;
  const ModelConfig& c = cfg_;
  const int me = comm->rank();
  const int world = comm->size();
  if (static_cast<int64_t>(pl.layer_owner.size()) != c.n_layer)
    return absl::InvalidArgumentError(absl::StrFormat("placement covers %d layers, the model has %d",
                                                      pl.layer_owner.size(), c.n_layer));
  for (int64_t l = 0; l < c.n_layer; ++l)
    if (pl.layer_owner[l] < 0 || pl.layer_owner[l] >= world)
      return absl::InvalidArgumentError(absl::StrFormat(
          "placement: layer %d is owned by rank %d, outside the group of %d", l, pl.layer_owner[l], world));
  if (c.moe) {
    if (static_cast<int64_t>(pl.expert_owner.size()) != c.n_layer)
      return absl::InvalidArgumentError(absl::StrFormat(
          "placement has expert owners for %d layers, the model has %d", pl.expert_owner.size(), c.n_layer));
    for (int64_t l = 0; l < c.n_layer; ++l) {
      if (static_cast<int64_t>(pl.expert_owner[l].size()) != c.n_expert)
        return absl::InvalidArgumentError(absl::StrFormat(
            "placement: layer %d maps %d experts, the model has %d", l, pl.expert_owner[l].size(), c.n_expert));
      for (int64_t e = 0; e < c.n_expert; ++e)
        if (pl.expert_owner[l][e] < 0 || pl.expert_owner[l][e] >= world)
          return absl::InvalidArgumentError(absl::StrFormat(
              "placement: layer %d expert %d is on rank %d, outside the group of %d", l, e,
              pl.expert_owner[l][e], world));
    }
  }
  int64_t N = 0;
  bool decode = true;
  std::vector<int64_t> rows;
  if (auto st = CheckBatch(batch); !st.ok()) return st;
  for (const auto& it : batch) {
    if (it.all_logits)
      for (int64_t t = 0; t < it.n_tok; ++t) rows.push_back(N + t);
    else
      rows.push_back(N + it.n_tok - 1);
    N += it.n_tok;
    decode = decode && it.n_tok == 1;
  }
  if (!dist_) {
    dist_ = std::make_shared<DistributedState>();
    if (const char* e = std::getenv("RIGSERVE_COMM_STATS")) dist_->log_every = std::atoll(e);
  }
  DistributedState& d = *dist_;
  if (d.comm != comm || !d.dispatcher) {
    d.comm = comm;
    d.dispatcher = std::make_unique<par::MoeDispatcher>(comm);
  }
  d.dispatcher->reset_stats();
  CommStats step;
  step.steps = 1;
  step.tokens = static_cast<uint64_t>(N);

  if (data != nullptr) {
    absl::Status st = ForwardDistributedDevice(batch, comm, data, pl, rows, N, &step, logits);
    Add(&d.all, step);
    if (!st.ok()) return st;
    for (const auto& it : batch) it.seq->n_past += it.n_tok;
    if (decode) Add(&d.decode, step);
    if (d.log_every > 0 && d.all.steps % d.log_every == 0) {
      Log(me, world, "all", d.all);
      Log(me, world, "decode", d.decode);
    }
    return absl::OkStatus();
  }
  const int64_t H = c.n_embd, k = c.n_expert_used;
  std::vector<float>& hidden = d.hidden;
  hidden.assign(N * H, 0.0f);
  d.f.assign(N * H, 0.0f);
  float* f = d.f.data();
  if (pl.layer_owner[0] == me) Embed(batch, hidden.data());
  std::vector<int32_t> host_ids;
  const par::ExpertFn compute = [this, &host_ids, k](const par::ExpertWork& w) {
    // Ids of experts held elsewhere arrive as -1 and leave their slot zero.
    const int64_t n = static_cast<int64_t>(w.num_tokens);
    if (!cuda_) {
      RunLocalExpertSlots(w.layer, w.x, n, w.experts, w.weights, w.out);
      return absl::OkStatus();
    }
    // A GPU rank: the experts its device holds run there, the rest (host RAM) on the CPU.
    host_ids.assign(w.experts, w.experts + n * k);
    for (int32_t& e : host_ids)
      if (e >= 0 && cuda_->HoldsExpert(w.layer, e)) e = -1;
    RunLocalExpertSlots(w.layer, w.x, n, host_ids.data(), w.weights, w.out);
    return cuda_->ExpertSlots(w.layer, w.x, n, w.experts, w.weights, w.out);
  };
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const Layer& L = layers_[l];
    const int owner = pl.layer_owner[l];
    const bool mine = owner == me;
    if (mine) {
      d.ids.resize(N * k);
      d.ew.resize(N * k);
      d.slots.resize(N * k * H);
      d.partial.resize(N * H);
      if (cuda_) {
        // Where the sequence's KV cache and DeltaNet state live: the mixer, the router, the
        // shared expert (MoE) or the FFN (dense); only the routed experts are dispatched.
        d.ffn.resize(N * H);
        if (auto st = cuda_->Mixer(batch, l, hidden.data(), f, c.moe ? d.ids.data() : nullptr,
                                   c.moe ? d.ew.data() : nullptr, d.ffn.data());
            !st.ok()) {
          Add(&d.all, step);
          return absl::Status(st.code(), absl::StrCat("layer ", l, " on the device: ", st.message()));
        }
      } else {
        Mixer(L, batch, hidden.data(), f);
      }
    }
    if (c.moe) {
      if (mine && !cuda_) Route(L, f, N, d.ids.data(), d.ew.data());
      if (world == 1) {
        // A group of one: the same split as a rank's (GPU experts on the device, the rest here).
        par::ExpertWork w;
        w.layer = static_cast<int>(l);
        w.num_tokens = static_cast<size_t>(N);
        w.hidden = static_cast<size_t>(H);
        w.top_k = static_cast<int>(k);
        w.x = f;
        w.experts = d.ids.data();
        w.weights = d.ew.data();
        w.out = d.slots.data();
        w.per_slot = true;
        if (absl::Status st = compute(w); !st.ok()) {
          Add(&d.all, step);
          return absl::Status(st.code(), absl::StrCat("layer ", l, " experts: ", st.message()));
        }
      } else {
        par::MoeLayer ml;
        ml.layer = static_cast<int>(l);
        ml.owner = owner;
        ml.hidden = static_cast<size_t>(H);
        ml.top_k = static_cast<int>(k);
        ml.expert_rank = &pl.expert_owner[l];
        ml.per_slot = true;
        if (mine) {
          ml.num_tokens = static_cast<size_t>(N);
          ml.x = f;
          ml.experts = d.ids.data();
          ml.weights = d.ew.data();
          ml.out = nullptr;  // summed below, as the single worker does
          ml.slot_out = d.slots.data();
        }
        absl::Status st = d.dispatcher->Run(ml, compute);
        AddMoe(&step.moe, d.dispatcher->stats());
        d.dispatcher->reset_stats();
        if (!st.ok()) {
          Add(&d.all, step);
          return st;
        }
      }
      if (mine) {
        SumExpertSlots(d.slots.data(), N, k, H, d.partial.data(), n_threads_);
        if (cuda_) {
          for (int64_t i = 0; i < N * H; ++i) d.partial[i] += d.ffn[i];  // the shared expert
        } else {
          SharedExpertAdd(L, f, N, d.partial.data());
        }
        for (int64_t i = 0; i < N * H; ++i) hidden[i] += d.partial[i];
      }
    } else if (mine) {
      if (cuda_)
        d.partial = d.ffn;
      else
        FfnLayer(L, l, f, N, d.partial.data());
      for (int64_t i = 0; i < N * H; ++i) hidden[i] += d.partial[i];
    }
    // Pipeline hand-off of the residual stream to the next layer's owner.
    const int next = l + 1 < c.n_layer ? pl.layer_owner[l + 1] : owner;
    if (next != owner && (me == owner || me == next)) {
      const auto t0 = Clock::now();
      const size_t bytes = static_cast<size_t>(N * H) * sizeof(float);
      absl::Status st =
          me == owner
              ? par::SendHidden(*comm, next, hidden.data(), N, H, static_cast<uint32_t>(l))
              : par::RecvHidden(*comm, owner, hidden.data(), N, H, static_cast<uint32_t>(l));
      step.handoff_seconds += Seconds(t0, Clock::now());
      if (!st.ok()) {
        Add(&d.all, step);
        return absl::Status(st.code(),
                            absl::StrCat("layer ", l, " -> ", l + 1, " hand-off (rank ", me, ", peer rank ",
                                         me == owner ? next : owner, "): ", st.message()));
      }
      (me == owner ? step.handoff_bytes_sent : step.handoff_bytes_received) += bytes;
    }
  }
  for (const auto& it : batch) it.seq->n_past += it.n_tok;
  logits->clear();
  if (pl.layer_owner.back() == me) {
    logits->resize(rows.size() * c.n_vocab);
    Logits(hidden.data(), rows, logits->data());
  }
  Add(&d.all, step);
  if (decode) Add(&d.decode, step);
  if (d.log_every > 0 && d.all.steps % d.log_every == 0) {
    Log(me, world, "all", d.all);
    Log(me, world, "decode", d.decode);
  }
  return absl::OkStatus();
}

// The same loop with the rows on the GPU (see ForwardDistributed in model.h): the owner's mixer
// leaves the residual stream in the backend's DeviceHidden() and f in DeviceF(); the dispatcher
// (RunRows) gathers and moves rows in the backend's RowMemory over `data`; each rank's GPU
// experts write their slot rows on the device (its host-RAM experts run on its CPU, their rows
// uploaded); the owner adds the slots in slot order, the shared expert and the residual on the
// device (CombineOnDevice: the host path's float operations, in its order); hand-offs move
// DeviceHidden() over `data` with the header over `comm`. The embedding and the LM head stay on
// the host (one upload on the first stage, one download on the last).
absl::Status Model::ForwardDistributedDevice(absl::Span<const StepItem> batch,
                                             par::Communicator* comm, par::Communicator* data,
                                             const Placement& pl,
                                             const std::vector<int64_t>& rows, int64_t N,
                                             CommStats* step, std::vector<float>* logits) {
  const ModelConfig& c = cfg_;
  const int me = comm->rank();
  RowsBackend* backend = cuda_ ? static_cast<RowsBackend*>(cuda_.get()) : host_rows_.get();
  if (backend == nullptr)
    return absl::FailedPreconditionError(
        "a device data communicator needs the cuda backend (this worker runs on the cpu)");
  if (data->rank() != me || data->size() != comm->size())
    return absl::InvalidArgumentError(absl::StrFormat(
        "the data communicator is rank %d of %d, the control one rank %d of %d", data->rank(),
        data->size(), me, comm->size()));
  constexpr int64_t kMaxTokens = 512;  // the device workspace (model_cuda.cc kMaxStepTokens)
  if (N > kMaxTokens)
    return absl::FailedPreconditionError(absl::StrCat(
        "cuda: a distributed step of ", N, " tokens; the device workspace holds ", kMaxTokens,
        " (lower the daemon's step token budget)"));
  RowsBackend& cu = *backend;
  par::RowMemory& mem = *cu.Rows();
  DistributedState& d = *dist_;
  const int64_t H = c.n_embd, k = c.n_expert_used;
  float* dh = cu.DeviceHidden();
  std::vector<float>& hidden = d.hidden;
  hidden.assign(N * H, 0.0f);
  if (pl.layer_owner[0] == me) {
    Embed(batch, hidden.data());
    if (auto st = mem.Upload(dh, hidden.data(), N * H * 4); !st.ok()) return st;
  }
  std::vector<int32_t> host_ids;
  std::vector<float> hx, hslots;
  const par::RowFn compute = [&](const par::RowWork& w) -> absl::Status {
    const int64_t n = static_cast<int64_t>(w.num_tokens);
    // Experts of this rank kept in host RAM run on the CPU: their rows go down and back up.
    host_ids.assign(w.experts, w.experts + n * k);
    bool any_host = false;
    for (int32_t& e : host_ids) {
      if (e >= 0 && cu.HoldsExpert(w.layer, e)) e = -1;
      any_host = any_host || e >= 0;
    }
    if (any_host) {
      hx.resize(n * H);
      if (auto st = mem.Download(hx.data(), w.x, n * H * 4); !st.ok()) return st;
      hslots.assign(n * k * H, 0.0f);
      RunLocalExpertSlots(w.layer, hx.data(), n, host_ids.data(), w.weights, hslots.data());
      int64_t p = 0;
      for (int64_t s = 0; s < n * k; ++s) {
        if (w.experts[s] < 0) continue;
        if (host_ids[s] >= 0)
          if (auto st = mem.Upload(w.out + p * H, hslots.data() + s * H, H * 4); !st.ok())
            return st;
        ++p;
      }
    }
    return cu.ExpertRows(w.layer, w.x, n, w.experts, w.weights, w.out);
  };
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const int owner = pl.layer_owner[l];
    const bool mine = owner == me;
    if (mine) {
      d.ids.resize(N * k);
      d.ew.resize(N * k);
      if (auto st = cu.MixerOnDevice(batch, l, c.moe ? d.ids.data() : nullptr,
                                     c.moe ? d.ew.data() : nullptr);
          !st.ok())
        return absl::Status(st.code(), absl::StrCat("layer ", l, " on the device: ", st.message()));
    }
    if (c.moe) {
      par::RowLayer rl;
      rl.layer = static_cast<int>(l);
      rl.owner = owner;
      rl.hidden = static_cast<size_t>(H);
      rl.top_k = static_cast<int>(k);
      rl.expert_rank = &pl.expert_owner[l];
      par::RowResult res;
      if (mine) {
        rl.num_tokens = static_cast<size_t>(N);
        rl.x = cu.DeviceF();
        rl.experts = d.ids.data();
        rl.weights = d.ew.data();
      }
      absl::Status st = d.dispatcher->RunRows(rl, mem, *data, compute, mine ? &res : nullptr);
      AddMoe(&step->moe, d.dispatcher->stats());
      d.dispatcher->reset_stats();
      if (!st.ok()) return st;
      if (mine)
        if (auto s2 = cu.CombineOnDevice(l, res.rows, res.slot_row.data(), N, k); !s2.ok())
          return absl::Status(s2.code(), absl::StrCat("layer ", l, " combine: ", s2.message()));
    } else if (mine) {
      if (auto st = cu.CombineOnDevice(l, nullptr, nullptr, N, 0); !st.ok()) return st;
    }
    const int next = l + 1 < c.n_layer ? pl.layer_owner[l + 1] : owner;
    if (next != owner && (me == owner || me == next)) {
      const auto t0 = Clock::now();
      const size_t bytes = static_cast<size_t>(N * H) * sizeof(float);
      absl::Status st =
          me == owner
              ? par::SendHidden(*comm, *data, next, dh, N, H, static_cast<uint32_t>(l))
              : par::RecvHidden(*comm, *data, owner, dh, N, H, static_cast<uint32_t>(l));
      step->handoff_seconds += Seconds(t0, Clock::now());
      if (!st.ok())
        return absl::Status(st.code(),
                            absl::StrCat("layer ", l, " -> ", l + 1, " hand-off (rank ", me,
                                         ", peer rank ", me == owner ? next : owner, "): ",
                                         st.message()));
      (me == owner ? step->handoff_bytes_sent : step->handoff_bytes_received) += bytes;
    }
  }
  logits->clear();
  if (pl.layer_owner.back() == me) {
    if (auto st = mem.Download(hidden.data(), dh, N * H * 4); !st.ok()) return st;
    logits->resize(rows.size() * c.n_vocab);
    Logits(hidden.data(), rows, logits->data());
  }
  return absl::OkStatus();
}

}  // namespace rs
