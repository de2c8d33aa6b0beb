// MoE dispatch/combine and the stage hand-off; see moe_dispatch.h.
//
// Wire layout of the dispatch: the owner sends rank r one block of n_r rows laid out as
// [x: n_r x hidden floats][experts: n_r x top_k int32][weights: n_r x top_k floats], so the
// receiver hands pointers into its receive buffer straight to the callback. The combine sends
// back n_r x hidden floats in the same row order.
#include "parallel/moe_dispatch.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"

namespace rs::par {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Broadcast header: [status, layer, hidden, top_k, per_slot, counts[0..size-1]].
constexpr int kHeader = 5;
constexpr int64_t kRoutingOk = 0;
constexpr int64_t kRoutingRejected = 1;

// Checks the owner's routing; returns the first problem. `out_ok`: the output buffer the mode
// needs is there.
absl::Status CheckRouting(int layer, const std::vector<int>& map, size_t num_tokens, int top_k,
                          const void* x, const int32_t* experts, const float* weights, bool out_ok,
                          int size) {
  for (size_t e = 0; e < map.size(); ++e)
    if (map[e] < 0 || map[e] >= size)
      return absl::InvalidArgumentError(absl::StrCat("MoE layer ", layer, ": expert ", e,
                                                     " is mapped to rank ", map[e],
                                                     ", outside the group of ", size));
  if (num_tokens > 0 && (x == nullptr || experts == nullptr || weights == nullptr || !out_ok))
    return absl::InvalidArgumentError(absl::StrCat(
        "MoE layer ", layer, ": owner has ", num_tokens, " tokens but a null buffer"));
  for (size_t t = 0; t < num_tokens; ++t)
    for (int j = 0; j < top_k; ++j) {
      const int32_t e = experts[t * top_k + j];
      if (e < 0 || static_cast<size_t>(e) >= map.size())
        return absl::InvalidArgumentError(absl::StrCat("MoE layer ", layer, ": token ", t,
                                                       " selects expert ", e, ", the layer has ",
                                                       map.size(), " experts"));
    }
  return absl::OkStatus();
}

// "1,2" for rank 0 of 3: the peers of a collective.
std::string OtherRanks(int size, int me) {
  std::string s;
  for (int r = 0; r < size; ++r)
    if (r != me) absl::StrAppend(&s, s.empty() ? "" : ",", r);
  return s;
}

}  // namespace

absl::Status MoeDispatcher::Announce(int layer, int owner_rank, size_t H, int top_k,
                                     bool per_slot, const std::vector<int>* expert_rank,
                                     absl::Status result, const int32_t* experts,
                                     size_t num_tokens, const std::string& where) {
  Communicator& comm = *comm_;
  const int size = comm.size();
  const int me = comm.rank();
  const bool owner = me == owner_rank;
  const size_t K = static_cast<size_t>(top_k);
  counts_.assign(kHeader + size, 0);
  if (owner) {
    rows_of_rank_.resize(size);
    for (auto& v : rows_of_rank_) v.clear();
    if (result.ok()) {
      std::vector<char> seen(size);
      for (size_t t = 0; t < num_tokens; ++t) {
        std::fill(seen.begin(), seen.end(), 0);
        for (size_t j = 0; j < K; ++j) {
          const int r = (*expert_rank)[experts[t * K + j]];
          if (!seen[r]) {
            seen[r] = 1;
            rows_of_rank_[r].push_back(static_cast<uint32_t>(t));
          }
        }
      }
    }
    counts_[0] = result.ok() ? kRoutingOk : kRoutingRejected;
    counts_[1] = layer;
    counts_[2] = static_cast<int64_t>(H);
    counts_[3] = top_k;
    counts_[4] = per_slot ? 1 : 0;
    for (int r = 0; r < size; ++r) counts_[kHeader + r] = result.ok() ? rows_of_rank_[r].size() : 0;
  }
  auto t0 = Clock::now();
  if (absl::Status s = comm.Broadcast(counts_.data(), counts_.size() * sizeof(int64_t), owner_rank);
      !s.ok())
    return absl::Status(s.code(), absl::StrCat(where, ", token counts broadcast (peer ranks ",
                                               OtherRanks(size, me), "): ", s.message()));
  stats_.comm_seconds += Seconds(t0, Clock::now());
  if (owner && !result.ok()) return result;
  if (counts_[0] != kRoutingOk)
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": the owner rejected the routing of this layer"));
  if (counts_[1] != layer || counts_[2] != static_cast<int64_t>(H) || counts_[3] != top_k ||
      counts_[4] != (per_slot ? 1 : 0))
    return absl::FailedPreconditionError(absl::StrCat(
        where, ": ranks disagree on the layer: owner has layer ", counts_[1], " hidden ",
        counts_[2], " top_k ", counts_[3], " per_slot ", counts_[4], ", this rank layer ",
        layer, " hidden ", H, " top_k ", top_k, " per_slot ", per_slot));
  return absl::OkStatus();
}

