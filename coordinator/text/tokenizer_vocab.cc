#include "coordinator/text/tokenizer_vocab.h"

#include <algorithm>
#include <climits>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "coordinator/text/json.h"

namespace rs::text {

using json::Json;

absl::StatusOr<std::pair<std::string, std::string>> SplitMerge(std::string_view merge) {
  size_t sp = merge.size() > 1 ? merge.find(' ', 1) : std::string_view::npos;
  if (sp == std::string_view::npos || sp + 1 >= merge.size()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("merge '%s' is not of the form 'left right'", std::string(merge)));
  }
  return std::make_pair(std::string(merge.substr(0, sp)), std::string(merge.substr(sp + 1)));
}

absl::StatusOr<VocabData> VocabFromMetadata(const MetadataSource& md) {
  VocabData v;
  auto model = md.GetString("tokenizer.ggml.model");
  if (!model.ok()) return model.status();
  v.model = *model;
  auto pre = md.GetString("tokenizer.ggml.pre");
  if (!pre.ok()) {
    if (absl::IsNotFound(pre.status()))
      return absl::InvalidArgumentError(
          "tokenizer.ggml.pre is missing: cannot tell which pre-tokenizer the model needs");
    return pre.status();
  }
  v.pre = *pre;
  auto tokens = md.GetStringArray("tokenizer.ggml.tokens");
  if (!tokens.ok()) return tokens.status();
  v.tokens = *std::move(tokens);
  auto types = md.GetIntArray("tokenizer.ggml.token_type");
  if (types.ok()) {
    if (types->size() != v.tokens.size()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("tokenizer.ggml.token_type has %d entries but tokenizer.ggml.tokens %d",
                          types->size(), v.tokens.size()));
    }
    v.token_types.reserve(types->size());
    for (int64_t t : *types) v.token_types.push_back(static_cast<int32_t>(t));
  } else if (!absl::IsNotFound(types.status())) {
    return types.status();
  }
  auto merges = md.GetStringArray("tokenizer.ggml.merges");
  if (!merges.ok()) return merges.status();
  v.merges.reserve(merges->size());
  for (size_t r = 0; r < merges->size(); ++r) {
    auto m = SplitMerge((*merges)[r]);
    if (!m.ok()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("tokenizer.ggml.merges[%d]: %s", r, m.status().message()));
    }
    v.merges.push_back(*std::move(m));
  }
  auto opt_int = [&](const char* key, int64_t* dst) -> absl::Status {
    auto x = md.GetInt(key);
    if (x.ok()) {
      if (*x < 0 || *x >= static_cast<int64_t>(v.tokens.size())) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "%s = %d is outside the vocabulary of %d tokens", key, *x, v.tokens.size()));
      }
      *dst = *x;
    } else if (!absl::IsNotFound(x.status())) {
      return x.status();
    }
    return absl::OkStatus();
  };
  if (auto s = opt_int("tokenizer.ggml.bos_token_id", &v.bos_id); !s.ok()) return s;
  if (auto s = opt_int("tokenizer.ggml.eos_token_id", &v.eos_id); !s.ok()) return s;
  if (auto s = opt_int("tokenizer.ggml.padding_token_id", &v.pad_id); !s.ok()) return s;
  auto add_bos = md.GetBool("tokenizer.ggml.add_bos_token");
  if (add_bos.ok()) {
    v.add_bos = *add_bos;
  } else if (!absl::IsNotFound(add_bos.status())) {
    return add_bos.status();
  }
  return v;
}

