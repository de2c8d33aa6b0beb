// The distributed forward step (pipeline + expert parallelism) of Model; docs/distributed.md.
#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "worker/model.h"
#include "worker/model_internal.h"

namespace rs {

absl::Status Model::ForwardDistributed(absl::Span<const StepItem> batch, par::Communicator* comm,
                                       const Placement& pl, std::vector<float>* logits) {
  if (cuda_)
    return absl::UnimplementedError(
        "the cuda backend runs whole-model steps only; distributed workers use --backend cpu");
  const ModelConfig& c = cfg_;
  const int me = comm->rank();
  if (static_cast<int64_t>(pl.layer_owner.size()) != c.n_layer)
    return absl::InvalidArgumentError(absl::StrFormat("placement covers %d layers, the model has %d",
                                                      pl.layer_owner.size(), c.n_layer));
  int64_t N = 0;
  std::vector<int64_t> rows;
  for (const auto& it : batch) {
    if (!it.seq || it.n_tok <= 0) return absl::InvalidArgumentError("empty step item");
    for (int64_t t = 0; t < it.n_tok; ++t)
      if (it.tokens[t] < 0 || it.tokens[t] >= c.n_vocab)
        return absl::InvalidArgumentError(absl::StrFormat("token id %d out of range [0, %d)", it.tokens[t], c.n_vocab));
    if (it.all_logits)
      for (int64_t t = 0; t < it.n_tok; ++t) rows.push_back(N + t);
    else
      rows.push_back(N + it.n_tok - 1);
    N += it.n_tok;
  }
  const int64_t H = c.n_embd, k = c.n_expert_used;
  std::vector<float> hidden(N * H), f(N * H), partial, ew, slots;
  std::vector<int32_t> ids, local_ids;
  if (pl.layer_owner[0] == me) Embed(batch, hidden.data());
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const Layer& L = layers_[l];
    const int owner = pl.layer_owner[l];
    if (owner == me) Mixer(L, batch, hidden.data(), f.data());
    if (c.moe) {
      // Expert parallelism: the owner shares the normed states and the routing; each rank
      // computes its experts' weighted sums; the sums come back to the owner.
      ids.resize(N * k);
      ew.resize(N * k);
      if (owner == me) Route(L, f.data(), N, ids.data(), ew.data());
      if (comm->size() > 1) {
        if (auto st = comm->Broadcast(f.data(), N * H * 4, owner); !st.ok()) return st;
        if (auto st = comm->Broadcast(ids.data(), N * k * 4, owner); !st.ok()) return st;
        if (auto st = comm->Broadcast(ew.data(), N * k * 4, owner); !st.ok()) return st;
      }
      // Each (token, slot) is computed on exactly one rank (zeros elsewhere), so the sum over
      // ranks is exact and the owner adds the slots in the same order as a single worker.
      slots.resize(N * k * H);
      local_ids = ids;  // the experts held elsewhere: -1 (a zero slot here)
      for (auto& e : local_ids)
        if (pl.expert_owner[l][e] != me) e = -1;
      RunLocalExpertSlots(l, f.data(), N, local_ids.data(), ew.data(), slots.data());
      if (comm->size() > 1)
        if (auto st = comm->ReduceSum(slots.data(), N * k * H, owner); !st.ok()) return st;
      partial.resize(N * H);
      if (owner == me) SumExpertSlots(slots.data(), N, k, H, partial.data());
      if (owner == me) {
        SharedExpertAdd(L, f.data(), N, partial.data());
        for (int64_t i = 0; i < N * H; ++i) hidden[i] += partial[i];
      }
    } else if (owner == me) {
      partial.resize(N * H);
      FfnLayer(L, l, f.data(), N, partial.data());
      for (int64_t i = 0; i < N * H; ++i) hidden[i] += partial[i];
    }
    // Pipeline hand-off of the residual stream.
    const int next = l + 1 < c.n_layer ? pl.layer_owner[l + 1] : owner;
    if (next != owner) {
      if (me == owner)
        if (auto st = comm->Send(next, hidden.data(), N * H * 4, static_cast<uint32_t>(l)); !st.ok()) return st;
      if (me == next)
        if (auto st = comm->Recv(owner, hidden.data(), N * H * 4, static_cast<uint32_t>(l)); !st.ok()) return st;
    }
  }
  for (const auto& it : batch) it.seq->n_past += it.n_tok;
  logits->clear();
  if (pl.layer_owner.back() == me) {
    logits->resize(rows.size() * c.n_vocab);
    Logits(hidden.data(), rows, logits->data());
  }
  return absl::OkStatus();
}

}  // namespace rs