absl::Status MoeDispatcher::Run(const MoeLayer& l, const ExpertFn& compute) {
  Communicator& comm = *comm_;
  const int size = comm.size();
  const int me = comm.rank();
  const bool owner = me == l.owner;
  const std::string where = absl::StrCat("MoE layer ", l.layer, " (owner rank ", l.owner,
                                         ", this rank ", me, ")");
  if (l.owner < 0 || l.owner >= size)
    return absl::InvalidArgumentError(absl::StrCat(where, ": owner outside the group of ", size));
  if (l.expert_rank == nullptr || l.hidden == 0 || l.top_k <= 0)
    return absl::InvalidArgumentError(absl::StrCat(where, ": needs an expert map, hidden > 0 "
                                                   "and top_k > 0 (hidden ", l.hidden,
                                                   ", top_k ", l.top_k, ")"));
  ++stats_.calls;
  const size_t H = l.hidden;
  const size_t K = static_cast<size_t>(l.top_k);
  const size_t row_floats = H + 2 * K;

  // 1. The owner routes and tells everybody how many rows each rank gets.
  absl::Status result = absl::OkStatus();
  if (owner)
    result = CheckRouting(l.layer, *l.expert_rank, l.num_tokens, l.top_k, l.x, l.experts,
                          l.weights, l.per_slot ? l.slot_out != nullptr : l.out != nullptr, size);
  if (absl::Status s = Announce(l.layer, l.owner, H, l.top_k, l.per_slot, l.expert_rank, result,
                                l.experts, l.num_tokens, where);
      !s.ok())
    return s;
  const bool per_slot = l.per_slot;
  const auto count = [&](int r) { return static_cast<size_t>(counts_[kHeader + r]); };

  // 2. Dispatch: the owner packs one block per rank.
  std::vector<size_t> so(size, 0), sb(size, 0), ro(size, 0), rb(size, 0);
  if (owner) {
    size_t total = 0;
    for (int r = 0; r < size; ++r) total += count(r);
    send_.resize(total * row_floats);
    size_t off = 0;
    for (int r = 0; r < size; ++r) {
      const size_t n = count(r);
      so[r] = off * sizeof(float);
      sb[r] = n * row_floats * sizeof(float);
      float* xs = send_.data() + off;
      int32_t* es = reinterpret_cast<int32_t*>(xs + n * H);
      float* ws = xs + n * H + n * K;
      for (size_t i = 0; i < n; ++i) {
        const size_t t = rows_of_rank_[r][i];
        std::memcpy(xs + i * H, l.x + t * H, H * sizeof(float));
        for (size_t j = 0; j < K; ++j) {
          const int32_t e = l.experts[t * K + j];
          const bool here = (*l.expert_rank)[e] == r;
          es[i * K + j] = here ? e : -1;
          ws[i * K + j] = here ? l.weights[t * K + j] : 0.0f;
        }
      }
      off += n * row_floats;
      if (r != me) stats_.bytes_sent += sb[r];
    }
  }
  const size_t mine = count(me);
  recv_.resize(mine * row_floats);
  rb[l.owner] = mine * row_floats * sizeof(float);
  if (!owner) stats_.bytes_received += rb[l.owner];
  auto t0 = Clock::now();
  if (absl::Status s = comm.AllToAllV(send_.data(), so, sb, recv_.data(), ro, rb); !s.ok())
    return absl::Status(s.code(), absl::StrCat(where, ", dispatch: ", s.message()));
  stats_.comm_seconds += Seconds(t0, Clock::now());

  // 3. This rank's experts.
  const size_t out_rows = per_slot ? mine * K : mine;
  work_out_.assign(out_rows * H, 0.0f);
  if (mine > 0) {
    ExpertWork w;
    w.layer = l.layer;
    w.num_tokens = mine;
    w.hidden = H;
    w.top_k = l.top_k;
    w.x = recv_.data();
    w.experts = reinterpret_cast<const int32_t*>(recv_.data() + mine * H);
    w.weights = recv_.data() + mine * H + mine * K;
    w.out = work_out_.data();
    w.per_slot = per_slot;
    for (size_t i = 0; i < mine * K; ++i) {
      const int32_t e = w.experts[i];
      if (e >= 0 && (static_cast<size_t>(e) >= l.expert_rank->size() ||
                     (*l.expert_rank)[e] != me))
        return absl::FailedPreconditionError(absl::StrCat(
            where, ": received expert ", e, " which this rank's expert map does not place here"));
    }
    t0 = Clock::now();
    absl::Status s = compute(w);
    stats_.compute_seconds += Seconds(t0, Clock::now());
    stats_.tokens_computed += mine;
    // A failed callback still takes part in the combine (with zeros), so that the peers do not
    // wait for a timeout; the error is returned afterwards.
    if (!s.ok()) {
      std::fill(work_out_.begin(), work_out_.end(), 0.0f);
      result = absl::Status(s.code(), absl::StrCat(where, ", local experts: ", s.message()));
    }
  }

  // 4. Combine: partial sums back to the owner, added per token.
  std::fill(so.begin(), so.end(), 0);
  std::fill(sb.begin(), sb.end(), 0);
  std::fill(rb.begin(), rb.end(), 0);
  // Per-slot mode sends only the local slots' rows, compacted in (row, slot) order.
  const float* ret = work_out_.data();
  size_t ret_rows = mine;
  if (per_slot) {
    const int32_t* es = reinterpret_cast<const int32_t*>(recv_.data() + mine * H);
    send_.clear();
    for (size_t i = 0; i < mine * K; ++i)
      if (es[i] >= 0)
        send_.insert(send_.end(), work_out_.begin() + i * H, work_out_.begin() + (i + 1) * H);
    ret = send_.data();
    ret_rows = send_.size() / H;
  }
  sb[l.owner] = ret_rows * H * sizeof(float);
  if (!owner) stats_.bytes_sent += sb[l.owner];
  if (owner) {
    if (per_slot) {
      slots_of_rank_.assign(size, 0);
      for (int r = 0; r < size; ++r)
        for (uint32_t t : rows_of_rank_[r])
          for (size_t j = 0; j < K; ++j)
            slots_of_rank_[r] += (*l.expert_rank)[l.experts[t * K + j]] == r;
    }
    size_t off = 0;
    for (int r = 0; r < size; ++r) {
      const size_t rows = per_slot ? slots_of_rank_[r] : count(r);
      ro[r] = off * sizeof(float);
      rb[r] = rows * H * sizeof(float);
      off += rows * H;
      if (r != me) stats_.bytes_received += rb[r];
    }
    partial_.resize(off);
  }
  t0 = Clock::now();
  if (absl::Status s = comm.AllToAllV(ret, so, sb, partial_.data(), ro, rb); !s.ok())
    return absl::Status(s.code(), absl::StrCat(where, ", combine: ", s.message()));
  stats_.comm_seconds += Seconds(t0, Clock::now());
  if (owner && per_slot) {
    const float* p = partial_.data();
    for (int r = 0; r < size; ++r)
      for (uint32_t t : rows_of_rank_[r])
        for (size_t j = 0; j < K; ++j)
          if ((*l.expert_rank)[l.experts[t * K + j]] == r) {
            std::memcpy(l.slot_out + (t * K + j) * H, p, H * sizeof(float));
            p += H;
          }
    if (l.out != nullptr)
      for (size_t t = 0; t < l.num_tokens; ++t) {
        float* o = l.out + t * H;
        const float* s0 = l.slot_out + t * K * H;
        std::memcpy(o, s0, H * sizeof(float));
        for (size_t j = 1; j < K; ++j)
          for (size_t h = 0; h < H; ++h) o[h] += s0[j * H + h];
      }
  } else if (owner) {
    std::fill(l.out, l.out + l.num_tokens * H, 0.0f);
    const float* p = partial_.data();
    for (int r = 0; r < size; ++r) {
      for (uint32_t t : rows_of_rank_[r]) {
        float* o = l.out + static_cast<size_t>(t) * H;
        for (size_t h = 0; h < H; ++h) o[h] += p[h];
        p += H;
      }
    }
  }
  return result;
}

