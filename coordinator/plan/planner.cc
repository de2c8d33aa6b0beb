#include "coordinator/plan/planner.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace rs::plan {
namespace {

// "blk.12.attn_q.weight" -> (12, "attn_q.weight"); -1 for a global tensor.
std::pair<int64_t, absl::string_view> SplitBlockName(absl::string_view name) {
  if (!absl::ConsumePrefix(&name, "blk.")) return {-1, name};
  const size_t dot = name.find('.');
  int64_t i = 0;
  if (dot == absl::string_view::npos || !absl::SimpleAtoi(name.substr(0, dot), &i) || i < 0)
    return {-1, name};
  return {i, name.substr(dot + 1)};
}

bool IsExpertTensor(absl::string_view suffix) {
  return absl::StartsWith(suffix, "ffn_") && absl::StrContains(suffix, "_exps");
}

int64_t Dim(const TensorDesc& t, size_t i) { return i < t.shape.size() ? t.shape[i] : 1; }

std::string Label(const DevicePlan& d, const std::string& worker) {
  return absl::StrCat(worker, " ", d.label);
}

std::string Breakdown(const MemoryUse& u) {
  std::vector<std::string> parts;
  auto add = [&](const char* what, uint64_t b) {
    if (b) parts.push_back(absl::StrCat(what, " ", FormatBytes(b)));
  };
  add("weights", u.weights);
  add("experts", u.experts);
  add("KV", u.kv);
  add("state", u.state);
  add("workspace", u.workspace);
  add("margin", u.margin);
  return absl::StrJoin(parts, ", ");
}

uint64_t Margin(const PlanRequest& r, uint64_t capacity) {
  return std::max<uint64_t>(r.margin_min_bytes,
                            static_cast<uint64_t>(r.margin_fraction * static_cast<double>(capacity)));
}

}  // namespace

int64_t ModelShape::n_attn_layers() const {
  return std::count(layer_is_attention.begin(), layer_is_attention.end(), true);
}

const char* KvTypeName(KvType t) {
  return t == KvType::kF16 ? "f16" : t == KvType::kF32 ? "f32" : "q8_0";
}

absl::StatusOr<KvType> ParseKvType(std::string_view s_in) {
  const absl::string_view s(s_in.data(), s_in.size());
  const std::string l = absl::AsciiStrToLower(s);
  if (l == "f16") return KvType::kF16;
  if (l == "q8_0") return KvType::kQ8_0;
  if (l == "f32") return KvType::kF32;
  return absl::InvalidArgumentError(absl::StrCat("unknown KV type '", s, "' (f16, q8_0 or f32)"));
}

uint64_t KvBytesPerTokenPerLayer(const ModelShape& m, KvType t) {
  const uint64_t elems = 2ull * m.n_head_kv * m.head_dim;  // K and V
  if (t == KvType::kF32) return elems * 4;
  return t == KvType::kF16 ? elems * 2 : (elems + 31) / 32 * 34;
}
uint64_t KvBytesPerToken(const ModelShape& m, KvType t) {
  return static_cast<uint64_t>(m.n_attn_layers()) * KvBytesPerTokenPerLayer(m, t);
}
uint64_t ConvStateBytesPerLayer(const ModelShape& m) {
  return static_cast<uint64_t>(m.conv_kernel - 1) * m.conv_dim * 4;
}
uint64_t RecurrentStateBytesPerLayer(const ModelShape& m) {
  return static_cast<uint64_t>(m.Hv) * m.dk * m.dv * 4;
}
uint64_t DeltaNetStateBytesPerSequence(const ModelShape& m) {
  return static_cast<uint64_t>(m.n_deltanet_layers()) *
         (ConvStateBytesPerLayer(m) + RecurrentStateBytesPerLayer(m));
}

uint64_t WorkspaceBytes(const ModelShape& m, int64_t batch_tokens, int64_t slots, bool lm_head) {
  const int64_t attn = 2 * m.n_head * m.head_dim + 2 * m.n_head_kv * m.head_dim;
  const int64_t dn = 2 * m.conv_dim + m.Hv * m.dv;
  const int64_t width = 4 * m.n_embd + std::max(attn, dn) + m.n_expert +
                        2 * std::max(m.n_ff_shexp, m.n_ff);
  uint64_t b = static_cast<uint64_t>(batch_tokens) * width * 4;
  if (lm_head) b += static_cast<uint64_t>(std::max<int64_t>(slots, 1)) * m.n_vocab * 4;
  return b;
}

uint64_t DispatchWorkspaceBytes(const ModelShape& m, int64_t batch_tokens, int64_t workers) {
  if (m.n_expert == 0 || workers < 2) return 0;
  const int64_t row = m.n_embd + 2 * m.n_expert_used, slots = m.n_expert_used * m.n_embd;
  const int64_t copies = std::min<int64_t>(workers, m.n_expert_used);  // a token, once per rank
  return static_cast<uint64_t>(batch_tokens) * ((copies + 1) * row + 2 * slots) * 4;
}

uint64_t ExpertWorkspaceBytes(const ModelShape& m, int64_t batch_tokens) {
  return static_cast<uint64_t>(batch_tokens) * m.n_expert_used * (2 * m.n_ff_exp + m.n_embd) * 4;
}

