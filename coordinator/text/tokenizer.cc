#include "coordinator/text/tokenizer.h"

#include <algorithm>
#include <climits>
#include <functional>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "coordinator/text/tokenizer_vocab.h"
#include "coordinator/text/unicode_util.h"

namespace rs::text {

namespace {

constexpr size_t kMaxCachedPiece = 8192;       // bytes
constexpr size_t kMaxCacheBytes = 64u << 20;   // keys + ids, roughly; cleared when exceeded
constexpr size_t kSmallBpe = 64;           // symbols; above this the heap version runs

absl::string_view AV(std::string_view s) { return absl::string_view(s.data(), s.size()); }

bool IsAsciiSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

std::string Printable(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7F) {
      out += absl::StrFormat("\\x%02x", c);
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromTokenizerJson(std::string_view json) {
  auto v = VocabFromTokenizerJson(json);
  if (!v.ok()) return v.status();
  return FromVocab(*std::move(v));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromVocab(VocabData v) {
  if (v.model != "gpt2") {
    return absl::UnimplementedError(absl::StrFormat(
        "tokenizer model '%s' is not supported (only byte-level BPE, 'gpt2')", v.model));
  }
  const size_t n = v.tokens.size();
  if (n == 0) return absl::InvalidArgumentError("tokenizer vocabulary is empty");
  if (n > static_cast<size_t>(INT32_MAX))
    return absl::InvalidArgumentError(absl::StrFormat("vocabulary too large: %d tokens", n));
  if (!v.token_types.empty() && v.token_types.size() != n) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "tokenizer has %d tokens but %d token types", n, v.token_types.size()));
  }

  std::unique_ptr<Tokenizer> t(new Tokenizer());
  t->model_ = v.model;
  t->nfc_ = v.normalize_nfc;
  t->ignore_merges_ = v.ignore_merges;
  t->bos_id_ = v.bos_id;
  t->eos_id_ = v.eos_id;
  t->pad_id_ = v.pad_id;
  t->add_bos_ = v.add_bos;

  // Pre-tokenizer.
  std::string regex = v.pre_regex;
  t->pre_ = v.pre;
  if (regex.empty()) {
    if (v.pre == "qwen35") {
      regex = std::string(kQwen35Regex);
    } else if (v.pre == "qwen2") {
      regex = std::string(kQwen2Regex);
    } else {
      return absl::UnimplementedError(absl::StrFormat(
          "pre-tokenizer '%s' is not supported (supported: qwen35, qwen2, or an explicit regex)",
          v.pre));
    }
  }
  auto pt = PreTokenizer::Create(regex);
  if (!pt.ok()) return pt.status();
  t->pretok_ = *std::move(pt);

  // Tokens.
  t->types_.resize(n, TokenType::kNormal);
  t->bytes_.resize(n);
  t->token_to_id_.reserve(n);
  for (size_t id = 0; id < n; ++id) {
    if (!v.token_types.empty()) {
      int32_t ty = v.token_types[id];
      if (ty < 0 || ty > 6) {
        return absl::InvalidArgumentError(
            absl::StrFormat("token %d ('%s') has invalid token type %d (valid 0..6)", id,
                            Printable(v.tokens[id]), ty));
      }
      t->types_[id] = static_cast<TokenType>(ty);
    }
    const std::string& s = v.tokens[id];
    if (!IsValidUtf8(s)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("token %d is not valid UTF-8 ('%s')", id, Printable(s)));
    }
    TokenType ty = t->types_[id];
    bool added = ty == TokenType::kControl || ty == TokenType::kUserDefined ||
                 ty == TokenType::kUnused;
    if (added || !UnicodeToBytes(s, &t->bytes_[id])) t->bytes_[id] = s;
    t->token_to_id_.emplace(s, static_cast<int32_t>(id));  // first id wins on duplicates
  }
  t->tokens_ = std::move(v.tokens);