absl::Status MoeDispatcher::RunRows(const RowLayer& l, RowMemory& mem, Communicator& data,
                                    const RowFn& compute, RowResult* result) {
  const int size = comm_->size();
  const int me = comm_->rank();
  const bool owner = me == l.owner;
  const std::string where = absl::StrCat("MoE layer ", l.layer, " (owner rank ", l.owner,
                                         ", this rank ", me, ", rows in ", mem.name(), ")");
  if (l.owner < 0 || l.owner >= size)
    return absl::InvalidArgumentError(absl::StrCat(where, ": owner outside the group of ", size));
  if (l.expert_rank == nullptr || l.hidden == 0 || l.top_k <= 0)
    return absl::InvalidArgumentError(absl::StrCat(where, ": needs an expert map, hidden > 0 "
                                                   "and top_k > 0 (hidden ", l.hidden,
                                                   ", top_k ", l.top_k, ")"));
  if (data.size() != size || data.rank() != me)
    return absl::InvalidArgumentError(absl::StrCat(where, ": the data communicator is rank ",
                                                   data.rank(), " of ", data.size(),
                                                   ", the control one rank ", me, " of ", size));
  ++stats_.calls;
  const size_t H = l.hidden;
  const size_t K = static_cast<size_t>(l.top_k);
  const size_t row_floats = H + 2 * K;
  const auto& map = *l.expert_rank;

  // 1. Counts, over the control communicator.
  absl::Status status = absl::OkStatus();
  if (owner)
    status = CheckRouting(l.layer, map, l.num_tokens, l.top_k, l.x, l.experts, l.weights,
                          result != nullptr, size);
  if (absl::Status s = Announce(l.layer, l.owner, H, l.top_k, /*per_slot=*/true, l.expert_rank,
                                status, l.experts, l.num_tokens, where);
      !s.ok())
    return s;
  const auto count = [&](int r) { return static_cast<size_t>(counts_[kHeader + r]); };
  const auto fail = [&](const absl::Status& s, const char* what) {
    return absl::Status(s.code(), absl::StrCat(where, ", ", what, ": ", s.message()));
  };

  // 2. Dispatch: the owner gathers each rank's x rows in `mem` and uploads the ids/weights part
  //    of its block (built on the host); the same layout as Run: [x][ids][weights].
  std::vector<size_t> so(size, 0), sb(size, 0), ro(size, 0), rb(size, 0);
  float* send = nullptr;
  if (owner) {
    size_t total = 0;
    for (int r = 0; r < size; ++r) total += count(r);
    auto buf = mem.Scratch(0, std::max<size_t>(1, total * row_floats) * sizeof(float));
    if (!buf.ok()) return fail(buf.status(), "send buffer");
    send = static_cast<float*>(*buf);
    size_t off = 0;
    for (int r = 0; r < size; ++r) {
      const size_t n = count(r);
      so[r] = off * sizeof(float);
      sb[r] = n * row_floats * sizeof(float);
      if (n > 0) {
        idx_.assign(rows_of_rank_[r].begin(), rows_of_rank_[r].end());
        if (absl::Status s = mem.GatherRows(send + off, l.x, idx_.data(), n, H); !s.ok())
          return fail(s, "packing rows");
        meta_.resize(n * 2 * K * sizeof(float));
        int32_t* es = reinterpret_cast<int32_t*>(meta_.data());
        float* ws = reinterpret_cast<float*>(meta_.data()) + n * K;
        for (size_t i = 0; i < n; ++i) {
          const size_t t = rows_of_rank_[r][i];
          for (size_t j = 0; j < K; ++j) {
            const int32_t e = l.experts[t * K + j];
            const bool here = map[e] == r;
            es[i * K + j] = here ? e : -1;
            ws[i * K + j] = here ? l.weights[t * K + j] : 0.0f;
          }
        }
        if (absl::Status s = mem.Upload(send + off + n * H, meta_.data(), meta_.size()); !s.ok())
          return fail(s, "uploading the routing");
      }
      off += n * row_floats;
      if (r != me) stats_.bytes_sent += sb[r];
    }
  }
  const size_t mine = count(me);
  auto rbuf = mem.Scratch(1, std::max<size_t>(1, mine * row_floats) * sizeof(float));
  if (!rbuf.ok()) return fail(rbuf.status(), "receive buffer");
  float* recv = static_cast<float*>(*rbuf);
  rb[l.owner] = mine * row_floats * sizeof(float);
  if (!owner) stats_.bytes_received += rb[l.owner];
  auto t0 = Clock::now();
  if (absl::Status s = data.AllToAllV(send, so, sb, recv, ro, rb); !s.ok())
    return fail(s, "dispatch");
  stats_.comm_seconds += Seconds(t0, Clock::now());

  // 3. This rank's experts: the routing part of the block comes to the host.
  std::vector<int32_t> es(mine * K);
  std::vector<float> ws(mine * K);
  size_t local = 0;
  float* out = nullptr;
  if (mine > 0) {
    if (absl::Status s = mem.Download(es.data(), recv + mine * H, es.size() * 4); !s.ok())
      return fail(s, "downloading the routing");
    if (absl::Status s = mem.Download(ws.data(), recv + mine * H + mine * K, ws.size() * 4);
        !s.ok())
      return fail(s, "downloading the routing");
    for (int32_t e : es) {
      if (e >= 0 && (static_cast<size_t>(e) >= map.size() || map[e] != me))
        return absl::FailedPreconditionError(absl::StrCat(
            where, ": received expert ", e, " which this rank's expert map does not place here"));
      local += e >= 0;
    }
  }
  auto obuf = mem.Scratch(2, std::max<size_t>(1, local * H) * sizeof(float));
  if (!obuf.ok()) return fail(obuf.status(), "slot buffer");
  out = static_cast<float*>(*obuf);
  if (local > 0) {
    RowWork w;
    w.layer = l.layer;
    w.num_tokens = mine;
    w.hidden = H;
    w.top_k = l.top_k;
    w.x = recv;
    w.experts = es.data();
    w.weights = ws.data();
    w.out = out;
    w.out_rows = local;
    t0 = Clock::now();
    absl::Status s = compute(w);
    stats_.compute_seconds += Seconds(t0, Clock::now());
    stats_.tokens_computed += mine;
    // As in Run: a failed callback still takes part in the combine, with zeros.
    if (!s.ok()) {
      const std::vector<float> zeros(local * H, 0.0f);
      absl::Status z = mem.Upload(out, zeros.data(), zeros.size() * sizeof(float));
      if (!z.ok()) return fail(z, "clearing the slots after a failed callback");
      status = absl::Status(s.code(), absl::StrCat(where, ", local experts: ", s.message()));
    }
  }

  // 4. Combine: each rank's slot rows to the owner, in rank order.
  std::fill(so.begin(), so.end(), 0);
  std::fill(sb.begin(), sb.end(), 0);
  std::fill(rb.begin(), rb.end(), 0);
  sb[l.owner] = local * H * sizeof(float);
  if (!owner) stats_.bytes_sent += sb[l.owner];
  float* partial = nullptr;
  if (owner) {
    slots_of_rank_.assign(size, 0);
    result->slot_row.assign(l.num_tokens * K, -1);
    int32_t row = 0;
    size_t off = 0;
    for (int r = 0; r < size; ++r) {
      for (uint32_t t : rows_of_rank_[r])
        for (size_t j = 0; j < K; ++j)
          if (map[l.experts[t * K + j]] == r) {
            result->slot_row[t * K + j] = row++;
            ++slots_of_rank_[r];
          }
      ro[r] = off * sizeof(float);
      rb[r] = slots_of_rank_[r] * H * sizeof(float);
      off += slots_of_rank_[r] * H;
      if (r != me) stats_.bytes_received += rb[r];
    }
    auto pbuf = mem.Scratch(3, std::max<size_t>(1, off) * sizeof(float));
    if (!pbuf.ok()) return fail(pbuf.status(), "combine buffer");
    partial = static_cast<float*>(*pbuf);
    result->rows = partial;
  }
  t0 = Clock::now();
  if (absl::Status s = data.AllToAllV(out, so, sb, partial, ro, rb); !s.ok())
    return fail(s, "combine");
  stats_.comm_seconds += Seconds(t0, Clock::now());
  return status;
}