absl::StatusOr<ModelShape> ShapeFromTensorTable(const std::vector<TensorDesc>& tensors,
                                                int64_t n_expert_used) {
  std::map<int64_t, std::map<std::string, const TensorDesc*, std::less<>>> blocks;
  std::map<std::string, const TensorDesc*, std::less<>> globals;
  for (const auto& t : tensors) {
    auto [i, suffix] = SplitBlockName(t.name);
    if (i < 0) globals[t.name] = &t;
    else blocks[i][std::string(suffix)] = &t;
  }
  ModelShape m;
  auto need = [](const auto& map, absl::string_view key,
                 absl::string_view where) -> absl::StatusOr<const TensorDesc*> {
    auto it = map.find(key);
    if (it == map.end())
      return absl::InvalidArgumentError(
          absl::StrCat("tensor table: ", where, key, " is missing (not a Qwen3.5 layout)"));
    return it->second;
  };
  auto emb = need(globals, "token_embd.weight", "");
  if (!emb.ok()) return emb.status();
  m.n_embd = Dim(**emb, 0);
  m.n_vocab = Dim(**emb, 1);
  // Main layers: blocks 0.. without nextn.* tensors (an MTP block is the last one).
  for (const auto& [i, ts] : blocks) {
    bool mtp = false;
    for (const auto& [s, t] : ts) mtp |= absl::StartsWith(s, "nextn.");
    if (mtp) break;
    if (i != m.n_layer)
      return absl::InvalidArgumentError(
          absl::StrCat("tensor table: block ", m.n_layer, " is missing (next block is ", i, ")"));
    ++m.n_layer;
  }
  if (m.n_layer == 0) return absl::InvalidArgumentError("tensor table: no blk.N tensors");
  for (int64_t i = 0; i < m.n_layer; ++i) {
    const auto& ts = blocks[i];
    const std::string where = absl::StrCat("blk.", i, ".");
    const bool attn = ts.find("ssm_a") == ts.end();
    m.layer_is_attention.push_back(attn);
    if (attn && m.head_dim == 0) {
      auto kn = need(ts, "attn_k_norm.weight", where);
      auto o = need(ts, "attn_output.weight", where);
      if (!kn.ok()) return kn.status();
      if (!o.ok()) return o.status();
      m.head_dim = Dim(**kn, 0);
      if (m.head_dim <= 0) return absl::InvalidArgumentError(where + "attn_k_norm has no width");
      m.n_head = Dim(**o, 0) / m.head_dim;
      if (auto k = ts.find("attn_k.weight"); k != ts.end()) {
        m.n_head_kv = Dim(*k->second, 1) / m.head_dim;
      } else {
        auto qkv = need(ts, "attn_qkv.weight", where);
        if (!qkv.ok()) return qkv.status();
        m.n_head_kv = (Dim(**qkv, 1) - 2 * m.n_head * m.head_dim) / (2 * m.head_dim);
      }
    }
    if (!attn && m.Hv == 0) {
      auto a = need(ts, "ssm_a", where);
      auto n = need(ts, "ssm_norm.weight", where);
      auto c = need(ts, "ssm_conv1d.weight", where);
      if (!a.ok()) return a.status();
      if (!n.ok()) return n.status();
      if (!c.ok()) return c.status();
      m.Hv = Dim(**a, 0);
      m.dv = Dim(**n, 0);
      m.dk = m.dv;
      m.conv_kernel = Dim(**c, 0);
      m.conv_dim = Dim(**c, 1);
    }
    if (i == 0) {
      if (auto r = ts.find("ffn_gate_inp.weight"); r != ts.end()) {
        m.n_expert = Dim(*r->second, 1);
        m.n_expert_used = n_expert_used;
        if (auto u = ts.find("ffn_up_exps.weight"); u != ts.end())
          m.n_ff_exp = Dim(*u->second, 1);
        else if (auto gu = ts.find("ffn_gate_up_exps.weight"); gu != ts.end())
          m.n_ff_exp = Dim(*gu->second, 1) / 2;
        if (auto s = ts.find("ffn_up_shexp.weight"); s != ts.end())
          m.n_ff_shexp = Dim(*s->second, 1);
      } else if (auto u = ts.find("ffn_up.weight"); u != ts.end()) {
        m.n_ff = Dim(*u->second, 1);
      }
    }
  }
  return m;
}

