// Opens the model a subcommand names: a GGUF path (--model) or an in-memory synthetic model
// (--synthetic PRESET:QUANT), with load progress and timing on stderr.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "worker/gguf.h"
#include "worker/model.h"

namespace rs {

// Exactly one of `model_path` and `synthetic` must be non-empty.
absl::StatusOr<std::shared_ptr<const gguf::File>> OpenModelFile(const std::string& model_path,
                                                                const std::string& synthetic,
                                                                uint64_t seed = 1);

// The model options every model-loading subcommand shares, from their flag values:
// --backend reference|cpu|cuda, --threads N (0 = all cores), --kv-type f16|q8_0|f32 ("" = default).
absl::StatusOr<ModelOptions> ModelOptionsFromFlags(const std::string& backend,
                                                   const std::string& threads,
                                                   const std::string& kv_type);

}  // namespace rs