namespace {
struct HandOffHeader {
  uint64_t magic;
  uint64_t num_tokens;
  uint64_t hidden;
};
constexpr uint64_t kHandOffMagic = 0x7273686964646e31ull;  // "rshiddn1"
}  // namespace

absl::Status SendHidden(Communicator& comm, int dst, const float* x, size_t num_tokens,
                        size_t hidden, uint32_t tag) {
  return SendHidden(comm, comm, dst, x, num_tokens, hidden, tag);
}

absl::Status RecvHidden(Communicator& comm, int src, float* x, size_t num_tokens, size_t hidden,
                        uint32_t tag) {
  return RecvHidden(comm, comm, src, x, num_tokens, hidden, tag);
}

absl::Status SendHidden(Communicator& control, Communicator& data, int dst, const float* x,
                        size_t num_tokens, size_t hidden, uint32_t tag) {
  HandOffHeader h{kHandOffMagic, num_tokens, hidden};
  if (absl::Status s = control.Send(dst, &h, sizeof(h), tag); !s.ok())
    return absl::Status(s.code(), absl::StrCat("hand-off to rank ", dst, " (", num_tokens, " x ",
                                               hidden, "), header: ", s.message()));
  if (absl::Status s = data.Send(dst, x, num_tokens * hidden * sizeof(float), tag); !s.ok())
    return absl::Status(s.code(), absl::StrCat("hand-off to rank ", dst, " (", num_tokens, " x ",
                                               hidden, "): ", s.message()));
  return absl::OkStatus();
}