absl::StatusOr<Plan> MakePlan(const PlanRequest& req) {
  const ModelShape& m = req.shape;
  const int64_t L = m.n_layer;
  const int W = static_cast<int>(req.workers.size());
  if (L <= 0 || static_cast<int64_t>(m.layer_is_attention.size()) != L)
    return absl::InvalidArgumentError(absl::StrCat("model shape: n_layer ", L, " with ",
                                                   m.layer_is_attention.size(), " layer kinds"));
  if (W == 0) return absl::InvalidArgumentError("no workers in the inventory");
  if (W > L)
    return absl::InvalidArgumentError(absl::StrCat(W, " workers but only ", L,
                                                   " layers: every worker must own a layer"));
  if (req.context <= 0 || req.slots <= 0 || req.batch_tokens <= 0)
    return absl::InvalidArgumentError(absl::StrCat("context ", req.context, ", slots ", req.slots,
                                                   ", batch tokens ", req.batch_tokens,
                                                   " must all be positive"));

  Plan p;
  p.shape = m;
  p.context = req.context;
  p.slots = req.slots;
  p.kv_type = req.kv_type;
  p.kv_bytes_per_token = KvBytesPerToken(m, req.kv_type);
  p.deltanet_state_bytes_per_sequence = DeltaNetStateBytesPerSequence(m);

  // 1. Classify the tensors.
  std::vector<uint64_t> layer_bytes(L, 0);
  std::vector<uint64_t> expert_bytes(L, 0);
  uint64_t embd_bytes = 0, head_bytes = 0;
  for (const auto& t : req.tensors) {
    auto [i, suffix] = SplitBlockName(t.name);
    if (i < 0) {
      if (t.name == "token_embd.weight") embd_bytes += t.bytes;
      else head_bytes += t.bytes;  // output_norm, output (a tied model has none)
      continue;
    }
    if (i >= L) {
      p.skipped_tensors.push_back(t.name);
      continue;
    }
    if (IsExpertTensor(suffix)) {
      if (m.n_expert <= 0)
        return absl::InvalidArgumentError(
            absl::StrCat(t.name, " is a routed-expert tensor but the shape has no experts"));
      if (Dim(t, 2) != m.n_expert || t.bytes % m.n_expert != 0)
        return absl::InvalidArgumentError(absl::StrCat(
            t.name, ": ne[2] = ", Dim(t, 2), " and ", t.bytes, " bytes do not split into ",
            m.n_expert, " experts"));
      expert_bytes[i] += t.bytes / m.n_expert;
    } else {
      layer_bytes[i] += t.bytes;
    }
  }
  if (m.n_expert > 0) {
    for (int64_t i = 0; i < L; ++i)
      if (expert_bytes[i] == 0)
        return absl::InvalidArgumentError(
            absl::StrCat("blk.", i, " has no routed-expert tensors (ffn_*_exps)"));
  }
  p.expert_bytes = m.n_expert > 0 ? expert_bytes : std::vector<uint64_t>{};
  for (int64_t i = 0; i < L; ++i) {
    p.nonexpert_bytes += layer_bytes[i];
    p.expert_bytes_total += expert_bytes[i] * static_cast<uint64_t>(m.n_expert);
  }
  p.nonexpert_bytes += embd_bytes + head_bytes;

  // Per-layer state for all slots.
  const uint64_t kv_layer = KvBytesPerTokenPerLayer(m, req.kv_type) *
                            static_cast<uint64_t>(req.context) * req.slots;
  const uint64_t dn_layer =
      (ConvStateBytesPerLayer(m) + RecurrentStateBytesPerLayer(m)) * req.slots;

  // Pools: each worker's GPUs in order, then its host.
  p.workers.resize(W);
  std::vector<uint64_t> primary_cap(W);
  for (int w = 0; w < W; ++w) {
    const WorkerInventory& inv = req.workers[w];
    WorkerPlan& wp = p.workers[w];
    wp.name = inv.name.empty() ? absl::StrCat("w", w) : inv.name;
    for (const auto& d : inv.devices) {
      if (d.kind != DeviceKind::kCuda) continue;
      DevicePlan dp;
      dp.device = static_cast<int>(wp.devices.size());
      dp.label = absl::StrCat("cuda:", d.index);
      dp.capacity = d.free_bytes;
      wp.devices.push_back(dp);
    }
    DevicePlan host;
    host.device = -1;
    host.label = wp.devices.empty() ? "cpu" : "host";
    host.capacity = inv.host_ram_bytes;
    wp.devices.push_back(host);
    wp.devices.front().primary = true;
    primary_cap[w] = wp.devices.front().capacity;
    if (primary_cap[w] == 0)
      return absl::InvalidArgumentError(absl::StrCat(
          "worker ", wp.name, " has no memory: ",
          wp.devices.size() == 1 ? "host RAM 0 and no GPU" : "its first GPU reports 0 bytes free"));
  }

  // 2. Layer ranges.
  std::vector<double> cost(L);
  for (int64_t i = 0; i < L; ++i)
    cost[i] = static_cast<double>(layer_bytes[i] + (m.layer_is_attention[i] ? kv_layer : dn_layer));
  std::vector<std::pair<int64_t, int64_t>> ranges;
  if (!req.layer_ranges.empty()) {
    if (static_cast<int>(req.layer_ranges.size()) != W)
      return absl::InvalidArgumentError(absl::StrCat(req.layer_ranges.size(),
                                                     " layer ranges given for ", W, " workers"));
    int64_t next = 0;
    for (int w = 0; w < W; ++w) {
      auto [b, e] = req.layer_ranges[w];
      if (b != next || e <= b || e > L)
        return absl::InvalidArgumentError(absl::StrCat(
            "layer range ", w, " is [", b, ", ", e, "): ranges must be non-empty, contiguous, ",
            "start at 0 and cover layers 0..", L - 1, " (next expected start ", next, ")"));
      next = e;
    }
    if (next != L)
      return absl::InvalidArgumentError(
          absl::StrCat("layer ranges end at layer ", next - 1, " but the model has ", L, " layers"));
    ranges = req.layer_ranges;
  } else {
    double cap_sum = 0;
    for (int w = 0; w < W; ++w) cap_sum += static_cast<double>(primary_cap[w]);
    std::vector<double> prefix(L + 1, 0);
    for (int64_t i = 0; i < L; ++i) prefix[i + 1] = prefix[i] + cost[i];
    auto stage = [&](int w, int64_t b, int64_t e) {
      double c = prefix[e] - prefix[b];
      if (w == W - 1) c += static_cast<double>(head_bytes);
      const double share = static_cast<double>(primary_cap[w]) / cap_sum;
      return c * c / share;  // minimum where cost / share is equal on every stage
    };
    const double kInf = std::numeric_limits<double>::infinity();
    // best[w][e]: first w+1 workers own layers [0, e).
    std::vector<std::vector<double>> best(W, std::vector<double>(L + 1, kInf));
    std::vector<std::vector<int64_t>> from(W, std::vector<int64_t>(L + 1, -1));
    for (int64_t e = 1; e <= L; ++e) best[0][e] = stage(0, 0, e);
    for (int w = 1; w < W; ++w)
      for (int64_t e = w + 1; e <= L; ++e)
        for (int64_t b = w; b < e; ++b) {
          if (best[w - 1][b] == kInf) continue;
          const double v = best[w - 1][b] + stage(w, b, e);
          if (v < best[w][e]) {
            best[w][e] = v;
            from[w][e] = b;
          }
        }
    ranges.resize(W);
    int64_t e = L;
    for (int w = W - 1; w >= 0; --w) {
      const int64_t b = w == 0 ? 0 : from[w][e];
      ranges[w] = {b, e};
      e = b;
    }
  }

  // 3. Primary memory of each worker.
  std::vector<std::string> short_primary;
  for (int w = 0; w < W; ++w) {
    WorkerPlan& wp = p.workers[w];
    wp.layer_begin = ranges[w].first;
    wp.layer_end = ranges[w].second;
    wp.embedding = w == 0;
    wp.lm_head = w == W - 1;
    DevicePlan& d = wp.devices.front();
    for (int64_t i = wp.layer_begin; i < wp.layer_end; ++i) {
      d.use.weights += layer_bytes[i];
      (m.layer_is_attention[i] ? d.use.kv : d.use.state) +=
          m.layer_is_attention[i] ? kv_layer : dn_layer;
    }
    if (wp.embedding) d.use.weights += embd_bytes;
    if (wp.lm_head) d.use.weights += head_bytes;
    d.use.workspace = WorkspaceBytes(m, req.batch_tokens, req.slots, wp.lm_head);
    d.use.workspace += DispatchWorkspaceBytes(m, req.batch_tokens, W);
    d.use.margin = Margin(req, d.capacity);
    wp.stage_cost = d.use.weights - (wp.embedding ? embd_bytes : 0) + d.use.kv + d.use.state;
    if (d.use.total() > d.capacity)
      short_primary.push_back(absl::StrFormat(
          "%s needs %s = %u B (%s; layers %d-%d%s%s) but has %s = %u B (short by %s)",
          Label(d, wp.name), FormatBytes(d.use.total()), d.use.total(), Breakdown(d.use),
          wp.layer_begin, wp.layer_end - 1, wp.embedding ? ", embedding" : "",
          wp.lm_head ? ", LM head" : "", FormatBytes(d.capacity), d.capacity,
          FormatBytes(d.use.total() - d.capacity)));
  }
  if (!short_primary.empty())
    return absl::ResourceExhaustedError(absl::StrCat(
        "plan refused: the layers, KV cache and state (context ", req.context, " x ", req.slots,
        " slots, KV ", KvTypeName(req.kv_type), ") do not fit: ",
        absl::StrJoin(short_primary, "; ")));

  // 4. Routed experts.
  if (m.n_expert > 0) {
    const int64_t E = m.n_expert;
    const uint64_t ews = ExpertWorkspaceBytes(m, req.batch_tokens);
    p.experts.assign(L, std::vector<ExpertPlace>(E));
    // Bytes a pool has left for one more expert (its first reserves workspace and margin).
    auto room = [&](const DevicePlan& d) -> int64_t {
      uint64_t used = d.use.total();
      if (d.n_experts == 0) {
        used += ews;
        if (!d.primary) used += Margin(req, d.capacity);
      }
      return static_cast<int64_t>(d.capacity) - static_cast<int64_t>(used);
    };
    auto put = [&](int w, int di, int64_t l, int64_t e) {
      DevicePlan& d = p.workers[w].devices[di];
      if (d.n_experts == 0) {
        d.use.workspace += ews;
        if (!d.primary) d.use.margin = Margin(req, d.capacity);
      }
      d.use.experts += expert_bytes[l];
      ++d.n_experts;
      p.experts[l][e] = {w, d.device};
    };
    // Pool choice: the GPU (tier 0) or else the host (tier 1) with the most room.
    auto choose = [&](int only_worker, std::optional<int> only_device, int64_t l,
                      int* out_w, int* out_d) {
      const int64_t need = static_cast<int64_t>(expert_bytes[l]);
      for (int tier = 0; tier < 2; ++tier) {
        int64_t best = -1;
        for (int w = 0; w < W; ++w) {
          if (only_worker >= 0 && w != only_worker) continue;
          const auto& devs = p.workers[w].devices;
          for (int di = 0; di < static_cast<int>(devs.size()); ++di) {
            const bool host = devs[di].device < 0;
            if (host != (tier == 1)) continue;
            if (only_device && devs[di].device != *only_device) continue;
            const int64_t r = room(devs[di]);
            if (r >= need && r > best) {
              best = r;
              *out_w = w;
              *out_d = di;
            }
          }
        }
        if (best >= 0) return true;
      }
      return false;
    };
    // Pins, resolved (the last pin naming an expert wins).
    std::vector<std::vector<int>> pin_of(L, std::vector<int>(E, -1));
    for (size_t k = 0; k < req.expert_pins.size(); ++k) {
      const ExpertPin& pin = req.expert_pins[k];
      const int64_t lb = pin.layer_begin, le = pin.layer_end < 0 ? L : pin.layer_end;
      const int64_t eb = pin.expert_begin, ee = pin.expert_end < 0 ? E : pin.expert_end;
      if (lb < 0 || le > L || lb >= le || eb < 0 || ee > E || eb >= ee)
        return absl::InvalidArgumentError(absl::StrCat(
            "expert pin ", k, ": layers [", lb, ", ", le, ") experts [", eb, ", ", ee,
            ") out of range (", L, " layers, ", E, " experts)"));
      if (pin.worker < 0 || pin.worker >= W)
        return absl::InvalidArgumentError(absl::StrCat("expert pin ", k, ": worker ", pin.worker,
                                                       " does not exist (", W, " workers)"));
      if (pin.device && *pin.device >= 0 &&
          *pin.device >= static_cast<int>(p.workers[pin.worker].devices.size()) - 1)
        return absl::InvalidArgumentError(absl::StrCat(
            "expert pin ", k, ": worker ", p.workers[pin.worker].name, " has no GPU #",
            *pin.device, " (it has ", p.workers[pin.worker].devices.size() - 1, ")"));
      for (int64_t l = lb; l < le; ++l)
        for (int64_t e = eb; e < ee; ++e) pin_of[l][e] = static_cast<int>(k);
    }
    for (int64_t l = 0; l < L; ++l)
      for (int64_t e = 0; e < E; ++e) {
        const int k = pin_of[l][e];
        if (k < 0) continue;
        const ExpertPin& pin = req.expert_pins[k];
        int w = -1, di = -1;
        if (!choose(pin.worker, pin.device, l, &w, &di)) {
          std::vector<std::string> left;
          for (const auto& d : p.workers[pin.worker].devices)
            left.push_back(absl::StrCat(d.label, " ", FormatBytes(std::max<int64_t>(room(d), 0))));
          return absl::ResourceExhaustedError(absl::StrCat(
              "plan refused: pinned expert ", e, " of blk.", l, " (", expert_bytes[l],
              " B) does not fit on worker ", p.workers[pin.worker].name, " (room left: ",
              absl::StrJoin(left, ", "), ")"));
        }
        put(w, di, l, e);
      }
    // Everything else, in expert-major order (expert 0 of every layer, then expert 1, ...), so
    // that the GPUs fill evenly over the layers and, when they are full, what spills is the
    // high-numbered experts of every layer. Within a tier (GPUs, then hosts) an expert goes to
    // the pool furthest behind its share of this layer: (experts of the layer it holds + 1) /
    // (the room it had for experts) smallest, so each layer is spread over every worker in
    // proportion to the room each had.
    std::vector<std::pair<int, int>> pools;  // (worker, device index)
    std::vector<double> share;               // room for experts before this phase
    std::vector<std::vector<int64_t>> held;  // [pool][layer]
    for (int w = 0; w < W; ++w)
      for (int di = 0; di < static_cast<int>(p.workers[w].devices.size()); ++di) {
        pools.emplace_back(w, di);
        share.push_back(static_cast<double>(std::max<int64_t>(room(p.workers[w].devices[di]), 0)));
        held.emplace_back(L, 0);
      }
    for (int64_t l = 0; l < L; ++l)
      for (int64_t e = 0; e < E; ++e)
        if (pin_of[l][e] >= 0) {
          const ExpertPlace& pl = p.experts[l][e];
          for (size_t k = 0; k < pools.size(); ++k)
            if (pools[k].first == pl.worker &&
                p.workers[pl.worker].devices[pools[k].second].device == pl.device)
              ++held[k][l];
        }
    int64_t unplaced = 0;
    uint64_t unplaced_bytes = 0;
    for (int64_t e = 0; e < E; ++e)
      for (int64_t l = 0; l < L; ++l) {
        if (pin_of[l][e] >= 0) continue;
        const int64_t need = static_cast<int64_t>(expert_bytes[l]);
        int best = -1;
        for (int tier = 0; tier < 2 && best < 0; ++tier)
          for (size_t k = 0; k < pools.size(); ++k) {
            const DevicePlan& d = p.workers[pools[k].first].devices[pools[k].second];
            if ((d.device < 0) != (tier == 1) || share[k] <= 0 || room(d) < need) continue;
            // (held[k] + 1) / share[k] < (held[best] + 1) / share[best]
            if (best < 0 || (held[k][l] + 1) * share[best] < (held[best][l] + 1) * share[k])
              best = static_cast<int>(k);
          }
        if (best < 0) {
          ++unplaced;
          unplaced_bytes += expert_bytes[l];
          continue;
        }
        put(pools[best].first, pools[best].second, l, e);
        ++held[best][l];
      }
    if (unplaced > 0) {
      std::vector<std::string> pool_text;
      uint64_t gpu_cap = 0, host_cap = 0;
      for (const auto& wp : p.workers)
        for (const auto& d : wp.devices) {
          (d.device >= 0 ? gpu_cap : host_cap) += d.capacity;
          if (d.capacity == 0 && d.use.total() == 0) continue;
          pool_text.push_back(absl::StrFormat("%s %s of %s used (%s)", Label(d, wp.name),
                                          FormatBytes(d.use.total()), FormatBytes(d.capacity),
                                          Breakdown(d.use)));
        }
      return absl::ResourceExhaustedError(absl::StrFormat(
          "plan refused: routed experts do not fit: %d of %d experts (%s = %u B of %s = %u B) "
          "have no place on any GPU (%s in all) or host RAM (%s in all) after the layers, KV "
          "cache and state (context %d x %d slots); add at least %s of GPU memory or host RAM "
          "(--host-ram; a pool also keeps a margin and an expert workspace). Pools: %s",
          unplaced, L * E, FormatBytes(unplaced_bytes), unplaced_bytes,
          FormatBytes(p.expert_bytes_total), p.expert_bytes_total, FormatBytes(gpu_cap),
          FormatBytes(host_cap), req.context, req.slots, FormatBytes(unplaced_bytes),
          absl::StrJoin(pool_text, "; ")));
    }
  }
  for (auto& wp : p.workers) {
    const bool has_gpu = wp.devices.size() > 1;
    for (const auto& d : wp.devices) {
      if (d.device >= 0) {
        wp.experts_on_gpu += d.n_experts;
      } else {
        wp.experts_on_cpu += d.n_experts;
        if (has_gpu) {
          p.experts_spilled += d.n_experts;
          p.spilled_bytes += d.use.experts;
        }
      }
    }
  }
  return p;
}

