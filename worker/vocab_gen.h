// A small byte-level BPE vocabulary for the generated models (make-model, --synthetic), laid out
// like the real Qwen3.5 tokenizer (spec §7), only much smaller:
//
//   ids 0..255        the 256 byte tokens, spelled in the GPT-2 byte-to-unicode alphabet and in
//                     the GPT-2 / Qwen order (id 0 = "!", id 198 = "Ċ" = '\n'), so byte-level ids
//                     coincide with the real tokenizer's (e.g. '<' = 27, '|' = 91);   type NORMAL 1
//   next n_merges     one token per merge, learnt by plain BPE (most frequent adjacent pair, ties
//                     broken by the smaller (left, right) pair) over a built-in English + code
//                     text pre-split with an ASCII rendering of the Qwen3.5 pre-tokenizer regex.
//                     Every merge "a b" has its result "ab" in the vocabulary (a merge whose
//                     result already exists adds no token);                           type NORMAL 1
//   next 26           the Qwen3.5 special tokens in the order of spec §7 (<|endoftext|>,
//                     <|im_start|>, <|im_end|>, ..., <think>, </think>);              type CONTROL 3
//   up to vocab_size  "[PAD<id>]";                                                     type UNUSED 5
//
// bos = <|endoftext|>, eos = <|im_end|>, padding = <|vision_pad|> (as in the real file).
// Deterministic: no seed, the same vocabulary for every model of the same vocab_size / n_merges.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace rs {

enum TokenType : int32_t {
  kTokenNormal = 1,
  kTokenControl = 3,
  kTokenUserDefined = 4,
  kTokenUnused = 5,
};

struct GeneratedVocab {
  std::vector<std::string> tokens;  // UTF-8, byte-to-unicode spelled
  std::vector<int32_t> types;       // TokenType per token
  std::vector<std::string> merges;  // "left right", rank = index
  int32_t bos_id = -1;              // <|endoftext|>
  int32_t eos_id = -1;              // <|im_end|>
  int32_t pad_id = -1;              // <|vision_pad|>
  int32_t first_special = -1;       // id of the first special token
};

// The 26 Qwen3.5 special tokens, in id order (spec §7: 248044 .. 248069 in the real file).
const std::vector<std::string>& Qwen35SpecialTokens();

// GPT-2 byte-to-unicode: the UTF-8 spelling of byte b in token text.
std::string ByteToUnicode(uint8_t b);
// The 256 bytes in GPT-2 vocabulary order (printable ranges first, then the rest).
const std::vector<uint8_t>& ByteTokenOrder();

inline constexpr int kDefaultMerges = 330;

// Builds the vocabulary padded to `vocab_size`; InvalidArgument if 256 + merges + 26 specials do
// not fit (names the sizes). Fewer than n_merges merges are learnt only if the built-in text
// runs out of pairs seen twice (it does not for n_merges <= kDefaultMerges).
absl::StatusOr<GeneratedVocab> GenerateVocab(int64_t vocab_size, int n_merges = kDefaultMerges);

// Splits ASCII-ish text into pre-tokens the way the Qwen3.5 regex does for ASCII input (the
// contractions, optional-prefix letter runs, single digits, punctuation runs with a leading
// space, newline and whitespace runs). Exposed for tests.
std::vector<std::string> PreSplitAscii(const std::string& text);

}  // namespace rs
