#include "worker/model_loader.h"

#include <chrono>
#include <cstdio>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#if __has_include("worker/synthetic.h")
#include "worker/synthetic.h"
#define RS_HAVE_SYNTHETIC 1
#endif

namespace rs {

absl::StatusOr<std::shared_ptr<const gguf::File>> OpenModelFile(const std::string& model_path,
                                                                const std::string& synthetic,
                                                                uint64_t seed) {
  if (model_path.empty() == synthetic.empty())
    return absl::InvalidArgumentError("give exactly one of --model FILE and --synthetic PRESET:QUANT");
  const auto t0 = std::chrono::steady_clock::now();
  std::shared_ptr<const gguf::File> f;
  if (!model_path.empty()) {
    auto r = gguf::File::Open(model_path);
    if (!r.ok()) return r.status();
    f = std::move(*r);
  } else {
#ifdef RS_HAVE_SYNTHETIC
    auto r = MakeSyntheticModel(synthetic, seed);
    if (!r.ok()) return r.status();
    f = std::move(*r);
#else
    (void)seed;
    return absl::UnimplementedError("--synthetic is not available in this build");
#endif
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::fprintf(stderr, "rigserve: opened %s: %zu tensors, %.1f MiB of weights in %.2f s\n",
               model_path.empty() ? ("synthetic " + synthetic).c_str() : model_path.c_str(),
               f->tensors().size(), f->data_size() / 1048576.0, s);
  return f;
}

absl::StatusOr<ModelOptions> ModelOptionsFromFlags(const std::string& backend,
                                                   const std::string& threads,
                                                   const std::string& kv_type) {
  ModelOptions o;
  auto b = ParseBackend(backend);
  if (!b.ok()) return b.status();
  o.backend = *b;
  int n = 0;
  if (!absl::SimpleAtoi(threads, &n) || n < 0)
    return absl::InvalidArgumentError("--threads must be a non-negative integer, got '" + threads + "'");
  o.n_threads = n;
  if (kv_type == "f16") o.kv_type = GgmlType::F16;
  else if (kv_type == "q8_0") o.kv_type = GgmlType::Q8_0;
  else if (kv_type == "f32") o.kv_type = GgmlType::F32;
  else if (!kv_type.empty())
    return absl::InvalidArgumentError("--kv-type must be f16, q8_0 or f32, got '" + kv_type + "'");
  return o;
}

}  // namespace rs