absl::StatusOr<uint64_t> ParseBytes(std::string_view s_in) {
  const absl::string_view s(s_in.data(), s_in.size());
  std::string t = absl::AsciiStrToLower(absl::StripAsciiWhitespace(s));
  size_t n = 0;
  while (n < t.size() && (absl::ascii_isdigit(t[n]) || t[n] == '.')) ++n;
  const std::string num = t.substr(0, n);
  std::string unit(absl::StripAsciiWhitespace(absl::string_view(t).substr(n)));
  double v = 0;
  if (num.empty() || !absl::SimpleAtod(num, &v) || v < 0)
    return absl::InvalidArgumentError(absl::StrCat("bad size '", s, "' (e.g. 24GiB, 512MiB)"));
  static const std::map<std::string, double> kUnits = {
      {"", 1},           {"b", 1},
      {"k", 1024.0},     {"kib", 1024.0},        {"kb", 1e3},
      {"m", 1048576.0},  {"mib", 1048576.0},     {"mb", 1e6},
      {"g", 1073741824.0}, {"gib", 1073741824.0}, {"gb", 1e9},
      {"t", 1099511627776.0}, {"tib", 1099511627776.0}, {"tb", 1e12}};
  auto it = kUnits.find(unit);
  if (it == kUnits.end())
    return absl::InvalidArgumentError(
        absl::StrCat("bad size unit '", unit, "' in '", s, "' (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"));
  const double b = std::round(v * it->second);
  if (b >= 1.8e19) return absl::InvalidArgumentError(absl::StrCat("size '", s, "' too large"));
  return static_cast<uint64_t>(b);
}

