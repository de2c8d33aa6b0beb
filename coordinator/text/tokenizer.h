// Byte-level BPE tokenizer (GPT-2 style) for the Qwen family. ../shared/spec/qwen35.md §7.
//
// Encode pipeline (the one Hugging Face `tokenizers` runs for Qwen):
//   1. invalid UTF-8 in the input becomes U+FFFD (WHATWG rule, as the peer's TextDecoder does);
//   2. added/special tokens are cut out of the raw text first, longest match at each position
//      (control tokens only when EncodeOptions::parse_special; user-defined tokens always, as
//      in HF and llama.cpp);
//   3. each remaining segment is NFC-normalised (utf8proc) and split by the pre-tokenizer regex
//      (qwen35 or qwen2, PCRE2 with Unicode properties);
//   4. each piece's bytes are mapped to GPT-2's byte alphabet and merged by BPE, lowest merge
//      rank first, leftmost first on ties; results are cached per piece.
// Decode: each id's bytes (normal tokens through the inverse byte map, added tokens as their
// text), concatenated; Decode() replaces invalid UTF-8 with U+FFFD, StreamDecoder does the
// same incrementally and never emits part of a character.
//
// The coordinator never opens a weight file: it gets the vocabulary as a VocabData (from a
// worker's metadata or a tokenizer.json), see tokenizer_vocab.h.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "coordinator/text/tokenizer_pretokenizer.h"

namespace rs::text {

// llama.cpp / GGUF token types (tokenizer.ggml.token_type).
enum class TokenType : int32_t {
  kUndefined = 0,
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,      // special tokens: <|im_start|>, <|endoftext|>, ...
  kUserDefined = 4,  // added tokens that are not special (matched always)
  kUnused = 5,       // padding entries ([PAD151669]...): never produced by Encode
  kByte = 6,
};

// An added token's options from tokenizer.json (whitespace absorption on either side).
struct AddedTokenFlags {
  int32_t id = -1;
  bool lstrip = false;
  bool rstrip = false;
};

// Everything needed to build a Tokenizer, as plain values.
struct VocabData {
  std::string model = "gpt2";   // tokenizer.ggml.model; only "gpt2" (byte-level BPE)
  std::string pre;              // tokenizer.ggml.pre: "qwen35", "qwen2" (or a label)
  std::string pre_regex;        // explicit pre-tokenizer regex; empty: derived from `pre`
  std::vector<std::string> tokens;        // id -> text, byte-to-unicode spelled
  std::vector<int32_t> token_types;       // id -> TokenType; empty = all normal
  std::vector<std::pair<std::string, std::string>> merges;  // rank = index
  std::vector<AddedTokenFlags> added_token_flags;           // only tokens with a flag set
  int64_t bos_id = -1;
  int64_t eos_id = -1;
  int64_t pad_id = -1;
  bool add_bos = false;
  bool normalize_nfc = true;   // HF Qwen normalizer is NFC
  bool ignore_merges = false;  // HF BPE option: a piece that is itself a token is not merged
};

struct EncodeOptions {
  // Parse control tokens (<|im_start|>, ...) in the text. False for user-provided content so
  // that "<|im_start|>" typed by a user is tokenised literally (prompt-injection safety).
  bool parse_special = true;
  // Match user-defined added tokens (type 4; in Qwen3's tokenizer.json <tool_call>, <think>,
  // ...). HF and llama.cpp always do; false tokenises them literally too, for callers that
  // want user text to never produce any added token.
  bool parse_user_defined = true;
};

class Tokenizer {
 public:
  // Validates and indexes the vocabulary. Errors name the offending entry.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromVocab(VocabData v);
  // Parses a Hugging Face tokenizer.json (see VocabFromTokenizerJson).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromTokenizerJson(std::string_view json);

  // Thread-safe.
  std::vector<int32_t> Encode(std::string_view text, const EncodeOptions& opts = {}) const;
  void EncodeAppend(std::string_view text, const EncodeOptions& opts,
                    std::vector<int32_t>* out) const;

