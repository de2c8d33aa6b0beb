#include "worker/model_config.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace rs {

int64_t ModelConfig::n_attn_layers() const {
  int64_t n = 0;
  for (auto k : layers) n += k == LayerKind::kAttention;
  return n;
}

std::string ModelConfig::summary() const {
  std::string s = absl::StrFormat(
      "%s: %d layers (%d attention), H=%d, vocab=%d, attn %d/%d heads x %d (rope %d, theta %g), "
      "DeltaNet Hk=%d Hv=%d dk=%d dv=%d",
      arch, n_layer, n_attn_layers(), n_embd, n_vocab, n_head, n_head_kv, head_dim, rope_dims,
      rope_theta, Hk, Hv, dk, dv);
  if (moe)
    absl::StrAppendFormat(&s, ", %d experts top-%d (I=%d, shared %d)", n_expert, n_expert_used,
                          n_ff_exp, n_ff_shexp);
  else
    absl::StrAppendFormat(&s, ", FFN %d", n_ff);
  return s;
}

namespace {

absl::Status Invalid(const std::string& msg) { return absl::InvalidArgumentError(msg); }

}  // namespace

absl::StatusOr<ModelConfig> ReadModelConfig(const gguf::File& f) {
  ModelConfig c;
  auto arch = f.get_string("general.architecture");
  if (!arch.ok()) return Invalid("not a model file: " + std::string(arch.status().message()));
  c.arch = *arch;
  if (c.arch == "qwen35") {
    c.moe = false;
  } else if (c.arch == "qwen35moe") {
    c.moe = true;
  } else {
    return Invalid(absl::StrCat("unsupported architecture '", c.arch,
                                "' (rigserve serves qwen35 and qwen35moe)"));
  }
  const std::string p = c.arch + ".";
  auto u = [&](const std::string& key) -> absl::StatusOr<int64_t> {
    auto v = f.get_uint(p + key);
    if (!v.ok()) return v.status();
    return static_cast<int64_t>(*v);
  };
#define RS_READ(field, key)          \
  {                                  \
    auto v_ = u(key);                \
    if (!v_.ok()) return v_.status(); \
    c.field = *v_;                   \
  }
  int64_t block_count = 0;
  RS_READ(n_embd, "embedding_length");
  {
    auto v = u("block_count");
    if (!v.ok()) return v.status();
    block_count = *v;
  }
  auto nextn = f.get_uint_or(p + "nextn_predict_layers", 0);
  if (!nextn.ok()) return nextn.status();
  c.n_layer = block_count - static_cast<int64_t>(*nextn);
  auto ctx = f.get_uint_or(p + "context_length", 0);
  if (!ctx.ok()) return ctx.status();
  c.context_length = static_cast<int64_t>(*ctx);
  RS_READ(n_head, "attention.head_count");
  RS_READ(n_head_kv, "attention.head_count_kv");
  RS_READ(head_dim, "attention.key_length");
  int64_t value_length = 0;
  {
    auto v = u("attention.value_length");
    if (!v.ok()) return v.status();
    value_length = *v;
  }
  RS_READ(rope_dims, "rope.dimension_count");
  RS_READ(conv_kernel, "ssm.conv_kernel");
  RS_READ(dk, "ssm.state_size");
  RS_READ(Hk, "ssm.group_count");
  RS_READ(Hv, "ssm.time_step_rank");
  int64_t inner = 0;
  {
    auto v = u("ssm.inner_size");
    if (!v.ok()) return v.status();
    inner = *v;
  }
  auto eps = f.get_float(p + "attention.layer_norm_rms_epsilon");
  if (!eps.ok()) return eps.status();
  c.eps = static_cast<float>(*eps);
  auto theta = f.get_float(p + "rope.freq_base");
  if (!theta.ok()) return theta.status();
  c.rope_theta = static_cast<float>(*theta);
  auto interval = f.get_uint_or(p + "full_attention_interval", 4);
  if (!interval.ok()) return interval.status();
  c.full_attention_interval = static_cast<int64_t>(*interval);
  if (c.moe) {
    RS_READ(n_expert, "expert_count");
    RS_READ(n_expert_used, "expert_used_count");
    RS_READ(n_ff_exp, "expert_feed_forward_length");
    RS_READ(n_ff_shexp, "expert_shared_feed_forward_length");
  } else {
    RS_READ(n_ff, "feed_forward_length");
  }
#undef RS_READ

  // Validation (spec §6.3).
  if (c.n_layer <= 0) return Invalid(absl::StrFormat("block_count %d - nextn %d leaves no layers", block_count, *nextn));
  if (c.n_embd <= 0) return Invalid("embedding_length must be > 0");
  if (c.head_dim != value_length)
    return Invalid(absl::StrFormat("attention.key_length %d != value_length %d", c.head_dim, value_length));
  if (c.n_head <= 0 || c.n_head_kv <= 0 || c.n_head % c.n_head_kv != 0)
    return Invalid(absl::StrFormat("head_count %d is not a multiple of head_count_kv %d", c.n_head, c.n_head_kv));
  if (c.rope_dims <= 0 || c.rope_dims > c.head_dim || c.rope_dims % 2)
    return Invalid(absl::StrFormat("rope.dimension_count %d invalid for head dim %d", c.rope_dims, c.head_dim));
  if (c.Hk <= 0 || c.Hv <= 0 || c.Hv % c.Hk != 0)
    return Invalid(absl::StrFormat("ssm.time_step_rank (Hv) %d is not a multiple of ssm.group_count (Hk) %d", c.Hv, c.Hk));
  if (inner % c.Hv != 0)
    return Invalid(absl::StrFormat("ssm.inner_size %d is not a multiple of time_step_rank %d", inner, c.Hv));
  c.dv = inner / c.Hv;
  if (c.conv_kernel < 1 || c.conv_kernel > 16) return Invalid(absl::StrFormat("ssm.conv_kernel %d out of range", c.conv_kernel));
  if (c.full_attention_interval <= 0) return Invalid("full_attention_interval must be > 0");
  if (c.moe && (c.n_expert <= 0 || c.n_expert_used <= 0 || c.n_expert_used > c.n_expert))
    return Invalid(absl::StrFormat("expert_used_count %d invalid for expert_count %d", c.n_expert_used, c.n_expert));

  // Layer kinds: an explicit per-layer array overrides the interval rule.
  c.layers.resize(c.n_layer);
  const gguf::Value* rec = f.find(p + "attention.recurrent_layers");
  for (int64_t i = 0; i < c.n_layer; ++i) {
    bool attn = (i + 1) % c.full_attention_interval == 0;
    if (rec && rec->type == gguf::ValueType::ARRAY && i < static_cast<int64_t>(rec->array.size()))
      attn = !(rec->array[i].u || rec->array[i].i);
    c.layers[i] = attn ? LayerKind::kAttention : LayerKind::kDeltaNet;
  }
  return c;
}

}  // namespace rs
