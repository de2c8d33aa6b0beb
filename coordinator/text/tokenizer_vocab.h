// Filling a VocabData from the two sources a Qwen tokenizer comes in:
//   - GGUF metadata (tokenizer.ggml.*), read through a generic key -> value accessor so that
//     this library never depends on the GGUF reader (the coordinator gets the values from a
//     worker; the CLI adapts worker/gguf.h's File);
//   - a Hugging Face tokenizer.json.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/text/tokenizer.h"

namespace rs::text {

// Read-only view of model metadata. Each getter returns NotFound when the key is absent and
// InvalidArgument (naming the key and the types) when it has another type.
class MetadataSource {
 public:
  virtual ~MetadataSource() = default;
  virtual absl::StatusOr<std::string> GetString(std::string_view key) const = 0;
  virtual absl::StatusOr<int64_t> GetInt(std::string_view key) const = 0;
  virtual absl::StatusOr<bool> GetBool(std::string_view key) const = 0;
  virtual absl::StatusOr<std::vector<std::string>> GetStringArray(std::string_view key) const = 0;
  virtual absl::StatusOr<std::vector<int64_t>> GetIntArray(std::string_view key) const = 0;
};

// tokenizer.ggml.model (must be "gpt2"), .pre, .tokens, .token_type, .merges ("left right"),
// .bos_token_id, .eos_token_id, .padding_token_id, .add_bos_token.
absl::StatusOr<VocabData> VocabFromMetadata(const MetadataSource& md);

// model.vocab, model.merges ("a b" strings or [a, b] pairs), added_tokens (special -> control,
// otherwise user-defined; lstrip/rstrip kept), normalizer (NFC or none), pre_tokenizer (a Split
// with a Regex pattern and behavior Isolated followed by a ByteLevel without its own regex, or
// a ByteLevel with use_regex), decoder (ByteLevel). Anything else is Unimplemented, naming it.
// Added tokens are matched on the raw text whatever their `normalized` flag (all Qwen added
// tokens have normalized = false); lstrip/rstrip absorb ASCII whitespace only.
absl::StatusOr<VocabData> VocabFromTokenizerJson(std::string_view json_text);

// Splits a GGUF merge "left right" at the first space after the first character (a merge's
// left side may itself start with a space in non-byte-level vocabularies).
absl::StatusOr<std::pair<std::string, std::string>> SplitMerge(std::string_view merge);

}  // namespace rs::text