std::string FormatBytes(uint64_t b) {
  const double d = static_cast<double>(b);
  if (b >= (1ull << 30)) return absl::StrFormat("%.2f GiB", d / (1ull << 30));
  if (b >= (1ull << 20)) return absl::StrFormat("%.1f MiB", d / (1ull << 20));
  if (b >= (1ull << 10)) return absl::StrFormat("%.1f KiB", d / (1ull << 10));
  return absl::StrCat(b, " B");
}

namespace {

// "N" or "A-B" (inclusive) or "*" -> [begin, end); "*" gives (0, -1).
absl::StatusOr<std::pair<int64_t, int64_t>> ParseSpan(absl::string_view s, absl::string_view what) {
  s = absl::StripAsciiWhitespace(s);
  if (s == "*") return std::pair<int64_t, int64_t>{0, -1};
  std::vector<absl::string_view> ab = absl::StrSplit(s, '-');
  int64_t a = 0, b = 0;
  if (ab.size() == 1 && absl::SimpleAtoi(ab[0], &a) && a >= 0) return std::pair{a, a + 1};
  if (ab.size() == 2 && absl::SimpleAtoi(ab[0], &a) && absl::SimpleAtoi(ab[1], &b) && a >= 0 &&
      b >= a)
    return std::pair{a, b + 1};
  return absl::InvalidArgumentError(
      absl::StrCat("bad ", what, " '", s, "' (N, A-B with A <= B, or *)"));
}

}  // namespace