  // The raw bytes of the ids (possibly invalid or partial UTF-8). skip_control drops control
  // tokens (HF's skip_special_tokens). InvalidArgument for an id outside the vocabulary.
  absl::StatusOr<std::string> DecodeBytes(absl::Span<const int32_t> ids,
                                          bool skip_control = false) const;
  // Text: DecodeBytes with invalid UTF-8 replaced by U+FFFD.
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids,
                                     bool skip_control = false) const;

  // Pre-tokenizer pieces of `text` (after UTF-8 sanitising and NFC), for tests and tools.
  std::vector<std::string> PreTokenize(std::string_view text) const;

  int32_t vocab_size() const { return static_cast<int32_t>(tokens_.size()); }
  bool valid_id(int64_t id) const { return id >= 0 && id < vocab_size(); }
  const std::string& token_text(int32_t id) const { return tokens_[id]; }   // as spelled
  const std::string& token_bytes(int32_t id) const { return bytes_[id]; }  // decoded bytes
  TokenType token_type(int32_t id) const { return types_[id]; }
  // Id of a token by its spelled text (normal or added), if any.
  std::optional<int32_t> TokenId(std::string_view spelled) const;

  const std::string& model() const { return model_; }
  const std::string& pre() const { return pre_; }
  const std::string& pre_regex() const { return pretok_->pattern(); }
  int64_t bos_id() const { return bos_id_; }
  int64_t eos_id() const { return eos_id_; }
  int64_t pad_id() const { return pad_id_; }
  bool add_bos() const { return add_bos_; }
  size_t num_merges() const { return merges_.size(); }

  // BPE of one piece of raw bytes (no pre-tokenisation, no cache), exposed for tests.
  void BpePiece(std::string_view bytes, std::vector<int32_t>* out) const;

 private:
  Tokenizer() = default;
  struct Merge {
    int32_t rank;
    int32_t id;  // the merged token
  };
  static uint64_t PairKey(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  const Merge* FindMerge(int32_t a, int32_t b) const {
    auto it = merges_.find(PairKey(a, b));
    return it == merges_.end() ? nullptr : &it->second;
  }
  void EncodeSegment(std::string_view text, std::vector<int32_t>* out) const;
  void EncodePiece(std::string_view piece, std::vector<int32_t>* out) const;
  void BpeSmall(std::vector<int32_t>* syms) const;
  void BpeHeap(std::vector<int32_t>* syms) const;

  std::string model_, pre_;
  std::vector<std::string> tokens_;
  std::vector<std::string> bytes_;
  std::vector<TokenType> types_;
  absl::flat_hash_map<std::string, int32_t> token_to_id_;
  absl::flat_hash_map<uint64_t, Merge> merges_;
  int32_t byte_token_[256] = {};
  std::unique_ptr<PreTokenizer> pretok_;
  bool nfc_ = true;
  bool ignore_merges_ = false;
  int64_t bos_id_ = -1, eos_id_ = -1, pad_id_ = -1;
  bool add_bos_ = false;

  // Added tokens matched before BPE, bucketed by first byte, longest first.
  struct Special {
    std::string text;
    int32_t id;
    bool control;
    bool lstrip, rstrip;
  };
  std::vector<Special> specials_;
  std::vector<std::vector<uint32_t>> special_by_byte_;  // 256 buckets of indices

  // Piece -> ids cache (pieces up to 8 KiB; emptied when it holds about 64 MiB).
  mutable std::mutex cache_mu_;
  mutable absl::flat_hash_map<std::string, std::vector<int32_t>> cache_;
  mutable size_t cache_bytes_ = 0;
};

// Incremental detokenisation for streaming output: Push returns only complete characters;
// a partial UTF-8 sequence is held until the next token completes it; invalid bytes become
// U+FFFD as soon as they are known to be invalid. The concatenation of all Push results and
// Flush equals Tokenizer::Decode of all ids.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer* tok, bool skip_control = false)
      : tok_(tok), skip_control_(skip_control) {}
  absl::StatusOr<std::string> Push(int32_t id);
  // End of stream: an incomplete trailing sequence becomes U+FFFD.
  std::string Flush();
  size_t pending_bytes() const { return pending_.size(); }

 private:
  const Tokenizer* tok_;
  bool skip_control_;
  std::string pending_;
};

}  // namespace rs::text