namespace {

std::string Describe(const Json& j) {
  std::string s = json::DumpCompact(j);
  if (s.size() > 200) s = s.substr(0, 200) + "...";
  return s;
}

absl::Status Unsupported(std::string_view what, const Json& j) {
  return absl::UnimplementedError(
      absl::StrFormat("tokenizer.json: unsupported %s: %s", std::string(what), Describe(j)));
}

bool FlagIs(const Json& obj, std::string_view key, bool want) {
  const Json* f = obj.find(key);
  if (f == nullptr || f->is_null()) return !want;  // absent counts as false
  return f->is_bool() && f->as_bool() == want;
}

const std::string* TypeOf(const Json& obj) {
  const Json* t = obj.find("type");
  return t && t->is_string() ? &t->as_string() : nullptr;
}

// Sets v->pre_regex from the pre_tokenizer section.
absl::Status ReadPreTokenizer(const Json& pt, VocabData* v) {
  std::vector<const Json*> steps;
  const std::string* type = TypeOf(pt);
  if (type == nullptr) return Unsupported("pre_tokenizer", pt);
  if (*type == "Sequence") {
    const Json* list = pt.find("pretokenizers");
    if (!list || !list->is_array()) return Unsupported("pre_tokenizer", pt);
    for (const Json& s : list->as_array()) steps.push_back(&s);
  } else {
    steps.push_back(&pt);
  }
  bool have_bytelevel = false;
  for (const Json* s : steps) {
    const std::string* st = TypeOf(*s);
    if (st == nullptr) return Unsupported("pre_tokenizer step", *s);
    if (*st == "Split") {
      const Json* pat = s->find("pattern");
      const Json* re = pat ? pat->find("Regex") : nullptr;
      const Json* behavior = s->find("behavior");
      if (!re || !re->is_string() || !behavior || !behavior->is_string() ||
          behavior->as_string() != "Isolated" || !FlagIs(*s, "invert", false) ||
          !v->pre_regex.empty() || have_bytelevel) {
        return Unsupported("Split pre-tokenizer (need one Regex, behavior Isolated, no invert, "
                           "before ByteLevel)",
                           *s);
      }
      v->pre_regex = re->as_string();
    } else if (*st == "ByteLevel") {
      if (!FlagIs(*s, "add_prefix_space", false))
        return Unsupported("ByteLevel pre-tokenizer with add_prefix_space", *s);
      const Json* use_regex = s->find("use_regex");
      bool uses = use_regex == nullptr || (use_regex->is_bool() && use_regex->as_bool());
      if (uses) {
        if (!v->pre_regex.empty())
          return Unsupported("ByteLevel with its own regex after a Split", *s);
        v->pre_regex = std::string(kGpt2Regex);
      }
      have_bytelevel = true;
    } else {
      return Unsupported("pre-tokenizer step", *s);
    }
  }
  if (!have_bytelevel) return Unsupported("pre_tokenizer without a ByteLevel step", pt);
  if (v->pre_regex.empty()) return Unsupported("pre_tokenizer without a regex split", pt);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<VocabData> VocabFromTokenizerJson(std::string_view json_text) {
  auto parsed = json::Parse(json_text);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("tokenizer.json: %s", parsed.status().message()));
  }
  const Json& root = *parsed;
  if (!root.is_object()) return absl::InvalidArgumentError("tokenizer.json: not a JSON object");
  VocabData v;
  v.model = "gpt2";