absl::StatusOr<std::vector<std::pair<int64_t, int64_t>>> ParseLayerRanges(std::string_view s_in) {
  const absl::string_view s(s_in.data(), s_in.size());
  std::vector<std::pair<int64_t, int64_t>> out;
  for (absl::string_view item : absl::StrSplit(s, ',')) {
    if (absl::StripAsciiWhitespace(item) == "*")
      return absl::InvalidArgumentError("layer ranges: '*' is not a range");
    auto r = ParseSpan(item, "layer range");
    if (!r.ok()) return r.status();
    out.push_back(*r);
  }
  return out;
}

absl::StatusOr<std::vector<ExpertPin>> ParseExpertPins(std::string_view s_in) {
  const absl::string_view s(s_in.data(), s_in.size());
  std::vector<ExpertPin> out;
  for (absl::string_view item : absl::StrSplit(s, absl::ByAnyChar(",;"), absl::SkipWhitespace())) {
    item = absl::StripAsciiWhitespace(item);
    const size_t colon = item.find(':'), eq = item.find('=');
    if (colon == absl::string_view::npos || eq == absl::string_view::npos || eq < colon)
      return absl::InvalidArgumentError(
          absl::StrCat("bad expert pin '", item, "' (LAYERS:EXPERTS=WORKER[/cpu|/gpu|/cuda:N])"));
    auto layers = ParseSpan(item.substr(0, colon), "layer span");
    if (!layers.ok()) return layers.status();
    auto experts = ParseSpan(item.substr(colon + 1, eq - colon - 1), "expert span");
    if (!experts.ok()) return experts.status();
    ExpertPin pin;
    pin.layer_begin = layers->first;
    pin.layer_end = layers->second;
    pin.expert_begin = experts->first;
    pin.expert_end = experts->second;
    absl::string_view target = item.substr(eq + 1);
    absl::string_view dev;
    if (size_t slash = target.find('/'); slash != absl::string_view::npos) {
      dev = target.substr(slash + 1);
      target = target.substr(0, slash);
    }
    if (!absl::SimpleAtoi(target, &pin.worker) || pin.worker < 0)
      return absl::InvalidArgumentError(absl::StrCat("bad worker '", target, "' in pin '", item, "'"));
    if (dev == "cpu" || dev == "host") {
      pin.device = -1;
    } else if (dev == "gpu") {
      pin.device = 0;
    } else if (absl::ConsumePrefix(&dev, "cuda:")) {
      int n = 0;
      if (!absl::SimpleAtoi(dev, &n) || n < 0)
        return absl::InvalidArgumentError(absl::StrCat("bad device in pin '", item, "'"));
      pin.device = n;
    } else if (!dev.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad device '", dev, "' in pin '", item, "' (cpu, host, gpu, cuda:N)"));
    }
    out.push_back(pin);
  }
  return out;
}