absl::Status RecvHidden(Communicator& control, Communicator& data, int src, float* x,
                        size_t num_tokens, size_t hidden, uint32_t tag) {
  HandOffHeader h{};
  if (absl::Status s = control.Recv(src, &h, sizeof(h), tag); !s.ok())
    return absl::Status(s.code(), absl::StrCat("hand-off from rank ", src, " (expecting ",
                                               num_tokens, " x ", hidden, "), header: ",
                                               s.message()));
  if (h.magic != kHandOffMagic)
    return absl::DataLossError(absl::StrCat("hand-off from rank ", src, " tag ", tag,
                                            ": the header is not a hand-off header (magic ",
                                            h.magic, ")"));
  const size_t bytes = h.num_tokens * h.hidden * sizeof(float);
  if (h.num_tokens != num_tokens || h.hidden != hidden) {
    absl::Status s = absl::OkStatus();
    if (&control == &data) {  // host memory: drain, so that the stream stays usable
      std::vector<char> drain(bytes);
      s = data.Recv(src, drain.data(), bytes, tag);
    }
    return absl::InvalidArgumentError(absl::StrCat(
        "hand-off from rank ", src, " tag ", tag, ": sent ", h.num_tokens, " tokens x ", h.hidden,
        " floats, this rank expected ", num_tokens, " x ", hidden,
        s.ok() ? "" : absl::StrCat(" (and draining failed: ", s.message(), ")")));
  }
  if (absl::Status s = data.Recv(src, x, bytes, tag); !s.ok())
    return absl::Status(s.code(), absl::StrCat("hand-off from rank ", src, " (", num_tokens, " x ",
                                               hidden, "): ", s.message()));
  return absl::OkStatus();
}

}  // namespace rs::par
