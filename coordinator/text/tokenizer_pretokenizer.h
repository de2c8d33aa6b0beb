// The regex pre-tokenizer of byte-level BPE: splits text into pieces that BPE treats
// independently. Semantics of Hugging Face's Split pre-tokenizer with behavior "Isolated":
// every regex match is a piece and so is every non-empty stretch between matches.
//
// The regex runs in PCRE2 with UTF and UCP (so \s, \w, \d and [[:classes:]] use Unicode
// properties, \p{L}/\p{N}/\p{M} are Unicode categories) and JIT when available.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace rs::text {

// Qwen2 / Qwen2.5 / Qwen3 (tokenizer.json Split pattern; llama.cpp "qwen2").
inline constexpr std::string_view kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// Qwen3.5: combining marks (\p{M}) stay inside words and out of punctuation runs
// (../shared/spec/qwen35.md §7; llama.cpp "qwen35").
inline constexpr std::string_view kQwen35Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// GPT-2's ByteLevel pre-tokenizer regex (use_regex = true).
inline constexpr std::string_view kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class PreTokenizer {
 public:
  // InvalidArgument naming the offset and PCRE2's message when the pattern does not compile.
  static absl::StatusOr<std::unique_ptr<PreTokenizer>> Create(std::string_view regex);
  ~PreTokenizer();

  // Appends the pieces of `text` (valid UTF-8) to `pieces`; they are views into `text` and
  // concatenate back to it. Thread-safe.
  void Split(std::string_view text, std::vector<std::string_view>* pieces) const;

  const std::string& pattern() const { return pattern_; }

 private:
  PreTokenizer() = default;
  std::string pattern_;
  void* code_ = nullptr;  // pcre2_code_8*
  bool jit_ = false;
};

}  // namespace rs::text
