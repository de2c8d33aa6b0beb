#include "worker/synthetic.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <numeric>
#include <tuple>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace rs {
namespace {

uint64_t RoundUp(uint64_t x, uint64_t m) { return (x + m - 1) / m * m; }

absl::Status Errno(const std::string& what) {
  return absl::ResourceExhaustedError(absl::StrCat(what, ": ", std::strerror(errno)));
}

// Owns the data section: the reserved range (all mappings inside it) and the pools' memfds.
struct Storage {
  uint8_t* base = nullptr;
  size_t len = 0;
  std::vector<int> fds;
  ~Storage() {
    if (base) munmap(base, len);
    for (int fd : fds) close(fd);
  }
};

struct Pool {
  int fd = -1;
  uint64_t size = 0;
};

using PoolKey = std::tuple<uint32_t, int, uint32_t>;  // type, init, bits of scale

PoolKey KeyOf(const TensorPlan& t) {
  uint32_t bits;
  std::memcpy(&bits, &t.scale, 4);
  return {static_cast<uint32_t>(t.type), static_cast<int>(t.init), bits};
}

// A memfd of `opts.pool_bytes` (rounded up to a multiple of page and block size) holding valid
// blocks of t's type: the first rows of t, repeated.
absl::StatusOr<Pool> MakePool(const TensorPlan& t, uint64_t seed, const SyntheticOptions& opts,
                              uint64_t page) {
  const TypeInfo* ti = type_info(t.type);
  const uint64_t unit = std::lcm(page, static_cast<uint64_t>(ti->type_size));
  Pool pool;
  pool.size = RoundUp(std::max<uint64_t>(opts.pool_bytes, 1), unit);
  const uint64_t rb = row_bytes(t.type, t.ne[0]);
  const int64_t rows = std::min<int64_t>(
      t.n_rows(), static_cast<int64_t>(std::max<uint64_t>(1, opts.pool_unique_bytes / rb)));
  std::vector<uint8_t> src(static_cast<size_t>(rows) * rb);
  GenerateRows(t, seed, 0, rows, src.data());

  pool.fd = memfd_create("rigserve-synthetic-pool", MFD_CLOEXEC);
  if (pool.fd < 0) return Errno("memfd_create for a synthetic weight pool");
  if (ftruncate(pool.fd, static_cast<off_t>(pool.size)) != 0) {
    absl::Status s = Errno(absl::StrCat("ftruncate of a ", pool.size, "-byte weight pool"));
    close(pool.fd);
    return s;
  }
  void* p = mmap(nullptr, pool.size, PROT_READ | PROT_WRITE, MAP_SHARED, pool.fd, 0);
  if (p == MAP_FAILED) {
    absl::Status s = Errno(absl::StrCat("mmap of a ", pool.size, "-byte weight pool"));
    close(pool.fd);
    return s;
  }
  uint8_t* dst = static_cast<uint8_t*>(p);
  for (uint64_t off = 0; off < pool.size; off += src.size())
    std::memcpy(dst + off, src.data(), std::min<uint64_t>(src.size(), pool.size - off));
  munmap(p, pool.size);
  return pool;
}

}  // namespace

absl::StatusOr<ModelPlan> PlanFromSyntheticSpec(std::string_view spec) {
  std::string_view preset_name = spec, quant_name = "Q4_K_M";
  if (size_t colon = spec.rfind(':'); colon != std::string_view::npos) {
    preset_name = spec.substr(0, colon);
    quant_name = spec.substr(colon + 1);
  }
  absl::StatusOr<ModelPreset> preset = ResolvePresetName(preset_name);
  if (!preset.ok())
    return absl::Status(preset.status().code(),
                        absl::StrCat("--synthetic ", std::string(spec), ": ", preset.status().message()));
  absl::StatusOr<QuantScheme> quant = ParseQuantScheme(quant_name);
  if (!quant.ok())
    return absl::Status(quant.status().code(),
                        absl::StrCat("--synthetic ", std::string(spec), ": ", quant.status().message()));
  return BuildModelPlan(*preset, *quant);
}

absl::StatusOr<std::unique_ptr<gguf::File>> MakeSyntheticModel(std::string_view spec,
                                                               uint64_t seed) {
  absl::StatusOr<ModelPlan> plan = PlanFromSyntheticSpec(spec);
  if (!plan.ok()) return plan.status();
  return MakeSyntheticModel(*plan, seed, SyntheticOptions{});
}

absl::StatusOr<std::unique_ptr<gguf::File>> MakeSyntheticModel(const ModelPlan& plan,
                                                               uint64_t seed,
                                                               const SyntheticOptions& opts) {
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  constexpr uint64_t kAlign = 32;  // GGUF default alignment (no general.alignment key)

  // Layout: small tensors packed at 32-byte alignment, pool-backed ones on whole pages.
  std::vector<gguf::TensorInfo> infos;
  std::vector<bool> pooled;
  uint64_t off = 0;
  const bool all_exact = plan.data_bytes() <= opts.exact_model_bytes;
  for (const auto& t : plan.tensors) {
    const uint64_t bytes = t.n_bytes();
    const bool big = !all_exact && bytes >= opts.pool_threshold && t.init == WeightInit::kNormal;
    off = RoundUp(off, big ? page : kAlign);
    gguf::TensorInfo info;
    info.name = t.name;
    info.type = t.type;
    info.ne = t.ne;
    info.offset = off;
    info.size = bytes;
    infos.push_back(std::move(info));
    pooled.push_back(big);
    off += bytes;
    if (big) off = RoundUp(off, page);
  }
  const uint64_t data_size = std::max<uint64_t>(off, 1);

  auto storage = std::make_shared<Storage>();
  storage->len = RoundUp(data_size, page);
  void* base = mmap(nullptr, storage->len, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED)
    return Errno(absl::StrCat("reserving ", storage->len, " bytes of address space for --synthetic ",
                              plan.preset.name));
  storage->base = static_cast<uint8_t*>(base);

  std::map<PoolKey, Pool> pools;
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    const TensorPlan& t = plan.tensors[i];
    const gguf::TensorInfo& info = infos[i];
    if (!pooled[i]) {
      GenerateTensor(t, seed, storage->base + info.offset);
      continue;
    }
    auto it = pools.find(KeyOf(t));
    if (it == pools.end()) {
      absl::StatusOr<Pool> pool = MakePool(t, seed, opts, page);
      if (!pool.ok()) return pool.status();
      storage->fds.push_back(pool->fd);
      it = pools.emplace(KeyOf(t), *pool).first;
    }
    const Pool& pool = it->second;
    const uint64_t end = RoundUp(info.offset + info.size, page);
    for (uint64_t pos = info.offset; pos < end; pos += pool.size) {
      const uint64_t len = std::min(pool.size, end - pos);
      void* m = mmap(storage->base + pos, len, PROT_READ, MAP_SHARED | MAP_FIXED, pool.fd, 0);
      if (m == MAP_FAILED)
        return Errno(absl::StrCat("mapping the weight pool over ", t.name, " at data offset ",
                                  pos));
    }
  }
  // Read-only from here on, like a mapped file.
  if (mprotect(storage->base, storage->len, PROT_READ) != 0)
    return Errno("mprotect of the synthetic data section");

  const uint8_t* data = storage->base;
  return gguf::File::FromParts(plan.metadata, std::move(infos), data, data_size,
                               std::shared_ptr<void>(storage, storage.get()));
}

}  // namespace rs