  // Byte tokens: every byte must have its single-character token.
  const ByteUnicodeMap& bm = GetByteUnicodeMap();
  for (int b = 0; b < 256; ++b) {
    auto it = t->token_to_id_.find(AV(bm.byte_to_utf8[b]));
    if (it == t->token_to_id_.end()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "byte-level vocabulary lacks the token for byte 0x%02x (spelled U+%04X)", b,
          bm.byte_to_cp[b]));
    }
    t->byte_token_[b] = it->second;
  }

  // Merges: rank = index; a later duplicate of a pair replaces the earlier (as HF does).
  t->merges_.reserve(v.merges.size());
  std::string joined;
  for (size_t r = 0; r < v.merges.size(); ++r) {
    const auto& [a, b] = v.merges[r];
    auto ia = t->token_to_id_.find(AV(a));
    auto ib = t->token_to_id_.find(AV(b));
    joined.assign(a).append(b);
    auto im = t->token_to_id_.find(AV(joined));
    if (ia == t->token_to_id_.end() || ib == t->token_to_id_.end() ||
        im == t->token_to_id_.end()) {
      const std::string& missing = ia == t->token_to_id_.end()   ? a
                                   : ib == t->token_to_id_.end() ? b
                                                                 : joined;
      return absl::InvalidArgumentError(absl::StrFormat(
          "merge %d ('%s' '%s'): token '%s' is not in the vocabulary", r, Printable(a),
          Printable(b), Printable(missing)));
    }
    t->merges_[PairKey(ia->second, ib->second)] =
        Merge{static_cast<int32_t>(r), im->second};
  }

  // Added tokens matched before BPE.
  absl::flat_hash_map<int32_t, AddedTokenFlags> flags;
  for (const auto& f : v.added_token_flags) {
    if (f.id < 0 || static_cast<size_t>(f.id) >= n) {
      return absl::InvalidArgumentError(
          absl::StrFormat("added-token flags for id %d outside the vocabulary of %d", f.id, n));
    }
    flags[f.id] = f;
  }
  for (size_t id = 0; id < n; ++id) {
    TokenType ty = t->types_[id];
    if ((ty != TokenType::kControl && ty != TokenType::kUserDefined) || t->tokens_[id].empty())
      continue;
    Special sp{t->tokens_[id], static_cast<int32_t>(id), ty == TokenType::kControl, false, false};
    if (auto it = flags.find(static_cast<int32_t>(id)); it != flags.end()) {
      sp.lstrip = it->second.lstrip;
      sp.rstrip = it->second.rstrip;
    }
    t->specials_.push_back(std::move(sp));
  }
  t->special_by_byte_.assign(256, {});
  for (uint32_t i = 0; i < t->specials_.size(); ++i)
    t->special_by_byte_[static_cast<unsigned char>(t->specials_[i].text[0])].push_back(i);
  for (auto& bucket : t->special_by_byte_) {
    std::stable_sort(bucket.begin(), bucket.end(), [&](uint32_t x, uint32_t y) {
      return t->specials_[x].text.size() > t->specials_[y].text.size();
    });
  }
  return t;
}

std::optional<int32_t> Tokenizer::TokenId(std::string_view spelled) const {
  auto it = token_to_id_.find(AV(spelled));
  if (it == token_to_id_.end()) return std::nullopt;
  return it->second;
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text, const EncodeOptions& opts) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  EncodeAppend(text, opts, &out);
  return out;
}

void Tokenizer::EncodeAppend(std::string_view text, const EncodeOptions& opts,
                             std::vector<int32_t>* out) const {
  std::string sanitized;
  if (!IsValidUtf8(text)) {
    sanitized = SanitizeUtf8(text);
    text = sanitized;
  }
  if (specials_.empty() || (!opts.parse_special && !opts.parse_user_defined)) {
    EncodeSegment(text, out);
    return;
  }
  // Cut out added tokens (leftmost, then longest), encoding the text between them.
  size_t seg_start = 0, i = 0;
  bool strip_next_leading = false;  // the previous added token has rstrip
  auto flush_text = [&](size_t end, bool strip_trailing) {
    std::string_view seg = text.substr(seg_start, end - seg_start);
    if (strip_next_leading)
      while (!seg.empty() && IsAsciiSpace(seg.front())) seg.remove_prefix(1);
    if (strip_trailing)
      while (!seg.empty() && IsAsciiSpace(seg.back())) seg.remove_suffix(1);
    if (!seg.empty()) EncodeSegment(seg, out);
  };
  while (i < text.size()) {
    const auto& bucket = special_by_byte_[static_cast<unsigned char>(text[i])];
    const Special* hit = nullptr;
    for (uint32_t idx : bucket) {
      const Special& sp = specials_[idx];
      if (sp.control ? !opts.parse_special : !opts.parse_user_defined) continue;
      if (text.compare(i, sp.text.size(), sp.text) == 0) {
        hit = &sp;
        break;
      }
    }
    if (hit == nullptr) {
      ++i;
      continue;
    }
    flush_text(i, hit->lstrip);
    out->push_back(hit->id);
    i += hit->text.size();
    seg_start = i;
    strip_next_leading = hit->rstrip;
  }
  flush_text(text.size(), false);
}