std::vector<int32_t> LayerOwners(const Plan& p) {
  std::vector<int32_t> owner(p.shape.n_layer, -1);
  for (size_t w = 0; w < p.workers.size(); ++w)
    for (int64_t i = p.workers[w].layer_begin; i < p.workers[w].layer_end; ++i)
      owner[i] = static_cast<int32_t>(w);
  return owner;
}

std::vector<std::vector<int32_t>> ExpertOwners(const Plan& p) {
  std::vector<std::vector<int32_t>> out;
  for (const auto& layer : p.experts) {
    out.emplace_back();
    for (const auto& e : layer) out.back().push_back(e.worker);
  }
  return out;
}

std::vector<std::vector<int32_t>> ExpertDevices(const Plan& p) {
  std::vector<std::vector<int32_t>> out;
  for (const auto& layer : p.experts) {
    out.emplace_back();
    for (const auto& e : layer) out.back().push_back(e.device);
  }
  return out;
}

std::string PlanTable(const Plan& p) {
  const ModelShape& m = p.shape;
  std::string o;
  absl::StrAppendFormat(&o, "model: %d layers (%d attention, %d DeltaNet), H %d", m.n_layer,
                        m.n_attn_layers(), m.n_deltanet_layers(), m.n_embd);
  if (m.n_expert > 0)
    absl::StrAppendFormat(&o, ", %d experts/layer (top-%d)", m.n_expert, m.n_expert_used);
  absl::StrAppendFormat(&o, "; non-expert weights %s, routed experts %s\n",
                        FormatBytes(p.nonexpert_bytes), FormatBytes(p.expert_bytes_total));
  absl::StrAppendFormat(
      &o, "state: context %d x %d slots, KV %s %s/token (%s), DeltaNet state %s/sequence (%s)\n",
      p.context, p.slots, KvTypeName(p.kv_type), FormatBytes(p.kv_bytes_per_token),
      FormatBytes(p.kv_bytes_per_token * static_cast<uint64_t>(p.context) * p.slots),
      FormatBytes(p.deltanet_state_bytes_per_sequence),
      FormatBytes(p.deltanet_state_bytes_per_sequence * static_cast<uint64_t>(p.slots)));
  absl::StrAppendFormat(&o, "\n%-6s %-11s %-7s %10s %10s %10s %10s %10s %10s %10s %10s %10s %8s\n",
                        "worker", "layers", "pool", "capacity", "weights", "experts", "KV",
                        "state", "workspace", "margin", "total", "free", "#experts");
  for (const auto& wp : p.workers) {
    bool first = true;
    for (const auto& d : wp.devices) {
      if (!d.primary && d.n_experts == 0 && d.use.total() == 0 && d.capacity == 0) continue;
      std::string layers;
      if (first) {
        layers = absl::StrCat(wp.layer_begin, "-", wp.layer_end - 1);
        if (wp.embedding) layers += " E";
        if (wp.lm_head) layers += " H";
      }
      const uint64_t tot = d.use.total();
      absl::StrAppendFormat(
          &o, "%-6s %-11s %-7s %10s %10s %10s %10s %10s %10s %10s %10s %10s %8d\n",
          first ? wp.name : "", layers, d.label, FormatBytes(d.capacity),
          FormatBytes(d.use.weights), FormatBytes(d.use.experts), FormatBytes(d.use.kv),
          FormatBytes(d.use.state), FormatBytes(d.use.workspace), FormatBytes(d.use.margin),
          FormatBytes(tot), tot <= d.capacity ? FormatBytes(d.capacity - tot) : "-",
          d.n_experts);
      first = false;
    }
  }
  o += "(layers: E = embedding, H = output norm + LM head)\n";
  if (p.shape.n_expert > 0) {
    o += "\nexperts per worker (GPU / CPU):";
    for (const auto& wp : p.workers)
      absl::StrAppendFormat(&o, "  %s %d / %d", wp.name, wp.experts_on_gpu, wp.experts_on_cpu);
    o += "\n";
    bool any_gpu = false;
    for (const auto& wp : p.workers)
      for (const auto& d : wp.devices) any_gpu |= d.device >= 0;
    if (!any_gpu)
      o += "CPU workers: every expert in host RAM, run by its worker's CPU\n";
    else if (p.experts_spilled == 0)
      o += "fits on GPUs alone: no expert spilled to host RAM\n";
    else
      absl::StrAppendFormat(&o, "spilled to host RAM: %d of %d experts (%s)\n", p.experts_spilled,
                            p.shape.n_layer * p.shape.n_expert, FormatBytes(p.spilled_bytes));
  }
  if (!p.skipped_tensors.empty())
    absl::StrAppendFormat(&o, "not served: %d tensors of blocks >= %d (MTP)\n",
                          p.skipped_tensors.size(), p.shape.n_layer);
  return o;
}