  // Model.
  const Json* model = root.find("model");
  if (!model || !model->is_object()) return absl::InvalidArgumentError("tokenizer.json: no model");
  const std::string* mtype = TypeOf(*model);
  if (!mtype || *mtype != "BPE") {
    const Json* t = model->find("type");
    return Unsupported("model type (only BPE)", t ? *t : Json());
  }
  if (!FlagIs(*model, "byte_fallback", false)) return Unsupported("BPE byte_fallback", *model->find("byte_fallback"));
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const Json* x = model->find(key);
    if (x && !x->is_null() && !(x->is_string() && x->as_string().empty()))
      return Unsupported(std::string("BPE ") + key, *x);
  }
  if (const Json* dr = model->find("dropout"); dr && !dr->is_null())
    return Unsupported("BPE dropout", *dr);
  v.ignore_merges = FlagIs(*model, "ignore_merges", true);

  const Json* vocab = model->find("vocab");
  if (!vocab || !vocab->is_object()) return absl::InvalidArgumentError("tokenizer.json: model.vocab is not an object");
  // Ids may be sparse; size the table by the largest id over vocab and added tokens.
  int64_t max_id = -1;
  for (const auto& [tok, id] : vocab->items()) {
    if (!id.is_int() || id.as_int() < 0 || id.as_int() > INT32_MAX) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "tokenizer.json: model.vocab['%s'] = %s is not a valid id", tok, Describe(id)));
    }
    max_id = std::max<int64_t>(max_id, id.as_int());
  }
  const Json* added = root.find("added_tokens");
  if (added && !added->is_null() && !added->is_array())
    return absl::InvalidArgumentError("tokenizer.json: added_tokens is not an array");
  if (added && added->is_array()) {
    for (const Json& a : added->as_array()) {
      const Json* id = a.find("id");
      const Json* content = a.find("content");
      if (!id || !id->is_int() || id->as_int() < 0 || id->as_int() > INT32_MAX || !content ||
          !content->is_string()) {
        return absl::InvalidArgumentError(
            absl::StrFormat("tokenizer.json: bad added token %s", Describe(a)));
      }
      max_id = std::max<int64_t>(max_id, id->as_int());
    }
  }
  if (max_id < 0) return absl::InvalidArgumentError("tokenizer.json: empty vocabulary");
  v.tokens.assign(static_cast<size_t>(max_id) + 1, std::string());
  v.token_types.assign(static_cast<size_t>(max_id) + 1, static_cast<int32_t>(TokenType::kUnused));
  for (const auto& [tok, id] : vocab->items()) {
    v.tokens[id.as_int()] = tok;
    v.token_types[id.as_int()] = static_cast<int32_t>(TokenType::kNormal);
  }
  if (added && added->is_array()) {
    for (const Json& a : added->as_array()) {
      int64_t id = a.find("id")->as_int();
      v.tokens[id] = a.find("content")->as_string();
      bool special = FlagIs(a, "special", true);
      v.token_types[id] =
          static_cast<int32_t>(special ? TokenType::kControl : TokenType::kUserDefined);
      if (FlagIs(a, "single_word", true))
        return Unsupported("added token with single_word", a);
      AddedTokenFlags f{static_cast<int32_t>(id), FlagIs(a, "lstrip", true),
                        FlagIs(a, "rstrip", true)};
      if (f.lstrip || f.rstrip) v.added_token_flags.push_back(f);
    }
  }
  // Unused (gap) ids get a unique placeholder so that they never match any text.
  for (size_t id = 0; id < v.tokens.size(); ++id) {
    if (v.token_types[id] == static_cast<int32_t>(TokenType::kUnused))
      v.tokens[id] = absl::StrFormat("[UNUSED_ID_%d]", id);
  }

  const Json* merges = model->find("merges");
  if (!merges || !merges->is_array())
    return absl::InvalidArgumentError("tokenizer.json: model.merges is not an array");
  v.merges.reserve(merges->size());
  for (size_t r = 0; r < merges->size(); ++r) {
    const Json& m = merges->as_array()[r];
    if (m.is_string()) {
      auto p = SplitMerge(m.as_string());
      if (!p.ok()) {
        return absl::InvalidArgumentError(
            absl::StrFormat("tokenizer.json: model.merges[%d]: %s", r, p.status().message()));
      }
      v.merges.push_back(*std::move(p));
    } else if (m.is_array() && m.size() == 2 && m.as_array()[0].is_string() &&
               m.as_array()[1].is_string()) {
      v.merges.emplace_back(m.as_array()[0].as_string(), m.as_array()[1].as_string());
    } else {
      return absl::InvalidArgumentError(absl::StrFormat(
          "tokenizer.json: model.merges[%d] = %s is neither \"a b\" nor [a, b]", r, Describe(m)));
    }
  }

  // Normalizer.
  const Json* norm = root.find("normalizer");
  v.normalize_nfc = false;
  if (norm && !norm->is_null()) {
    const std::string* nt = TypeOf(*norm);
    if (nt && *nt == "NFC") {
      v.normalize_nfc = true;
    } else if (nt && *nt == "Sequence" && norm->find("normalizers") &&
               norm->find("normalizers")->is_array() &&
               norm->find("normalizers")->size() == 0) {
      // empty sequence: nothing to do
    } else {
      return Unsupported("normalizer", *norm);
    }
  }

  // Pre-tokenizer.
  const Json* pt = root.find("pre_tokenizer");
  if (!pt || pt->is_null()) return absl::UnimplementedError("tokenizer.json: no pre_tokenizer");
  if (auto s = ReadPreTokenizer(*pt, &v); !s.ok()) return s;
  if (v.pre_regex == kQwen2Regex) {
    v.pre = "qwen2";
  } else if (v.pre_regex == kQwen35Regex) {
    v.pre = "qwen35";
  } else {
    v.pre = "custom";
  }

  // Decoder.
  const Json* dec = root.find("decoder");
  if (dec && !dec->is_null()) {
    const std::string* dt = TypeOf(*dec);
    if (!dt || *dt != "ByteLevel") return Unsupported("decoder", *dec);
  }
  return v;
}

}  // namespace rs::text