void Tokenizer::EncodeSegment(std::string_view text, std::vector<int32_t>* out) const {
  std::string normalized;
  if (nfc_ && MayNeedNfc(text)) {
    normalized = NfcNormalize(text);
    text = normalized;
  }
  thread_local std::vector<std::string_view> pieces;
  pieces.clear();
  pretok_->Split(text, &pieces);
  // EncodePiece does not re-enter EncodeSegment, so the thread-local vector is safe.
  for (std::string_view p : pieces) EncodePiece(p, out);
}

void Tokenizer::EncodePiece(std::string_view piece, std::vector<int32_t>* out) const {
  if (piece.size() == 1) {
    out->push_back(byte_token_[static_cast<unsigned char>(piece[0])]);
    return;
  }
  const bool cacheable = piece.size() <= kMaxCachedPiece;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mu_);
    auto it = cache_.find(AV(piece));
    if (it != cache_.end()) {
      out->insert(out->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  size_t before = out->size();
  BpePiece(piece, out);
  if (cacheable) {
    std::vector<int32_t> ids(out->begin() + before, out->end());
    std::lock_guard<std::mutex> lock(cache_mu_);
    size_t cost = piece.size() + ids.size() * sizeof(int32_t) + 64;
    if (cache_bytes_ + cost > kMaxCacheBytes) {
      cache_.clear();
      cache_bytes_ = 0;
    }
    if (cache_.emplace(std::string(piece), std::move(ids)).second) cache_bytes_ += cost;
  }
}

void Tokenizer::BpePiece(std::string_view bytes, std::vector<int32_t>* out) const {
  if (bytes.empty()) return;
  if (ignore_merges_) {
    auto it = token_to_id_.find(AV(BytesToUnicode(bytes)));
    if (it != token_to_id_.end()) {
      out->push_back(it->second);
      return;
    }
  }
  thread_local std::vector<int32_t> syms;
  syms.resize(bytes.size());
  for (size_t i = 0; i < bytes.size(); ++i)
    syms[i] = byte_token_[static_cast<unsigned char>(bytes[i])];
  if (syms.size() <= kSmallBpe) {
    BpeSmall(&syms);
  } else {
    BpeHeap(&syms);
  }
  out->insert(out->end(), syms.begin(), syms.end());
}

// O(n^2) but allocation-free: the rank of each adjacent pair is kept and only the neighbours
// of a merge are looked up again.
void Tokenizer::BpeSmall(std::vector<int32_t>* syms_ptr) const {
  std::vector<int32_t>& s = *syms_ptr;
  int32_t rank[kSmallBpe];
  int32_t merged[kSmallBpe];
  size_t n = s.size();
  auto look = [&](size_t i) {
    const Merge* m = FindMerge(s[i], s[i + 1]);
    rank[i] = m ? m->rank : INT32_MAX;
    merged[i] = m ? m->id : -1;
  };
  for (size_t i = 0; i + 1 < n; ++i) look(i);
  while (n > 1) {
    size_t best = 0;
    for (size_t i = 1; i + 1 < n; ++i)
      if (rank[i] < rank[best]) best = i;  // strict: leftmost wins ties
    if (rank[best] == INT32_MAX) break;
    s[best] = merged[best];
    // Remove symbol best+1 and pair slot best+1.
    for (size_t i = best + 1; i + 1 < n; ++i) {
      s[i] = s[i + 1];
      if (i + 1 < n - 1) {
        rank[i] = rank[i + 1];
        merged[i] = merged[i + 1];
      }
    }
    --n;
    if (best > 0) look(best - 1);
    if (best + 1 < n) look(best);
  }
  s.resize(n);
}

// Linked list of symbols and a min-heap of candidate merges keyed by (rank, position).
// Stale heap entries are recognised by the symbols they name no longer being adjacent.
void Tokenizer::BpeHeap(std::vector<int32_t>* syms_ptr) const {
  std::vector<int32_t>& s = *syms_ptr;
  const int n = static_cast<int>(s.size());
  thread_local std::vector<int> prev, next;
  thread_local std::vector<char> alive;
  prev.resize(n);
  next.resize(n);
  alive.assign(n, 1);
  for (int i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  struct Cand {
    int32_t rank;
    int pos;
    int32_t left, right, merged;
    bool operator>(const Cand& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  thread_local std::vector<Cand> heap;  // min-heap via std::push_heap/pop_heap with greater
  heap.clear();
  auto push = [&](int i) {
    if (i < 0 || next[i] < 0) return;
    const Merge* m = FindMerge(s[i], s[next[i]]);
    if (m) {
      heap.push_back(Cand{m->rank, i, s[i], s[next[i]], m->id});
      std::push_heap(heap.begin(), heap.end(), std::greater<Cand>());
    }
  };
  for (int i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<Cand>());
    Cand c = heap.back();
    heap.pop_back();
    int i = c.pos;
    if (!alive[i] || s[i] != c.left || next[i] < 0 || s[next[i]] != c.right) continue;
    int j = next[i];
    s[i] = c.merged;
    alive[j] = 0;
    next[i] = next[j];
    if (next[j] >= 0) prev[next[j]] = i;
    push(prev[i]);
    push(i);
  }
  size_t w = 0;
  for (int i = 0; i >= 0 && i < n; i = next[i]) s[w++] = s[i];
  s.resize(w);
}

std::vector<std::string> Tokenizer::PreTokenize(std::string_view text) const {
  std::string buf = IsValidUtf8(text) ? std::string(text) : SanitizeUtf8(text);
  if (nfc_) buf = NfcNormalize(buf);
  std::vector<std::string_view> pieces;
  pretok_->Split(buf, &pieces);
  return std::vector<std::string>(pieces.begin(), pieces.end());
}

absl::StatusOr<std::string> Tokenizer::DecodeBytes(absl::Span<const int32_t> ids,
                                                   bool skip_control) const {
  std::string out;
  for (size_t k = 0; k < ids.size(); ++k) {
    int32_t id = ids[k];
    if (!valid_id(id)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "token id %d at position %d is outside the vocabulary (size %d)", id, k,
          vocab_size()));
    }
    if (skip_control && types_[id] == TokenType::kControl) continue;
    out += bytes_[id];
  }
  return out;
}

absl::StatusOr<std::string> Tokenizer::Decode(absl::Span<const int32_t> ids,
                                              bool skip_control) const {
  auto bytes = DecodeBytes(ids, skip_control);
  if (!bytes.ok()) return bytes.status();
  if (IsValidUtf8(*bytes)) return bytes;
  return SanitizeUtf8(*bytes);
}

absl::StatusOr<std::string> StreamDecoder::Push(int32_t id) {
  if (!tok_->valid_id(id)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "token id %d is outside the vocabulary (size %d)", id, tok_->vocab_size()));
  }
  if (skip_control_ && tok_->token_type(id) == TokenType::kControl) return std::string();
  pending_ += tok_->token_bytes(id);
  std::string out;
  size_t used = AppendSanitizedUtf8(pending_, &out, /*final=*/false);
  pending_.erase(0, used);
  return out;
}

std::string StreamDecoder::Flush() {
  std::string out;
  AppendSanitizedUtf8(pending_, &out, /*final=*/true);
  pending_.clear();
  return out;
}

}  // namespace rs::text
