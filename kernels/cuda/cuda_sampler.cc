#include "kernels/cuda/cuda_sampler.h"

#include <cuda_runtime.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_common.h"

namespace rs::cuda {
namespace sampling {
cudaError_t launch_sample_rows(float* x, int64_t ldx, int64_t V, int n_rows, const RowParams* rows,
                               const PenEntry* pens, const BiasEntry* biases, int32_t* ids,
                               cudaStream_t s);
}  // namespace sampling

namespace {

// Grows b to hold at least `bytes` (doubling), keeping nothing.
absl::Status ensure(DeviceBuffer* b, size_t bytes) {
  if (b->size() >= bytes && b->get()) return absl::OkStatus();
  auto nb = DeviceBuffer::alloc(std::max<size_t>({bytes, 2 * b->size(), 256}));
  if (!nb.ok()) return nb.status();
  *b = std::move(*nb);
  return absl::OkStatus();
}

template <class T>
absl::Status upload(DeviceBuffer* b, const std::vector<T>& v, Stream s) {
  if (auto st = ensure(b, v.size() * sizeof(T)); !st.ok()) return st;
  if (v.empty()) return absl::OkStatus();
  return copy_to_device(b->get(), v.data(), v.size() * sizeof(T), s);
}

}  // namespace

absl::Status DeviceSampler::Reserve(int64_t rows, int64_t entries) {
  if (auto st = ensure(&rows_, rows * sizeof(sampling::RowParams)); !st.ok()) return st;
  if (auto st = ensure(&pens_, entries * sizeof(sampling::PenEntry)); !st.ok()) return st;
  if (auto st = ensure(&biases_, entries * sizeof(sampling::BiasEntry)); !st.ok()) return st;
  return ensure(&ids_, rows * sizeof(int32_t));
}

absl::Status DeviceSampler::Sample(float* d_logits, int64_t ldx, int64_t vocab,
                                   std::span<const SampleRequest> reqs, int32_t* ids,
                                   Stream s) {
  if (reqs.empty()) return absl::OkStatus();
  if (vocab < 1 || ldx < vocab || vocab > INT32_MAX)
    return absl::InvalidArgumentError(
        absl::StrCat("sample: vocab ", vocab, " and row stride ", ldx, " do not fit"));
  sampling::pack_rows(reqs, &packed_);
  if (auto st = upload(&rows_, packed_.rows, s); !st.ok()) return st;
  if (auto st = upload(&pens_, packed_.pens, s); !st.ok()) return st;
  if (auto st = upload(&biases_, packed_.biases, s); !st.ok()) return st;
  if (auto st = ensure(&ids_, reqs.size() * sizeof(int32_t)); !st.ok()) return st;
  const cudaError_t e = sampling::launch_sample_rows(
      d_logits, ldx, vocab, static_cast<int>(reqs.size()), rows_.as<sampling::RowParams>(),
      pens_.as<sampling::PenEntry>(), biases_.as<sampling::BiasEntry>(), ids_.as<int32_t>(),
      detail::as_stream(s));
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return absl::InternalError(detail::cuda_error_text("sample_rows", e));
  }
  detail::profile_mark("sample_rows");
  if (auto st = copy_to_host(ids, ids_.get(), reqs.size() * sizeof(int32_t), s); !st.ok())
    return st;
  return synchronize(s);
}

}  // namespace rs::cuda