std::string PlanJson(const Plan& p) {
  const ModelShape& m = p.shape;
  std::string o = "{";
  absl::StrAppendFormat(
      &o,
      "\"model\": {\"n_layer\": %d, \"n_attn_layers\": %d, \"n_embd\": %d, \"n_vocab\": %d, "
      "\"n_expert\": %d, \"n_expert_used\": %d, \"nonexpert_bytes\": %u, \"expert_bytes\": %u}, ",
      m.n_layer, m.n_attn_layers(), m.n_embd, m.n_vocab, m.n_expert, m.n_expert_used,
      p.nonexpert_bytes, p.expert_bytes_total);
  absl::StrAppendFormat(&o,
                        "\"context\": %d, \"slots\": %d, \"kv_type\": \"%s\", "
                        "\"kv_bytes_per_token\": %u, \"deltanet_state_bytes_per_sequence\": %u, ",
                        p.context, p.slots, KvTypeName(p.kv_type), p.kv_bytes_per_token,
                        p.deltanet_state_bytes_per_sequence);
  absl::StrAppendFormat(&o, "\"fits_on_gpus\": %s, \"experts_spilled\": %d, \"spilled_bytes\": %u, ",
                        p.fits_on_gpus() ? "true" : "false", p.experts_spilled, p.spilled_bytes);
  o += "\"workers\": [";
  for (size_t w = 0; w < p.workers.size(); ++w) {
    const WorkerPlan& wp = p.workers[w];
    if (w) o += ", ";
    absl::StrAppendFormat(&o,
                          "{\"name\": \"%s\", \"layer_begin\": %d, \"layer_end\": %d, "
                          "\"embedding\": %s, \"lm_head\": %s, \"stage_cost\": %u, "
                          "\"experts_on_gpu\": %d, \"experts_on_cpu\": %d, \"pools\": [",
                          absl::CEscape(wp.name), wp.layer_begin, wp.layer_end,
                          wp.embedding ? "true" : "false", wp.lm_head ? "true" : "false",
                          wp.stage_cost, wp.experts_on_gpu, wp.experts_on_cpu);
    for (size_t i = 0; i < wp.devices.size(); ++i) {
      const DevicePlan& d = wp.devices[i];
      if (i) o += ", ";
      absl::StrAppendFormat(
          &o,
          "{\"device\": %d, \"label\": \"%s\", \"primary\": %s, \"capacity\": %u, "
          "\"weights\": %u, \"experts\": %u, \"kv\": %u, \"state\": %u, \"workspace\": %u, "
          "\"margin\": %u, \"total\": %u, \"n_experts\": %d}",
          d.device, d.label, d.primary ? "true" : "false", d.capacity, d.use.weights,
          d.use.experts, d.use.kv, d.use.state, d.use.workspace, d.use.margin, d.use.total(),
          d.n_experts);
    }
    o += "]}";
  }
  o += "], \"expert_bytes_per_layer\": [";
  o += absl::StrJoin(p.expert_bytes, ", ");
  // Expert map: per layer, the worker and the device of every expert.
  o += "], \"experts\": [";
  for (size_t l = 0; l < p.experts.size(); ++l) {
    if (l) o += ", ";
    std::vector<int> ws, ds;
    for (const auto& e : p.experts[l]) {
      ws.push_back(e.worker);
      ds.push_back(e.device);
    }
    absl::StrAppend(&o, "{\"layer\": ", l, ", \"worker\": [", absl::StrJoin(ws, ","),
                    "], \"device\": [", absl::StrJoin(ds, ","), "]}");
  }
  o += "], \"skipped_tensors\": [";
  for (size_t i = 0; i < p.skipped_tensors.size(); ++i)
    absl::StrAppend(&o, i ? ", " : "", "\"", absl::CEscape(p.skipped_tensors[i]), "\"");
  o += "]}\n";
  return o;
}

}  // namespace rs::plan
